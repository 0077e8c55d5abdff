r"""Scaling of CERP + LightGCN training over W processes on Gowalla: the
per-process time of the row-partitioned propagation (forward + backward),
the bytes each rank exchanges per training step, and the time of a whole
step, through the one training stack (:func:`pyg_cerp.train.train_step` with
:obj:`world`, :meth:`LightGCNRecommender.partition`,
:meth:`BPRSampler.shard`).

For ``--steps`` rounds after ``--warmup`` untimed ones, between barriers:

* propagation: :math:`\sum_l \alpha_l \mathbf{\hat{A}}^l \mathbf{X}` for
  the composed embeddings :math:`\mathbf{X}` and its backward pass for a
  fixed random output gradient (:class:`~pyg_cerp.distributed.RowPartition`
  on :math:`W > 1` ranks,
  :func:`~pyg_cerp.nn.symmetric_lightgcn_propagation` on one), *i.e.* the
  sparse products and the layer exchanges: wall seconds without the time spent in the
  collectives (:attr:`DistContext.exchange_seconds`, reported apart: on one
  machine it measures loopback gloo on shared cores, not a network), total
  wall and CPU seconds; the slowest rank per round;
* product: one sparse product of this rank's rows of
  :math:`\mathbf{\hat{A}}` (all of them on one process) with the
  :math:`N \times d` layer, as the propagation runs it (:obj:`torch.addmm`
  on the int32 CSR block), all ranks at once; the slowest rank per round;
* step: one pruning-phase :func:`~pyg_cerp.train.train_step` (BPR + L2 +
  regulariser, gradient all-reduce, Adam, scheduler), with the bytes it
  exchanged (:attr:`DistContext.bytes_exchanged`, ring-algorithm volume per
  rank).

Examples (from the repository root)::

    python benchmarks/distributed_scaling.py --root DATA
    torchrun --nproc_per_node=2 benchmarks/distributed_scaling.py --root DATA

Each run appends one JSON line to ``--out`` (rank 0 only), with the medians,
every round, the command line and the git commit.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch_geometric.nn.models import LightGCN

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyg_cerp.distributed import (destroy_distributed,  # noqa: E402
                                  init_distributed)
from pyg_cerp.nn import (CompositionalEmbedding,  # noqa: E402
                         symmetric_lightgcn_propagation,
                         use_symmetric_propagation)
from pyg_cerp.nn.propagation import _kernel_matrix  # noqa: E402
from pyg_cerp.sampling import BPRSampler  # noqa: E402
from pyg_cerp.train import (CERPConfig, LightGCNRecommender,  # noqa: E402
                            PruningScheduler, load_interactions,
                            make_optimizer, train_step)
from pyg_cerp.utils import lightgcn_adjacency  # noqa: E402


def _commit() -> str:
    if os.environ.get('PYG_CERP_COMMIT'):  # A copy without git history.
        return os.environ['PYG_CERP_COMMIT']
    try:
        return subprocess.run(['git', 'rev-parse', 'HEAD'], text=True,
                              capture_output=True, check=True,
                              cwd=os.path.dirname(__file__)).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def _timed(world, fn) -> list:
    # Wall seconds without the collectives, in the collectives, and CPU
    # seconds of fn() between barriers, the slowest rank's.
    world.barrier()
    t, c, e = (time.perf_counter(), time.process_time(),
               world.exchange_seconds)
    fn()
    wall, e = time.perf_counter() - t, world.exchange_seconds - e
    out = torch.tensor([wall - e, e, time.process_time() - c],
                       dtype=torch.float64)
    world.barrier()
    return world.all_reduce(out, 'max').tolist()


def main() -> None:
    d = CERPConfig()
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--root', default=os.environ.get('PYG_CERP_DATA'),
                        help='Folder holding gowalla/raw/ (default: '
                        '$PYG_CERP_DATA)')
    parser.add_argument('--dataset', default='gowalla',
                        help='Data set folder under --root (default: '
                        'gowalla)')
    batch = d.prune_schedule()[0]
    parser.add_argument('--batch-size', type=int, default=batch,
                        help=f'Global batch (default: {batch}, phase 1)')
    parser.add_argument('--dim', type=int, default=d.dim,
                        help=f'Embedding size (default: {d.dim})')
    parser.add_argument('--bucket-size', type=int, default=d.bucket_size,
                        help=f'Meta-table rows (default: {d.bucket_size})')
    parser.add_argument('--num-layers', type=int, default=3,
                        help='LightGCN layers (default: 3)')
    parser.add_argument('--num-negatives', type=int, default=d.num_negatives,
                        help=f'Negatives per positive (default: '
                        f'{d.num_negatives})')
    parser.add_argument('--steps', type=int, default=8,
                        help='Timed rounds (default: 8)')
    parser.add_argument('--warmup', type=int, default=2,
                        help='Untimed rounds first (default: 2)')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads per process (default: 1)')
    parser.add_argument('--out', default='benchmarks/results/'
                        'distributed_scaling.jsonl',
                        help='JSON-lines file to append to')
    args = parser.parse_args()
    if args.root is None:
        parser.error('pass --root or set PYG_CERP_DATA')
    torch.set_num_threads(args.threads)
    world = init_distributed(backend='gloo')  # A CPU benchmark.
    data = load_interactions(os.path.join(args.root, args.dataset))
    n = data.num_users + data.num_items
    adj = lightgcn_adjacency(data.train, data.num_users, data.num_items)

    torch.manual_seed(0)
    model = use_symmetric_propagation(
        LightGCN(n, args.dim, args.num_layers, normalize=False))
    model.embedding = CompositionalEmbedding(
        n, args.dim, args.bucket_size, threshold_init=d.threshold_init,
        check_index=False)
    model.reset_parameters()
    rec = LightGCNRecommender(model, adj, data.num_users,
                              data.num_items).partition(world)
    der = d.derived(n, data.train.size(1))
    optimizer = make_optimizer(rec, lr=d.prune_schedule()[1],
                               weight_decay=der['weight_decay'],
                               threshold_lr=der['threshold_lr'],
                               threshold_weight_decay=der[
                                   'threshold_weight_decay'])
    scheduler = PruningScheduler(rec.embedding, [1e-9], 'full', d.gamma_init,
                                 d.gamma_decay, d.gamma_decay_every, 1,
                                 threshold_drive=d.threshold_drive)
    sampler = BPRSampler(data.train, data.num_users, data.num_items,
                         num_negatives=args.num_negatives,
                         batch_size=args.batch_size, seed=0)
    if world.is_distributed:
        sampler = sampler.shard(world.rank, world.world_size)
    batches = iter(sampler)
    weight = torch.randn(n, args.dim,
                         generator=torch.Generator().manual_seed(1))
    x = rec.embedding.weight.detach().requires_grad_()
    alpha = rec.model.alpha
    propagation = rec.row_partition or (
        lambda x, alpha: symmetric_lightgcn_propagation(adj, x, alpha))

    def propagate() -> None:
        x.grad = None
        propagation(x, alpha).backward(weight)

    rows = (rec.row_partition.adj_rows if rec.row_partition is not None
            else _kernel_matrix(adj.to_sparse_csr()))
    first = rec.row_partition.start if rec.row_partition is not None else 0
    x0 = x.detach()
    x_local = x0[first:first + rows.size(0)]

    def product() -> None:
        torch.addmm(x_local, rows, x0, beta=0.5)

    prop, prop_exchange, prop_cpu, steps, step_bytes = [], [], [], [], []
    products = []
    for i in range(args.warmup + args.steps):
        p = _timed(world, propagate)
        q = _timed(world, product)
        batch = next(batches)
        start = world.bytes_exchanged
        s = _timed(world, lambda: train_step(
            rec, optimizer, batch, scheduler, d.clip_grad_norm,
            l2_reg=d.l2_reg, world=world))
        if i >= args.warmup:
            prop.append(p[0])
            prop_exchange.append(p[1])
            prop_cpu.append(p[2])
            products.append(q[0])
            steps.append(s[0] + s[1])
            step_bytes.append(world.bytes_exchanged - start)
    result = dict(
        backbone='lightgcn', world_size=world.world_size,
        propagation_seconds_per_process=statistics.median(prop),
        propagation_exchange_seconds=statistics.median(prop_exchange),
        propagation_cpu_seconds_per_process=statistics.median(prop_cpu),
        product_seconds_per_process=statistics.median(products),
        bytes_exchanged_per_step=statistics.median(step_bytes),
        step_seconds=statistics.median(steps),
        propagation_rounds=prop, propagation_exchange_rounds=prop_exchange,
        step_rounds=steps, threads=args.threads,
        batch_size=args.batch_size, num_layers=args.num_layers,
        num_nodes=n, nnz=int(adj._nnz()), dim=args.dim,
        bucket_size=args.bucket_size,
        rows_per_process=(rec.row_partition.end - rec.row_partition.start
                          if rec.row_partition is not None else n),
        row_bounds=(rec.row_partition.bounds
                    if rec.row_partition is not None else [0, n]),
        command=' '.join(([f'torchrun --nproc_per_node={world.world_size}']
                          if world.is_distributed else ['python']) +
                         sys.argv),
        commit=_commit(), load_average=os.getloadavg()[0],
        time=time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()))
    if world.is_main:
        print(json.dumps(result))
        os.makedirs(os.path.dirname(os.path.abspath(args.out)),
                    exist_ok=True)
        with open(args.out, 'a') as f:
            f.write(json.dumps(result) + '\n')
    destroy_distributed(world)


if __name__ == '__main__':
    main()
