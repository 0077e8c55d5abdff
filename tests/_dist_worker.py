r"""Small distributed checks launched by ``tests/test_distributed.py``, as a
single process (``python _dist_worker.py ...``) or under ``torchrun``:

* ``--propagation OUT``: :class:`~pyg_cerp.distributed.RowPartition`'s
  forward and gradient against the single-process propagation;
* ``--check-sync OUT``: ranks whose pruning schedulers disagree end with
  rank 0's decisions;
* ``OUT`` (default): a float64 CERP loop through the one training stack
  (:meth:`BPRSampler.shard`, :func:`train_step` and :func:`evaluate` with
  :obj:`world`, a partitioned LightGCN), prune then retrain with frozen
  thresholds.
"""
import argparse
import json
import sys

import torch
from torch_geometric.nn.models import LightGCN

from pyg_cerp.distributed import (destroy_distributed, init_distributed,
                                  parameters_in_sync)
from pyg_cerp.nn import (CompositionalEmbedding, symmetric_lightgcn_propagation,
                         use_symmetric_propagation)
from pyg_cerp.sampling import BPRSampler
from pyg_cerp.train import (LightGCNRecommender, PruningScheduler, evaluate,
                            make_optimizer, train_step)
from pyg_cerp.utils import lightgcn_adjacency


def synthetic(num_users: int, num_items: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    # Users prefer items in "their" cluster, so there is something to learn.
    user = torch.randint(num_users, (num_users * 8, ), generator=gen)
    shift = (user * num_items // num_users)
    item = (shift + torch.randint(12, user.shape, generator=gen)) % num_items
    key = torch.unique(user * num_items + item)
    key = key[torch.randperm(key.numel(), generator=gen)]
    n_test = key.numel() // 5
    to_ei = lambda k: torch.stack([k // num_items, k % num_items])  # noqa
    return to_ei(key[n_test:]), to_ei(key[:n_test])


def write(ctx, out: str, result: dict) -> None:
    if ctx.is_main:
        with open(out, 'w') as f:
            json.dump(result, f)


def check_propagation(out: str) -> None:
    # Every rank weights the output with its own G_r; the gradient of the
    # summed loss, all-reduced over ranks, must be the single-process one.
    ctx = init_distributed()
    num_users, num_items = 37, 52  # N = 89: uneven row blocks
    train, _ = synthetic(num_users, num_items, seed=2)
    adj = lightgcn_adjacency(train, num_users, num_items).double()
    n = num_users + num_items
    alpha = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    x = torch.randn(n, 8, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    weights = [torch.randn(n, 8, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(1 + r))
               for r in range(ctx.world_size)]
    ref_x = x.clone().requires_grad_()
    ref = symmetric_lightgcn_propagation(adj, ref_x, alpha)
    sum((ref * g).sum() for g in weights).backward()

    from pyg_cerp.distributed import RowPartition
    part = RowPartition(adj, ctx)
    x = x.requires_grad_()
    start = ctx.bytes_exchanged
    got = part(x, alpha)
    (got * weights[ctx.rank]).sum().backward()
    grad = ctx.all_reduce(x.grad.clone())
    write(ctx, out, dict(
        world_size=ctx.world_size,
        forward=float((got - ref).detach().abs().max()),
        grad=float((grad - ref_x.grad).abs().max()),
        grad_scale=float(ref_x.grad.abs().max()),
        local_grad_rows=int((x.grad.abs().sum(1) > 0).sum()), num_nodes=n,
        block=part.block, bounds=part.bounds, start=part.start, end=part.end,
        row_nnz=(adj.to_sparse_csr().crow_indices().diff()).tolist(),
        bytes=ctx.bytes_exchanged - start))
    destroy_distributed(ctx)


def check_sync(out: str) -> None:
    # Rank 1's pruning scheduler disagrees with rank 0's (another step count,
    # a snapshot rank 0 does not have): sync_scheduler_decisions must load
    # rank 0's state and return rank 0's newly reached targets everywhere.
    from pyg_cerp import distributed
    from pyg_cerp.distributed import scheduler_digest, sync_scheduler_decisions
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
    write(ctx, out, {'agree': agree, 'reached': reached, 'same': same,
                     'num_steps': state['num_steps'],
                     'snapshots': len(state['snapshots']),
                     'syncs': distributed._NUM_SYNCS[0]})
    all_reached = ctx.broadcast_object(reached)  # rank 0's list, checked
    assert all_reached == reached, (all_reached, reached)
    destroy_distributed(ctx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('out', help='Where rank 0 writes its JSON result')
    parser.add_argument('--propagation', action='store_true',
                        help='Check the partitioned propagation only')
    parser.add_argument('--check-sync', action='store_true',
                        help='Check the scheduler synchronisation only')
    parser.add_argument('--epochs', type=int, default=4)
    parser.add_argument('--global-batch', type=int, default=250)
    parser.add_argument('--target', type=float, default=0.8)
    args = parser.parse_args()
    if args.propagation:
        return check_propagation(args.out)
    if args.check_sync:
        return check_sync(args.out)

    ctx = init_distributed()  # timeout: PYG_CERP_DIST_TIMEOUT
    num_users, num_items, dim, bucket = 60, 90, 16, 13
    train, test = synthetic(num_users, num_items, seed=1)
    n = num_users + num_items
    adj = lightgcn_adjacency(train, num_users, num_items).double()
    torch.manual_seed(0)
    model = use_symmetric_propagation(LightGCN(n, dim, 2, normalize=False))
    model.embedding = CompositionalEmbedding(n, dim, bucket,
                                             threshold_init=-3.,
                                             dtype=torch.float64)
    model = model.double()
    rec = LightGCNRecommender(model, adj, num_users, num_items).partition(ctx)
    emb = rec.embedding
    init = emb.initial_state()
    sampler = BPRSampler(train, num_users, num_items, num_negatives=2,
                         batch_size=args.global_batch, seed=3)
    if ctx.is_distributed:
        sampler = sampler.shard(ctx.rank, ctx.world_size)
    opt = make_optimizer(rec, lr=0.05, threshold_lr=0.2,
                         threshold_weight_decay=1.)
    sched = PruningScheduler(emb, [args.target], 'meta', 0.5, 0.8, 1, 1)
    history, comm = [], {}
    sched.on_train_start()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        total = torch.zeros(2, dtype=torch.float64)
        for batch in sampler:
            start = ctx.bytes_exchanged
            out = train_step(rec, opt, batch, None if emb.is_retraining
                             else sched, 100., l2_reg=1e-4, world=ctx)
            comm.setdefault(emb.is_retraining, ctx.bytes_exchanged - start)
            total += torch.tensor([float(out['loss']), 1.],
                                  dtype=torch.float64)
        ctx.all_reduce(total[:1])
        if not emb.is_retraining:
            sched.on_epoch_end()
        snapshot = sched.snapshots.get(args.target)
        if snapshot is not None and not emb.is_retraining:
            emb.freeze_masks(snapshot.masks, rewind_to=init)
            opt = make_optimizer(rec, lr=0.05)  # thresholds frozen
        history.append({'epoch': epoch, 'loss': float(total[0] / total[1]),
                        'density': emb.meta_density(), 'gamma': sched.gamma,
                        'retraining': emb.is_retraining})
    metrics = evaluate(rec, train, test, (5, 20), world=ctx)
    in_sync = parameters_in_sync(rec, ctx)
    mask_p, mask_q = emb.masks()
    write(ctx, args.out, {
        'world_size': ctx.world_size, 'metrics': metrics,
        'history': history, 'retraining': emb.is_retraining,
        'mask_P': mask_p.int().tolist(), 'mask_Q': mask_q.int().tolist(),
        'P': emb.P.detach().tolist(), 'in_sync': in_sync,
        'num_params': {str(k): v for k, v in (
            (False, 4 * bucket * dim), (True, 2 * bucket * dim))},
        'bytes_per_step': {str(k): v for k, v in comm.items()},
        'num_nodes': n, 'dim': dim, 'num_layers': 2,
        'block': rec.row_partition.block if rec.row_partition else n})
    destroy_distributed(ctx)


if __name__ == '__main__':
    sys.exit(main())
