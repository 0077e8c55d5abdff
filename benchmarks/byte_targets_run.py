r"""CERP LightGCN pruned to *byte* targets, per value precision (issue 14):
the same stored bytes buy more values at float16/int8; retraining simulates
the precision, so the reported metrics are those of the int8/float16 export.

Runs :class:`~pyg_cerp.train.CERPRunner` with
:obj:`CERPConfig(precision=p, target_unit='bytes')` per :obj:`--precisions` (targets
are fractions of the full table's float32 bytes; the pace plan and exact
snapshots make the snapshot's stored bytes land on the target), then prints,
per target and precision, the stored bytes of the snapshot, the values kept
and NDCG@20 / Recall@20 after retraining.

Example (a Gowalla subset, ~10 min on 2 CPU cores)::

    python benchmarks/byte_targets_run.py --root /work/shared/data \
        --subset 15000 20000 --bucket 2500
"""
import argparse
import dataclasses
import os
import sys
import time
from types import SimpleNamespace


sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from pyg_cerp.train import CERPConfig, CERPRunner  # noqa: E402
from pyg_cerp.datasets import open_folder  # noqa: E402
from pyg_cerp.train.cli import (dataset_folder,  # noqa: E402
                                recommender_builder)
from pyg_cerp.train.data import (interactions_from_dataset,  # noqa: E402
                                 make_sampler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--root', default=os.environ.get('PYG_CERP_DATA'))
    parser.add_argument('--dataset', default='gowalla')
    parser.add_argument('--subset', type=int, nargs=2, default=None,
                        metavar=('USERS', 'ITEMS'))
    parser.add_argument('--bucket', type=int, default=5000)
    parser.add_argument('--targets', type=float, nargs='+',
                        default=[0.02, 0.01])
    parser.add_argument('--precisions', nargs='+',
                        default=['float32', 'int8'])
    parser.add_argument('--prune-epochs', type=int, default=3)
    parser.add_argument('--pace-epochs', type=float, default=2.)
    parser.add_argument('--retrain-epochs', type=int, default=2)
    parser.add_argument('--eval-users', type=int, default=2000)
    parser.add_argument('--lr', type=float, default=0.01)
    args = parser.parse_args()

    data = interactions_from_dataset(open_folder(dataset_folder(
        args.dataset, args.root)))
    if args.subset:
        data = data.subset(*args.subset)
    config = CERPConfig(dim=64, bucket_size=args.bucket,
                        targets=tuple(args.targets), baseline_epochs=0,
                        prune_epochs=args.prune_epochs,
                        retrain_epochs=args.retrain_epochs,
                        pace_epochs=args.pace_epochs, exact_snapshots=True,
                        eval_users=args.eval_users, lr=args.lr)
    build = recommender_builder(SimpleNamespace(backbone='lightgcn',
                                                num_layers=3), config, data)

    def sampler(seed: int):
        return make_sampler(data.train, data.num_users, data.num_items,
                            config.num_negatives, config.batch_size, seed)

    n = data.num_users + data.num_items
    print(f'{args.dataset} subset={args.subset}: N={n}, '
          f'{data.train.size(1)} train pairs, d=64, b={args.bucket}; full '
          f'float32 table {4 * n * 64 / 1e6:.3f} MB', flush=True)
    rows = []
    for precision in args.precisions:
        start = time.perf_counter()
        cfg = dataclasses.replace(config, precision=precision,
                                  target_unit='bytes')
        runner = CERPRunner(cfg, data, build, sampler, log=print)
        state = runner.run()
        snaps = {float(s['target']): s for s in
                 state['prune']['scheduler']['snapshots']}
        for t in args.targets:
            res = state['results'].get(f'retrain@{t:g}')
            snap = snaps.get(t)
            rows.append((t, precision, snap, res))
        print(f'[{precision}] {time.perf_counter() - start:.0f}s',
              flush=True)
    print('\n| byte target | precision | stored bytes (snapshot) | values '
          'kept / Nd | step reached | R@20 | N@20 |')
    print('|---|---|---|---|---|---|---|')
    for t, precision, snap, res in rows:
        if snap is None or res is None:
            print(f'| {t:.2%} | {precision} | not reached | | | | |')
            continue
        print(f"| {t:.2%} | {precision} | {snap['nbytes']} "
              f"({snap['nbytes'] / (4 * n * 64):.3%}) | "
              f"{snap['full_fraction']:.3%} | {snap['step']} | "
              f"{res['recall@20']:.4f} | {res['ndcg@20']:.4f} |")


if __name__ == '__main__':
    main()
