r"""What a byte budget buys per value precision, and what simulating the
precision costs per training step (issue 14).

For CERP with :math:`N` entities, dimension :math:`d` and :math:`b` meta
rows, prints per byte target (a fraction of the full table's :math:`4Nd`
float32 bytes) and precision the density the two meta tables may keep
(:func:`pyg_cerp.memory.density_for_nbytes`: uniform over the stored rows,
best layout per table) as a fraction of :math:`Nd` and of :math:`2bd`, the
layout, and the smallest reachable target (index and int8 scales alone).
Then times :attr:`CompositionalEmbedding.weight` forward + backward with
and without fake quantisation (median of :obj:`--repeats`).

Example::

    python benchmarks/byte_budgets.py                   # Gowalla's sizes
    python benchmarks/byte_budgets.py --num 70839 --dim 64 --bucket 5000
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from pyg_cerp.memory import (best_layout, density_for_nbytes,  # noqa: E402
                             tables_nbytes)
from pyg_cerp.nn import PRECISIONS, CompositionalEmbedding  # noqa: E402


def budgets(num: int, dim: int, bucket: int, targets) -> None:
    rows_q = -(-num // -(-num // bucket))  # Used rows of Q.
    shapes = [(bucket, dim, True), (rows_q, dim, True)]
    full = 4 * num * dim
    print(f'N={num} d={dim} b={bucket} (Q rows used: {rows_q}); full '
          f'float32 table {full / 1e6:.3f} MB')
    print('| byte target | precision | values kept / Nd | meta density | '
          'layout P/Q | bytes |')
    print('|---|---|---|---|---|---|')
    for target in targets:
        for precision in PRECISIONS:
            density = density_for_nbytes(shapes, target * full, precision)
            if density is None:
                print(f'| {target:.2%} | {precision} | unreachable | | | |')
                continue
            nnz = [int(density * r * c) for r, c, _ in shapes]
            layouts = '/'.join(best_layout(r, c, z, precision)
                               for (r, c, _), z in zip(shapes, nnz))
            print(f'| {target:.2%} | {precision} | {sum(nnz) / num / dim:.4%}'
                  f' | {sum(nnz) / (2 * bucket * dim):.4f} | {layouts} | '
                  f'{tables_nbytes(shapes, nnz, precision)} |')
    for precision in PRECISIONS:
        floor = tables_nbytes(shapes, [0, 0], precision) / full
        print(f'smallest reachable byte target at {precision}: {floor:.4%}')


def step_time(num: int, dim: int, bucket: int, repeats: int) -> None:
    print('\n| precision | weight forward + backward (ms, median) |')
    print('|---|---|')
    for precision in PRECISIONS:
        torch.manual_seed(0)
        emb = CompositionalEmbedding(num, dim, bucket, threshold_init=-6.,
                                     precision=precision)
        grad = torch.randn(num, dim)
        times = []
        for i in range(repeats + 2):
            start = time.perf_counter()
            emb.weight.backward(grad)
            if i >= 2:  # Warm-up.
                times.append(time.perf_counter() - start)
        print(f'| {precision} | {1e3 * statistics.median(times):.2f} |')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--num', type=int, default=29858 + 40981)
    parser.add_argument('--dim', type=int, default=64)
    parser.add_argument('--bucket', type=int, default=5000)
    parser.add_argument('--targets', type=float, nargs='+',
                        default=[0.10, 0.05, 0.02, 0.01])
    parser.add_argument('--repeats', type=int, default=20)
    args = parser.parse_args()
    budgets(args.num, args.dim, args.bucket, args.targets)
    if args.repeats > 0:
        step_time(args.num, args.dim, args.bucket, args.repeats)


if __name__ == '__main__':
    main()
