r"""CERP in an NCF-style MLP scorer, written as your own training loop.

Dataset class -> BPR sampler -> MLPScorer over a CompositionalEmbedding ->
BPR + gamma_t * pruning_loss, with the PruningScheduler's hook after each
step -> per memory target, retraining with the snapshot masks frozen and
the values rewound -> export of the non-zeros, served by the same scorer.

    python examples/mlp_cerp.py --root ../shared/data
    python examples/mlp_cerp.py --dataset path/to/folder --subset 500 800

The full resumable pipeline: `python -m pyg_cerp.train --backbone mlp`.
"""
import argparse
import os
import os.path as osp

import torch
import torch.nn.functional as F

from pyg_cerp import (BPRSampler, CompactEmbedding, CompositionalEmbedding,
                      Gowalla, LightGCNDataset, MLPScorer, PruningScheduler)
from pyg_cerp.datasets import EDGE_TYPE
from pyg_cerp.metrics import ranking_metrics_from_scores

parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 allow_abbrev=False)
parser.add_argument('--root', default=os.environ.get('PYG_CERP_DATA'),
                    help='The folder of gowalla/raw/ (default: '
                    '$PYG_CERP_DATA)')
parser.add_argument('--dataset', default='gowalla',
                    help="'gowalla' or a LightGCN-format folder (raw/)")
parser.add_argument('--subset', type=int, nargs=2, metavar=('USERS', 'ITEMS'),
                    help='Only the first USERS users and ITEMS items')
parser.add_argument('--hidden', type=int, nargs='+', default=[64])
parser.add_argument('--targets', type=float, nargs='+', default=[0.1, 0.05],
                    help='Memory targets (fractions of the full table)')
for name, default in [('dim', 64), ('bucket-size', 5000), ('epochs', 5),
                      ('prune-epochs', 6), ('batch-size', 4096),
                      ('eval-users', 1000)]:  # Evaluates the first users.
    parser.add_argument(f'--{name}', type=int, default=default)
parser.add_argument('--lr', type=float, default=1e-3)
parser.add_argument('--gamma', type=float, default=1e-3,
                    help='The initial weight of the pruning loss')
parser.add_argument('--export', default='results/mlp_cerp-export')


def main(argv=None):
    args = parser.parse_args(argv)

    if args.dataset == 'gowalla':  # Checksum-verified, downloaded if missing.
        dataset = Gowalla(osp.join(args.root, 'gowalla'))
    else:
        folder = osp.abspath(args.dataset)
        dataset = LightGCNDataset(osp.dirname(folder), osp.basename(folder))
    store = dataset[0][EDGE_TYPE]  # Training and test (user, item) pairs.
    num_users, num_items = dataset.num_users, dataset.num_items
    train_index, test_index = store.edge_index, store.edge_label_index
    if args.subset is not None:
        num_users = min(num_users, args.subset[0])
        num_items = min(num_items, args.subset[1])
        keep = [(ei[0] < num_users) & (ei[1] < num_items)
                for ei in (train_index, test_index)]
        train_index, test_index = train_index[:, keep[0]], \
            test_index[:, keep[1]]
    sampler = BPRSampler(train_index, num_users, num_items, num_negatives=1,
                         batch_size=args.batch_size, seed=0)

    torch.manual_seed(0)
    embedding = CompositionalEmbedding(num_users + num_items, args.dim,
                                       args.bucket_size)
    scorer = MLPScorer(num_users, num_items, embedding,
                       hidden_channels=args.hidden)
    scheduler = PruningScheduler(embedding, args.targets,
                                 gamma_init=args.gamma, prune_start=1,
                                 onset_quantile=0.02,
                                 pace_epochs=max(1, args.prune_epochs - 2))

    def train_epoch(optimizer, prune=False):
        scorer.train()
        for users, pos, neg in sampler:
            neg = neg.view(-1)
            loss = F.softplus(scorer(users, neg) - scorer(users, pos)).mean()
            if prune:  # gamma_t * the complementary pruning regularizer.
                ids = torch.cat([users, pos + num_users, neg + num_users])
                loss = loss + scheduler.gamma * embedding.pruning_loss(ids)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if prune:
                scheduler.step()  # Density check, snapshot at each target.
        return loss.item()

    @torch.no_grad()
    def test():  # Full ranking of every item, training items excluded.
        scorer.eval()
        users = torch.arange(min(num_users, args.eval_users))
        return ranking_metrics_from_scores(
            scorer.score_all, num_users, num_items, train_index, test_index,
            ks=[20], user_ids=users)

    initial_mlp = {k: v.clone() for k, v in scorer.mlp.state_dict().items()}
    optimizer = torch.optim.Adam(scorer.parameters(), lr=args.lr)
    scheduler.on_train_start()  # Captures the embedding to rewind to.
    for epoch in range(args.prune_epochs):
        loss = train_epoch(optimizer, prune=True)
        scheduler.on_epoch_end()  # Gamma decay.
        print(f'Prune epoch {epoch + 1}: loss {loss:.4f}, '
              f'{embedding.full_table_fraction():.2%} of the full table')
        if scheduler.done:
            break
    scheduler.check_complete()  # Warns about a target not reached.

    os.makedirs(args.export, exist_ok=True)
    for target, snapshot in sorted(scheduler.snapshots.items(),
                                   reverse=True):
        # Phase 2: masks frozen, embedding and MLP rewound (lottery ticket).
        embedding.freeze_masks(snapshot.masks,
                               rewind_to=scheduler.initial_weights)
        scorer.mlp.load_state_dict(initial_mlp)
        optimizer = torch.optim.Adam(scorer.parameters(), lr=args.lr)
        for epoch in range(args.epochs):
            loss = train_epoch(optimizer)
        metrics = test()
        print(f'Retrain@{target:g}: loss {loss:.4f}, '
              f'{embedding.full_table_fraction():.2%} of the full table, '
              f'recall@20 {metrics["recall@20"]:.4f}, '
              f'ndcg@20 {metrics["ndcg@20"]:.4f}')
        path = osp.join(args.export, f'cerp-{target:g}.pt')
        embedding.to_compact().save(path)  # Only the non-zeros.

    # Serving: the same scorer with the exported embedding plugged in.
    scorer.embedding = CompactEmbedding.load(path)
    served = test()
    print(f'Served {path}: ndcg@20 {served["ndcg@20"]:.4f}')
    scorer.embedding = embedding
    return dict(model=scorer, scheduler=scheduler, metrics=metrics,
                served=served)


if __name__ == '__main__':
    main()
