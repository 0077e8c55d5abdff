r"""Validation curves of the converged benchmark: validation NDCG@20 against
the retraining epoch, read from the logs ``benchmarks/memory_vs_ndcg.py``
writes next to its CSV (one section per run, headed ``# ---- ... tag TAG``,
then lines ``DESC epoch E: loss L valid ndcg@20 V``).

The curve shows what the CSV's single row cannot: whether a model stopped
because validation stopped improving (early stopping) or because it hit the
epoch cap while still rising.

Example (the committed plot: the 5% cells of the byte-budget run, and the
full table, with 80 and 200-epoch caps)::

    python benchmarks/valid_curves.py \
        benchmarks/results/gowalla_lightgcn_bytes.log \
        benchmarks/results/gowalla_lightgcn_bytes_tuning.log \
        benchmarks/results/gowalla_lightgcn_bytes_cap200.log \
        --tags c5i-r125,m5i-r11-e200,q5i-e200,d5i-w1,dq5i,f-e200,dm5i-w03 \
        --exclude 'd5i-w1:full seed 0' \
        --out benchmarks/results/gowalla_lightgcn_bytes_curves.png
"""
import argparse
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

TAG = re.compile(r'^# ---- .*\btag (\S+)')
EPOCH = re.compile(r'^(?P<desc>\S.*?) epoch (?P<epoch>\d+): loss \S+ valid '
                   r'ndcg@20 (?P<valid>[0-9.]+)\s*$')

#: Curves: (tag, description) -> [(epoch, valid NDCG@20), ...].
Curves = Dict[Tuple[str, str], List[Tuple[int, float]]]


def read_curves(lines: Iterable[str],
                tags: Optional[Sequence[str]] = None) -> Curves:
    r"""The validation curves of the sections of :obj:`tags` (all if
    :obj:`None`), in the order they first appear. A tag logged twice (a
    resumed run) keeps its last section."""
    out: Curves = {}
    tag, seen = None, set()
    for line in lines:
        head = TAG.match(line)
        if head:
            tag = head.group(1)
            if tag in seen:  # A later section of the same tag replaces it.
                out = {k: v for k, v in out.items() if k[0] != tag}
            seen.add(tag)
            continue
        hit = EPOCH.match(line)
        if hit and tag is not None and (tags is None or tag in tags):
            out.setdefault((tag, hit['desc']), []).append(
                (int(hit['epoch']), float(hit['valid'])))
    return out


def summary(curves: Curves) -> List[str]:
    r"""One line per curve: last epoch, best epoch and value, and the gain
    over the last ten epochs before the best."""
    rows = []
    for (tag, desc), points in curves.items():
        best_epoch, best = max(points, key=lambda p: (p[1], -p[0]))
        before = [v for e, v in points if e <= best_epoch - 10]
        gain = f'{best - before[-1]:+.4f}' if before else 'n/a'
        rows.append(f'{tag:16s} {desc:32s} last epoch {points[-1][0]:4d}  '
                    f'best {best:.4f} at {best_epoch:4d}  gain over the 10 '
                    f'epochs before the best {gain}')
    return rows


def plot(curves: Curves, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (tag, desc), points in curves.items():
        epochs, values = zip(*points)
        ax.plot(epochs, values, label=f'{desc} ({tag})')
    ax.set_xlabel('retraining epoch')
    ax.set_ylabel('validation NDCG@20')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Optional[Sequence[str]] = None) -> Curves:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('logs', nargs='+', help='Logs of memory_vs_ndcg.py')
    parser.add_argument('--tags', type=lambda s: s.split(','),
                        help='Comma-separated run tags (default: every run)')
    parser.add_argument('--exclude', type=lambda s: s.split(','),
                        default=[], help='Comma-separated (tag, model) '
                        "pairs 'TAG:MODEL' to leave out (e.g. a "
                        "distilled run's teacher, 'd5i-w1:full seed 0')")
    parser.add_argument('--out', help='PNG to draw the curves into')
    parser.add_argument('--title', default='Validation NDCG@20 per epoch')
    args = parser.parse_args(argv)
    curves: Curves = {}
    for path in args.logs:
        with open(path) as f:
            curves.update(read_curves(f, args.tags))
    for pair in args.exclude:
        curves.pop(tuple(pair.split(':', 1)), None)
    if not curves:
        parser.error(f'no validation curve of tags {args.tags} in '
                     f'{args.logs}')
    print('\n'.join(summary(curves)))
    if args.out:
        plot(curves, args.out, args.title)
        print(f'wrote {args.out}')
    return curves


if __name__ == '__main__':
    main()
