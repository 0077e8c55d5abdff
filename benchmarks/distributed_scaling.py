r"""Data-parallel scaling of CERP + LightGCN training on Gowalla: time per
training step (and the implied epoch time), time of the full-ranking
evaluation, and the bytes DDP all-reduces per step.

It runs the same code path as ``examples/lightgcn_cerp.py`` under torchrun
(:class:`pyg_cerp.distributed.DDPTrainStep` over
:class:`pyg_cerp.train.LightGCNRecommender`, a
:class:`~pyg_cerp.distributed.ShardedBPRSampler` over the single-process
:class:`~pyg_cerp.sampling.BPRSampler`, and
:func:`~pyg_cerp.distributed.sharded_evaluate`), for ``--steps`` steps of the
pruning phase (CERP regulariser on) after ``--warmup`` untimed ones. The
epoch time is the median step time times the number of steps per epoch
(sampling included: each rank draws the whole epoch once, timed separately).
It also reports the CPU seconds per step of the busiest rank, which, unlike
the wall time, does not depend on other load on the machine.

Examples (from the repository root)::

    # 1 process, 1 and 2 threads
    python benchmarks/distributed_scaling.py --root DATA --threads 1
    python benchmarks/distributed_scaling.py --root DATA --threads 2
    # 2 processes with 1 thread each (add --backbone mlp for the MLP scorer)
    torchrun --nproc_per_node=2 benchmarks/distributed_scaling.py \
        --root DATA --threads 1

Each run appends one JSON line to ``--out`` (rank 0 only).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch_geometric.nn.models import LightGCN

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyg_cerp.distributed import (DDPTrainStep,  # noqa: E402
                                  ShardedBPRSampler, allreduce_bytes_per_step,
                                  destroy_distributed, init_distributed,
                                  sharded_evaluate)
from pyg_cerp.nn import CompositionalEmbedding, MLPScorer  # noqa: E402
from pyg_cerp.sampling import BPRSampler  # noqa: E402
from pyg_cerp.train import (CERPConfig, LightGCNRecommender,  # noqa: E402
                            MLPRecommender, PruningScheduler,
                            load_interactions, make_optimizer)
from pyg_cerp.nn import use_symmetric_propagation  # noqa: E402
from pyg_cerp.utils import lightgcn_adjacency  # noqa: E402


def main() -> None:
    d = CERPConfig()
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--root', default=os.environ.get('PYG_CERP_DATA'),
                        help='Folder holding gowalla/raw/ (default: '
                        '$PYG_CERP_DATA)')
    parser.add_argument('--dataset', default='gowalla')
    parser.add_argument('--batch-size', type=int, default=d.batch_size,
                        help=f'Global batch (default: {d.batch_size})')
    parser.add_argument('--dim', type=int, default=d.dim)
    parser.add_argument('--bucket-size', type=int, default=d.bucket_size)
    parser.add_argument('--num-layers', type=int, default=3)
    parser.add_argument('--backbone', choices=['lightgcn', 'mlp'],
                        default='lightgcn',
                        help="'lightgcn' (full-graph propagation every step) "
                        "or 'mlp' (MLPScorer, no propagation)")
    parser.add_argument('--num-negatives', type=int, default=d.num_negatives)
    parser.add_argument('--steps', type=int, default=8,
                        help='Timed steps (default: 8)')
    parser.add_argument('--warmup', type=int, default=2,
                        help='Untimed steps first (default: 2)')
    parser.add_argument('--no-eval', action='store_true',
                        help='Skip timing the full-ranking evaluation (always '
                        'skipped for the MLP: scoring every user-item pair '
                        'of Gowalla through the MLP takes hours on a CPU)')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads per process (default: 1)')
    parser.add_argument('--out', default='benchmarks/results/'
                        'distributed_scaling.jsonl')
    args = parser.parse_args()
    if args.root is None:
        parser.error('pass --root or set PYG_CERP_DATA')
    torch.set_num_threads(args.threads)
    world = init_distributed()

    if not world.is_main:
        world.barrier()
    data = load_interactions(os.path.join(args.root, args.dataset))
    if world.is_main:
        world.barrier()
    n = data.num_users + data.num_items
    adj = lightgcn_adjacency(data.train, data.num_users, data.num_items)

    torch.manual_seed(0)
    emb = CompositionalEmbedding(n, args.dim, args.bucket_size,
                                 threshold_init=d.threshold_init,
                                 check_index=False)
    if args.backbone == 'lightgcn':
        model = LightGCN(n, args.dim, args.num_layers, normalize=False)
        use_symmetric_propagation(model)
        model.embedding = emb
        model.reset_parameters()
        rec = LightGCNRecommender(model, adj, data.num_users, data.num_items)
    else:
        rec = MLPRecommender(MLPScorer(data.num_users, data.num_items, emb))
    optimizer = make_optimizer(rec, lr=d.lr, weight_decay=d.weight_decay,
                               threshold_lr=d.threshold_lr,
                               threshold_weight_decay=d.threshold_weight_decay)
    scheduler = PruningScheduler(rec.embedding, [1e-9], 'full', d.gamma_init,
                                 d.gamma_decay, d.gamma_decay_every, 10**9)
    base = BPRSampler(data.train, data.num_users, data.num_items,
                      num_negatives=args.num_negatives,
                      batch_size=args.batch_size, seed=0,
                      reject_positives=False)
    sampler = ShardedBPRSampler.from_context(base, world)
    step = DDPTrainStep(rec, world)

    t = time.perf_counter()
    batches = iter(sampler)
    first = next(batches)  # draws the whole epoch
    sample_time = time.perf_counter() - t

    times, cpu_times = [], []
    batch = first
    for i in range(args.warmup + args.steps):
        world.barrier()
        t, c = time.perf_counter(), time.process_time()
        step(rec, optimizer, batch, scheduler, d.clip_grad_norm)
        c = time.process_time() - c
        world.barrier()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
            cpu_times.append(c)
        batch = next(batches)
    # CPU seconds of one step on each rank (robust to other load on the
    # machine, unlike the wall time): max over ranks.
    cpu = torch.tensor([statistics.median(cpu_times)], dtype=torch.float64)
    world.all_reduce(cpu, 'max')
    comm = allreduce_bytes_per_step(step.module)

    # The part of a LightGCN step that data parallelism does not split: the
    # full-graph propagation (forward + backward), replicated on every rank.
    prop_cpu = None
    if args.backbone == 'lightgcn':
        samples = []
        for i in range(args.warmup + args.steps):
            c = time.process_time()
            rec.propagate().sum().backward()
            if i >= args.warmup:
                samples.append(time.process_time() - c)
        rec.zero_grad(set_to_none=True)
        prop_cpu = statistics.median(samples)

    eval_time = None
    if not args.no_eval and args.backbone == 'lightgcn':
        world.barrier()
        t = time.perf_counter()
        metrics = sharded_evaluate(rec, data.train, data.test, (20, ), world)
        eval_time = time.perf_counter() - t
    step_time = statistics.median(times)
    result = dict(
        backbone=args.backbone, world_size=world.world_size,
        threads=args.threads,
        batch_size=args.batch_size, steps_per_epoch=len(sampler),
        step_time_median=step_time, step_times=times,
        step_cpu_median_max_rank=float(cpu),
        propagation_cpu_median=prop_cpu,
        epoch_time_est=step_time * len(sampler) + sample_time,
        sample_time=sample_time, eval_time=eval_time,
        allreduce_bytes_per_step=comm,
        num_nodes=n, num_edges=int(data.train.size(1)),
        dim=args.dim, bucket_size=args.bucket_size,
        time=time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()))
    if world.is_main:
        print(json.dumps(result))
        if eval_time is not None:
            print(f"recall@20 {metrics['recall@20']:.5f} (untrained model)")
        os.makedirs(os.path.dirname(os.path.abspath(args.out)),
                    exist_ok=True)
        with open(args.out, 'a') as f:
            f.write(json.dumps(result) + '\n')
    destroy_distributed(world)


if __name__ == '__main__':
    main()
