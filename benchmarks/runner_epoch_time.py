r"""Does the training loop add hidden cost? Epoch wall time of the real
pipeline (``pyg_cerp.train.CERPRunner``: sampling, steps, pruning checks,
logging, the checkpoint written after every epoch) next to ``steps x`` the
median time of one ``pyg_cerp.train.train_step`` of the same configuration
(same model, optimiser, scheduler and batch shape, same process and thread
count, measured right before).

Stages timed: the full-table baseline and phase 1 (CERP with the pruning
scheduler). Evaluation is excluded (it is timed by ``eval_and_sampling.py``).

Example::

    python benchmarks/runner_epoch_time.py --root ../shared/data --epochs 2
"""
import argparse
import os
import statistics
import tempfile
import time
from typing import Any, Dict, List, Optional

import torch
from torch_geometric.nn.models import LightGCN

from pyg_cerp.nn import use_symmetric_propagation
from pyg_cerp.train import CERPConfig, CERPRunner, LightGCNRecommender, \
    load_interactions, make_sampler, train_step
from pyg_cerp.utils import lightgcn_adjacency


def step_time(runner: CERPRunner, kind: str, repeats: int) -> float:
    r"""Median ms of ``train_step`` for the runner's stage ``kind``."""
    cfg = runner.config
    stage = 'prune' if kind == 'cerp' else 'full'
    model = runner._build(kind, 0)
    opt = runner._optimizer(model, stage)
    sched = runner._scheduler(model) if kind == 'cerp' else None
    sampler = make_sampler(runner.data.train, runner.data.num_users,
                           runner.data.num_items, cfg.num_negatives,
                           runner._stage_sampler(stage).batch_size, seed=123)
    batches = []
    for b in sampler:
        batches.append(b)
        if len(batches) == 8:
            break
    times = []
    for i in range(3 + repeats):
        start = time.perf_counter()
        train_step(model, opt, batches[i % len(batches)], sched,
                   cfg.clip_grad_norm, l2_reg=cfg.l2_reg)
        if i >= 3:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--root', default=os.environ.get('PYG_CERP_DATA'),
                        help='data folder holding gowalla/raw/')
    parser.add_argument('--epochs', type=int, default=2,
                        help='epochs of each timed stage')
    parser.add_argument('--repeats', type=int, default=20,
                        help='timed train_step calls per configuration')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads (default: torch default)')
    args = parser.parse_args(argv)
    if args.root is None:
        parser.error('pass --root or set PYG_CERP_DATA')
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    data = load_interactions(os.path.join(args.root, 'gowalla'))
    adj = lightgcn_adjacency(data.train, data.num_users, data.num_items)
    num_nodes = data.num_users + data.num_items
    # Phase 1 stops as soon as every target is met (within its first epoch
    # with the default pruning speed): the ratio is per step either way.
    # An epoch's interval starts when the previous one ends (a stage's first
    # also holds building its model).
    config = CERPConfig(baseline_epochs=args.epochs, prune_epochs=args.epochs,
                        retrain_epochs=0, eval_users=1)

    def build(embedding: torch.nn.Module) -> LightGCNRecommender:
        model = LightGCN(num_nodes, config.dim, 3, normalize=False)
        use_symmetric_propagation(model)
        model.embedding = embedding
        model.reset_parameters()
        return LightGCNRecommender(model, adj, data.num_users,
                                   data.num_items)

    def sampler(seed: int):
        return make_sampler(data.train, data.num_users, data.num_items,
                            config.num_negatives, config.batch_size, seed)

    with tempfile.TemporaryDirectory() as out:
        runner = CERPRunner(config, data, build, sampler, out_dir=out,
                            log=lambda msg: None)
        steps_ms = {kind: step_time(runner, kind, args.repeats)
                    for kind in ('full', 'cerp')}
        marks: List[float] = [time.perf_counter()]
        log_lines: List[str] = []

        def log(msg: str) -> None:  # One line per finished epoch.
            if '] epoch ' in msg:
                marks.append(time.perf_counter())
                log_lines.append(msg)

        runner.log = log
        evaluate = runner._evaluate

        def timed_evaluate(model: Any) -> Dict[str, float]:
            start = time.perf_counter()
            try:
                return evaluate(model)
            finally:  # Evaluation is not part of an epoch.
                marks[-1] += time.perf_counter() - start

        runner._evaluate = timed_evaluate
        state = runner.run()

    rows = []
    for rec, t0, t1 in zip(state['history'], marks[:-1], marks[1:]):
        kind = 'full' if rec['stage'] == 'full' else 'cerp'
        expected = rec['steps'] * steps_ms[kind] / 1e3
        rows.append((rec['stage'], rec['epoch'], rec['steps'], steps_ms[kind],
                     expected, rec['time'], t1 - t0))
    print(f'## Gowalla, LightGCN 3 layers, d={config.dim}, batch '
          f'{config.batch_size} (phase 1: {config.prune_batch_size}) x '
          f'{config.num_negatives} negatives, threads '
          f'{torch.get_num_threads()}, torch {torch.__version__}, load '
          f'average {os.getloadavg()[0]:.2f}\n')
    print('| stage | epoch | steps | train_step median ms | steps x step s | '
          'train_epoch s | runner epoch s (incl. checkpoint) | ratio |')
    print('|---|---:|---:|---:|---:|---:|---:|---:|')
    for stage, epoch, steps, ms, expected, inner, wall in rows:
        print(f'| {stage} | {epoch} | {steps} | {ms:.1f} | {expected:.2f} | '
              f'{inner:.2f} | {wall:.2f} | {wall / expected:.3f}x |')


if __name__ == '__main__':
    main()
