r"""Forward + backward time of ``.weight`` for ``CompositionalEmbedding`` vs
``torch.nn.Embedding`` (the cost LightGCN pays on every training step).

Prints a markdown table of medians and the ratio to ``nn.Embedding``.

Example::

    python benchmarks/embedding_weight_time.py --num-embeddings 70839 \
        --dim 64 --bucket-size 5000 --repeats 30
"""
import argparse
import statistics
import time
from typing import Callable, List

import torch

from pyg_cerp import CompositionalEmbedding


def measure(module: torch.nn.Module, repeats: int, warmup: int = 3) -> List[float]:
    times = []
    for i in range(warmup + repeats):
        module.zero_grad(set_to_none=True)
        start = time.perf_counter()
        w = module.weight
        # A cheap, non-trivial reduction so the backward touches every value.
        (w * w).sum().backward()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed * 1e3)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--num-embeddings', type=int, default=70839,
                        help='N (default: Gowalla users + items, 70839)')
    parser.add_argument('--dim', type=int, default=64, help='d')
    parser.add_argument('--bucket-size', type=int, default=5000, help='b')
    parser.add_argument('--repeats', type=int, default=30)
    parser.add_argument('--threads', type=int, default=None,
                        help='torch.set_num_threads (default: unchanged)')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, d, b = args.num_embeddings, args.dim, args.bucket_size
    variants = {
        'nn.Embedding': torch.nn.Embedding(n, d),
        'CompositionalEmbedding (prune mode)':
        CompositionalEmbedding(n, d, b, threshold_init=-4.),
    }
    retrain = CompositionalEmbedding(n, d, b, threshold_init=-4.)
    retrain.freeze_masks()
    variants['CompositionalEmbedding (retrain mode)'] = retrain

    results = {}
    for _ in range(2):  # interleave rounds to spread machine noise
        for name, module in variants.items():
            results.setdefault(name, []).extend(
                measure(module, args.repeats // 2))
    base = statistics.median(results['nn.Embedding'])
    print(f'N={n}, d={d}, b={b}, threads={torch.get_num_threads()}, '
          f'repeats={len(results["nn.Embedding"])}\n')
    print('| variant | median ms (fwd+bwd of .weight) | ratio |')
    print('|---|---:|---:|')
    for name, times in results.items():
        med = statistics.median(times)
        print(f'| {name} | {med:.2f} | {med / base:.2f}x |')


if __name__ == '__main__':
    main()
