r"""A small CERP training run on synthetic data, launched by
``tests/test_distributed.py`` either as a single process (``python
_dist_worker.py OUT``) or under ``torchrun --nproc_per_node=2``.

It exercises every distributed building block of
:mod:`pyg_cerp.distributed`: the DDP-wrapped loss module, exact sharding of
the global BPR batch, the loss scale for uneven shards, rank 0's pruning
decisions broadcast to every rank, the DDP rebuild at the phase switch,
sharded evaluation, and rank-0-only output.
"""
import argparse
import json
import sys

import torch
from torch_geometric.nn.models import LightGCN

from pyg_cerp.distributed import (LossModule, ShardedBPRSampler,
                                  allreduce_bytes_per_step,
                                  destroy_distributed, init_distributed,
                                  maybe_inject_fault, parameters_in_sync,
                                  scaled_backward, sharded_ranking_metrics,
                                  unwrap)
from pyg_cerp.nn import CompositionalEmbedding
from pyg_cerp.sampling import BPRSampler


def synthetic(num_users: int, num_items: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    # Users prefer items in "their" cluster, so there is something to learn.
    user = torch.randint(num_users, (num_users * 8, ), generator=gen)
    shift = (user * num_items // num_users)
    item = (shift + torch.randint(12, user.shape, generator=gen)) % num_items
    key = torch.unique(user * num_items + item)
    perm = torch.randperm(key.numel(), generator=gen)
    key = key[perm]
    n_test = key.numel() // 5
    test, train = key[:n_test], key[n_test:]
    to_ei = lambda k: torch.stack([k // num_items, k % num_items])  # noqa
    return to_ei(train), to_ei(test)


def loss_fn(model, edge_index, user, pos, neg, num_users, gamma):
    # The whole CERP loss in one forward: BPR over the (user, pos, neg)
    # triples on propagated embeddings, PyG's L2 term on the layer-0
    # embeddings, and gamma times the pruning loss.
    out = model.get_embedding(edge_index)
    neg = neg[:, 0]
    u, p, n = user, pos + num_users, neg + num_users
    pos_rank = (out[u] * out[p]).sum(-1)
    neg_rank = (out[u] * out[n]).sum(-1)
    ids = torch.cat([u, p, n])
    loss = model.recommendation_loss(pos_rank, neg_rank, node_id=ids,
                                     lambda_reg=1e-4)
    return loss + gamma * model.embedding.pruning_loss(ids)


def check_sync(out: str) -> None:
    # Rank 1's pruning scheduler disagrees with rank 0's (another step count,
    # a snapshot rank 0 does not have): sync_scheduler_decisions must load
    # rank 0's state and return rank 0's newly reached targets everywhere.
    from pyg_cerp import distributed
    from pyg_cerp.distributed import scheduler_digest, sync_scheduler_decisions
    from pyg_cerp.train import PruningScheduler
    ctx = init_distributed()
    torch.manual_seed(0)
    emb = CompositionalEmbedding(50, 4, 8, threshold_init=-3.)
    sched = PruningScheduler(emb, [0.9, 0.5], 'meta', 1., 0.5, 1, 1)
    agree = sync_scheduler_decisions(sched, [], ctx)  # all agree: no-op
    if ctx.rank == 1:
        with torch.no_grad():
            emb.threshold_P.fill_(0.)  # prunes a lot: reaches 0.9 (and 0.5)
        sched.step()
    reached = sync_scheduler_decisions(sched, [0.9] if ctx.rank else [],
                                       ctx)
    same = ctx.all_equal(scheduler_digest(sched))
    state = sched.state_dict()
    if ctx.is_main:
        with open(out, 'w') as f:
            json.dump({'agree': agree, 'reached': reached, 'same': same,
                       'num_steps': state['num_steps'],
                       'snapshots': len(state['snapshots']),
                       'syncs': distributed._NUM_SYNCS[0]}, f)
    all_reached = ctx.broadcast_object(reached)  # rank 0's list, checked
    assert all_reached == reached, (all_reached, reached)
    destroy_distributed(ctx)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == '--check-sync':
        return check_sync(sys.argv[2])
    parser = argparse.ArgumentParser()
    parser.add_argument('out')
    parser.add_argument('--epochs', type=int, default=4)
    parser.add_argument('--global-batch', type=int, default=250)
    parser.add_argument('--target', type=float, default=0.8)
    parser.add_argument('--dtype', default='float64',
                        choices=['float32', 'float64'])
    args = parser.parse_args()

    ctx = init_distributed()  # timeout: PYG_CERP_DIST_TIMEOUT
    num_users, num_items, dim, bucket = 60, 90, 16, 13
    train, test = synthetic(num_users, num_items, seed=1)
    n = num_users + num_items
    edge_index = torch.cat([
        torch.stack([train[0], train[1] + num_users]),
        torch.stack([train[1] + num_users, train[0]])
    ], dim=1)

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = LightGCN(n, dim, num_layers=2)
    model.embedding = CompositionalEmbedding(n, dim, bucket,
                                             threshold_init=-3., dtype=dtype)
    model = model.to(dtype)
    emb = model.embedding
    init = emb.initial_state()

    sampler = ShardedBPRSampler.from_context(
        BPRSampler(train, num_users, num_items, num_negatives=1,
                   batch_size=args.global_batch, seed=3), ctx)

    def build(model):
        # CERP: weight decay on the threshold logits raises sigmoid(S).
        thr = [p for n, p in model.named_parameters()
               if 'threshold' in n and p.requires_grad]
        rest = [p for n, p in model.named_parameters()
                if 'threshold' not in n and p.requires_grad]
        groups = [{'params': rest}]
        if thr:
            groups.append({'params': thr, 'lr': 0.2, 'weight_decay': 1.})
        return (ctx.wrap(LossModule(model, loss_fn)),
                torch.optim.Adam(groups, lr=0.05))

    module, opt = build(model)
    gamma, step, snapshot, history = 0.5, 0, None, []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        total = torch.zeros(2, dtype=torch.float64)
        for user, pos, neg in sampler:
            maybe_inject_fault(ctx, step)
            gb = getattr(sampler, 'global_batch_size', None)
            loss = module(edge_index, user, pos, neg, num_users, gamma)
            opt.zero_grad()
            total[0] += float(scaled_backward(loss, user.numel(), ctx, gb))
            total[1] += user.numel()
            opt.step()
            step += 1
        ctx.all_reduce(total)
        # Pruning decisions on rank 0, broadcast to all ranks.
        decision = None
        if ctx.is_main:
            frac = emb.num_nonzero() / emb.num_meta_params
            crossed = snapshot is None and frac <= args.target
            decision = {'gamma': gamma * 0.8, 'crossed': crossed,
                        'masks': emb.masks() if crossed else None}
        decision = ctx.broadcast_object(decision)
        gamma = decision['gamma']
        if epoch == 0:
            comm = allreduce_bytes_per_step(module)
        if decision['crossed']:
            snapshot = decision['masks']
            emb.freeze_masks(snapshot, rewind_to=init)
            module, opt = build(model)  # thresholds frozen: rebuild DDP
        history.append({'epoch': epoch, 'loss': float(total[0] / total[1]),
                        'density': emb.meta_density(),
                        'gamma': gamma, 'retraining': emb.is_retraining})

    model.eval()
    with torch.no_grad():
        out = unwrap(module).get_embedding(edge_index)
    metrics = sharded_ranking_metrics(out[:num_users], out[num_users:],
                                      train, test, ctx, ks=(5, 20))
    in_sync = parameters_in_sync(model, ctx)
    mask_p, mask_q = emb.masks()
    if ctx.is_main:
        result = {
            'world_size': ctx.world_size,
            'metrics': metrics,
            'history': history,
            'retraining': emb.is_retraining,
            'mask_P': mask_p.int().tolist(),
            'mask_Q': mask_q.int().tolist(),
            'P': emb.P.detach().double().tolist(),
            'in_sync': in_sync,
            'comm_prune_phase': comm,
            'comm_final': allreduce_bytes_per_step(module),
        }
        with open(args.out, 'w') as f:
            json.dump(result, f)
    destroy_distributed(ctx)


if __name__ == '__main__':
    sys.exit(main())
