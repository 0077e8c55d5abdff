r"""CERP in PyG's LightGCN, written as your own training loop: dataset class
-> BPR sampler -> LightGCN with a CompositionalEmbedding -> BPR + gamma_t *
pruning_loss (the PruningScheduler hook sets gamma_t and snapshots the masks
at each memory target) -> retraining with frozen masks, rewound -> export.

    python examples/lightgcn_cerp.py --root ../shared/data
    python examples/lightgcn_cerp.py --dataset path/to/folder --subset 500 800

The full, resumable pipeline is `python -m pyg_cerp.train --help`.
"""
import argparse
import os
import os.path as osp

import torch
from torch_geometric.nn.models import LightGCN

from pyg_cerp import (BPRSampler, CompactEmbedding, CompositionalEmbedding,
                      Gowalla, LightGCNDataset, PruningScheduler,
                      use_symmetric_propagation)
from pyg_cerp.datasets import EDGE_TYPE
from pyg_cerp.metrics import ranking_metrics
from pyg_cerp.utils import lightgcn_adjacency

parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 allow_abbrev=False)
parser.add_argument('--root', default=os.environ.get('PYG_CERP_DATA'),
                    help='Folder holding gowalla/raw/')
parser.add_argument('--dataset', default='gowalla',
                    help="'gowalla' or a folder holding raw/{train,test}.txt")
parser.add_argument('--subset', type=int, nargs=2, metavar=('USERS', 'ITEMS'),
                    help='Keep the first USERS users and ITEMS items')
for name, default in [('dim', 64), ('bucket-size', 5000), ('num-layers', 3),
                      ('prune-epochs', 6), ('batch-size', 8192)]:
    parser.add_argument(f'--{name}', type=int, default=default)
parser.add_argument('--targets', type=float, nargs='+',
                    default=[0.1, 0.05, 0.01], help='Fractions of Nd')
parser.add_argument('--epochs', type=int, default=20,
                    help='Retraining epochs per target')
parser.add_argument('--lr', type=float, default=5e-3)
parser.add_argument('--gamma', type=float, default=1e-3,
                    help='Initial weight of the pruning loss')
parser.add_argument('--export', default='results/lightgcn_cerp-export')


def main(argv=None):
    args = parser.parse_args(argv)

    if args.dataset == 'gowalla':  # Checksum-verified, downloaded if missing.
        dataset = Gowalla(osp.join(args.root, 'gowalla'))
    else:
        path = osp.abspath(args.dataset)
        dataset = LightGCNDataset(osp.dirname(path), osp.basename(path))
    data = dataset[0]  # HeteroData: train edge_index, test edge_label_index
    num_users, num_items = dataset.num_users, dataset.num_items
    if args.subset:
        num_users, num_items = (min(num_users, args.subset[0]),
                                min(num_items, args.subset[1]))
    train_index, test_index = (  # Local (user, item) ids; a slice if asked.
        ei[:, (ei[0] < num_users) & (ei[1] < num_items)] for ei in
        (data[EDGE_TYPE].edge_index, data[EDGE_TYPE].edge_label_index))
    num_nodes = num_users + num_items
    adj = lightgcn_adjacency(train_index, num_users, num_items)  # normalized
    sampler = BPRSampler(train_index, num_users, num_items,
                         batch_size=args.batch_size)  # 1 negative per pair

    torch.manual_seed(0)
    model = LightGCN(num_nodes, args.dim, args.num_layers, normalize=False)
    use_symmetric_propagation(model)  # Fused propagation, same outputs.
    model.embedding = CompositionalEmbedding(num_nodes, args.dim,
                                             args.bucket_size)
    model.reset_parameters()
    # Phase 1 prunes from epoch 1 on, to the smallest target along a plan.
    scheduler = PruningScheduler(model.embedding, args.targets,
                                 gamma_init=args.gamma, prune_start=1,
                                 onset_quantile=0.02,
                                 pace_epochs=max(1, args.prune_epochs - 2))

    def train(optimizer, scheduler=None):
        for users, pos, neg in sampler:
            pos, neg = pos + num_users, neg.view(-1) + num_users
            edge_label_index = torch.stack([torch.cat([users, users]),
                                            torch.cat([pos, neg])])
            pos_rank, neg_rank = model(adj, edge_label_index).chunk(2)
            nodes = edge_label_index.view(-1)
            loss = model.recommendation_loss(pos_rank, neg_rank, node_id=nodes)
            if scheduler is not None:  # Complementary pruning regularizer.
                loss = loss + scheduler.gamma * \
                    model.embedding.pruning_loss(nodes)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()  # Density check, snapshot at each target.
        return loss.item()

    @torch.no_grad()
    def test():  # Full ranking, training items excluded.
        emb = model.get_embedding(adj)
        return ranking_metrics(emb[:num_users], emb[num_users:], train_index,
                               test_index, ks=[20])

    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler.on_train_start()  # Captures the weights to rewind to.
    for epoch in range(args.prune_epochs):
        loss = train(optimizer, scheduler)
        scheduler.on_epoch_end()  # Gamma decay.
        print(f'Prune epoch {epoch + 1}: loss {loss:.4f}, '
              f'{model.embedding.full_table_fraction():.2%} of the full table')
        if scheduler.done:
            break
    scheduler.check_complete()  # Warns about a target not reached.

    os.makedirs(args.export, exist_ok=True)
    for target in sorted(scheduler.snapshots, reverse=True):
        # Phase 2: freeze the target's masks, rewind (lottery ticket).
        model.embedding.freeze_masks(scheduler.snapshots[target].masks,
                                     rewind_to=scheduler.initial_weights)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        for epoch in range(args.epochs):
            train(optimizer)
        metrics = test()
        frac = model.embedding.full_table_fraction()
        print(f'Retrain@{target:g}: {frac:.2%} of the full table, recall@20 '
              f'{metrics["recall@20"]:.4f}, ndcg@20 {metrics["ndcg@20"]:.4f}')
        path = osp.join(args.export, f'cerp-{target:g}.pt')
        model.embedding.to_compact().save(path)  # Only the non-zeros.

    cerp, model.embedding = model.embedding, CompactEmbedding.load(path)
    served = test()  # Served by the unmodified LightGCN.
    top = model.recommend(adj, src_index=torch.arange(3),
                          dst_index=torch.arange(num_users, num_nodes), k=5)
    print(f'Served {path}: ndcg@20 {served["ndcg@20"]:.4f}; top-5 items of '
          f'users 0-2: {(top - num_users).tolist()}')
    model.embedding = cerp
    return dict(model=model, scheduler=scheduler, metrics=metrics,
                served=served)


if __name__ == '__main__':
    main()
