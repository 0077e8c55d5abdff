r"""Benchmarks data loading, full-ranking evaluation and BPR sampling on
Gowalla (the exact CERP split).

Example::

    PYG_CERP_DATA=../shared/data python benchmarks/eval_and_sampling.py

Reports medians over ``--repeats`` runs.
"""
import argparse
import os
import os.path as osp
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from pyg_cerp.datasets import EDGE_TYPE, Gowalla  # noqa: E402
from pyg_cerp.metrics import ranking_metrics  # noqa: E402
from pyg_cerp.sampling import BPRSampler  # noqa: E402


def median_time(fn, repeats):
    r"""Runs :obj:`fn` :obj:`repeats` times.  Returns the median wall time,
    the median process CPU time (all threads; less inflated than wall time
    when other jobs share the cores) and the last output."""
    wall, cpu, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu), out


def fmt(wall, cpu):
    return f'{wall:.3f} s wall, {cpu:.3f} s CPU'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--root', default=os.environ.get('PYG_CERP_DATA'),
                        help='folder holding gowalla/raw/{train,test}.txt '
                        '(default: $PYG_CERP_DATA)')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--dim', type=int, default=64)
    parser.add_argument('--ks', type=int, nargs='+', default=[5, 10, 20, 50])
    parser.add_argument('--eval-batch-size', type=int, default=1024)
    parser.add_argument('--num-negatives', type=int, default=5)
    parser.add_argument('--batch-size', type=int, default=2048,
                        help='positives per BPR batch')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch.set_num_threads (default: unchanged)')
    args = parser.parse_args()
    if not args.root:
        parser.error('set --root or PYG_CERP_DATA to the folder holding '
                     'gowalla/raw/train.txt')
    if args.threads:
        torch.set_num_threads(args.threads)
    root = osp.join(args.root, 'gowalla')
    rows = []

    with tempfile.TemporaryDirectory() as tmp:
        t_proc, c_proc, _ = median_time(
            lambda: Gowalla(root, processed_dir=tmp, force_reload=True,
                            log=False), args.repeats)
        t_cached, c_cached, ds = median_time(
            lambda: Gowalla(root, processed_dir=tmp, log=False),
            args.repeats)
        rows.append(('load: parse + verify + save (from raw)',
                     fmt(t_proc, c_proc)))
        rows.append(('load: cached processed file', fmt(t_cached, c_cached)))

    data = ds[0]
    train = data[EDGE_TYPE].edge_index
    test = data[EDGE_TYPE].edge_label_index
    gen = torch.Generator().manual_seed(0)
    user_emb = torch.randn(ds.num_users, args.dim, generator=gen)
    item_emb = torch.randn(ds.num_items, args.dim, generator=gen)
    t_eval, c_eval, metrics = median_time(
        lambda: ranking_metrics(user_emb, item_emb, train, test,
                                ks=args.ks,
                                batch_size=args.eval_batch_size),
        args.repeats)
    rows.append((f'eval: {torch.unique(test[0]).numel()} users, '
                 f'd={args.dim}, ks={tuple(args.ks)}', fmt(t_eval, c_eval)))
    rows.append(('eval: recall@20 / ndcg@20 (random emb.)',
                 f"{metrics['recall@20']:.5f} / {metrics['ndcg@20']:.5f}"))

    test_sampler = BPRSampler(test, ds.num_users, ds.num_items,
                              reject_positives=False)
    for reject in (False, True):
        sampler = BPRSampler(train, ds.num_users, ds.num_items,
                             num_negatives=args.num_negatives,
                             batch_size=args.batch_size,
                             reject_positives=reject, seed=0)

        def epoch():
            total = 0
            for users, _, neg in sampler:
                total += neg.numel()
            return total

        t_epoch, c_epoch, total = median_time(epoch, args.repeats)
        fn_train = fn_test = 0
        for users, _, neg in sampler:
            fn_train += int(sampler.is_positive(users.view(-1, 1), neg).sum())
            fn_test += int(test_sampler.is_positive(users.view(-1, 1),
                                                    neg).sum())
        name = 'with' if reject else 'without'
        rows.append((f'sampler {name} rejection: epoch time',
                     fmt(t_epoch, c_epoch)))
        rows.append((f'sampler {name} rejection: (u, i+, i-) triples/s',
                     f'{total / t_epoch:,.0f}'))
        rows.append((f'sampler {name} rejection: negatives in train',
                     f'{fn_train / total:.4%} ({fn_train:,} of {total:,})'))
        rows.append((f'sampler {name} rejection: negatives in test',
                     f'{fn_test / total:.4%}'))

    width = max(len(r[0]) for r in rows)
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    print(f'Gowalla, torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads, {os.cpu_count()} cores, '
          f'median of {args.repeats}, load average {load:.1f}')
    print(f"{'measurement':<{width}} | value")
    print('-' * width + '-|-' + '-' * 28)
    for name, value in rows:
        print(f'{name:<{width}} | {value}')


if __name__ == '__main__':
    main()
