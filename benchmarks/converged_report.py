r"""Table and plot of a converged comparison CSV
(``benchmarks/memory_vs_ndcg.py --profile converged``).

Per budget: every method's test Recall@20 / NDCG@20 (mean ± std over seeds,
with the seed count), its share of the full table's NDCG@20, stored bytes,
epochs, CERP's ``b``, and the overlap rate of CERP's two pruned tables
against the independent expectation; then the best method per budget and
CERP's gap to the best baseline. Everything was selected on the validation
split by the run itself; this script only reads the CSV.

Example::

    python benchmarks/converged_report.py \
        benchmarks/results/gowalla_lightgcn_converged.csv
"""
import argparse
import csv
import math
import os.path as osp
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

CERP_FAMILY = ('cerp', 'cerp-noreg', 'cerp-ft')


def _stats(vals: Sequence[float]) -> Tuple[float, float, int]:
    n = len(vals)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean)**2 for v in vals) / (n - 1)) if n > 1 else 0.
    return mean, std, n


def _fmt(mean: float, std: float, n: int, digits: int = 4) -> str:
    return (f'{mean:.{digits}f} ± {std:.{digits}f} ({n})' if n > 1 else
            f'{mean:.{digits}f}')


def group(rows: List[Dict[str, str]]) -> Dict[Tuple[str, float], List[Dict]]:
    r"""Rows with a result, grouped by (method, budget)."""
    out: Dict[Tuple[str, float], List[Dict]] = defaultdict(list)
    for r in rows:
        if r.get('ndcg@20'):
            out[(r['method'], float(r['budget']))].append(r)
    return out


METHODS = ('cerp', 'cerp-noreg', 'cerp-ft', 'magnitude', 'qr-mul', 'qr-add', 'pep', 'hash')


def pivot(rows: List[Dict[str, str]],
          budgets: Sequence[float] = (0.1, 0.05, 0.01)) -> str:
    r"""One row per method, one column per budget: test NDCG@20 (± over
    seeds), its share of the full table's, stored MB (the README's table)."""
    g = group(rows)
    full = g.get(('full', 1.0))
    if not full:
        return ''
    F = _stats([float(r['ndcg@20']) for r in full])[0]
    lines = ['| method | ' + ' | '.join(
        f'{100 * b:g}%: NDCG@20 (% of full), MB' for b in budgets) + ' |',
        '|---|' + '---|' * len(budgets),
        f"| full table | NDCG@20 {F:.4f}, {float(full[0]['bytes']) / 1e6:.1f} "
        f"MB |" + ' |' * (len(budgets) - 1)]
    for m in METHODS:
        if not any(g.get((m, b)) for b in budgets):
            continue  # A method not in this run.
        cells = []
        for b in budgets:
            rs = g.get((m, b))
            if not rs:
                cells.append('(not yet run)')
                continue
            nd = _stats([float(r['ndcg@20']) for r in rs])
            mb = _stats([float(r['bytes']) for r in rs])[0] / 1e6
            cells.append(f'{_fmt(*nd)} ({100 * nd[0] / F:.0f}%), {mb:.2f}')
        lines.append(f'| {m} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def report(rows: List[Dict[str, str]], title: str) -> str:
    g = group(rows)
    full = g.get(('full', 1.0))
    full_ndcg = _stats([float(r['ndcg@20']) for r in full])[0] if full else None
    lines = [f'# {title}', '',
             'Test metrics of the epoch with the best validation NDCG@20 '
             '(early stopping on validation; nothing selected on test). '
             '`(n)`: number of seeds, ± their standard deviation. Bytes: the '
             'stored form (values + index/mask; `pyg_cerp.memory`). Overlap: '
             'mean fraction of dimensions zero in both meta rows of an '
             'entity, against the same if the two zero patterns were '
             'independent.', '',
             '| budget | method | Recall@20 | NDCG@20 | % of full NDCG | bytes '
             '| b | epochs (best) | overlap (independent, ratio) |',
             '|---|---|---|---|---|---|---|---|---|']
    budgets = sorted({k[1] for k in g}, reverse=True)
    for budget in budgets:
        keys = sorted((k for k in g if k[1] == budget),
                      key=lambda k: -_stats([float(r['ndcg@20'])
                                             for r in g[k]])[0])
        for key in keys:
            rs = g[key]
            nd = _stats([float(r['ndcg@20']) for r in rs])
            rc = _stats([float(r['recall@20']) for r in rs])
            pct = f'{100 * nd[0] / full_ndcg:.1f}' if full_ndcg else '-'
            byt = _stats([float(r['bytes']) for r in rs])[0]
            b = ','.join(sorted({r['bucket_size'] for r in rs if r['bucket_size']}))
            ep = ','.join(f"{r['epochs']} ({r['best_epoch']})" for r in rs)
            ov = '-'
            if rs[0].get('overlap_rate'):
                o = _stats([float(r['overlap_rate']) for r in rs])[0]
                i = _stats([float(r['overlap_independent']) for r in rs])[0]
                ov = f'{o:.3f} ({i:.3f}, {o / i:.2f}x)'
            lines.append(f'| {budget:g} | {key[0]} | {_fmt(*rc)} | '
                         f'{_fmt(*nd)} | {pct} | {byt / 1e6:.3f} MB | '
                         f'{b or "-"} | {ep} | {ov} |')
    lines += ['', '## Per method and budget', '', pivot(rows),
              '## CERP against the best baseline', '']
    if full_ndcg:
        lines += [f'Full table: NDCG@20 {full_ndcg:.4f}.', '']
    for budget in (b for b in budgets if b < 1):
        means = {k[0]: _stats([float(r['ndcg@20']) for r in g[k]])
                 for k in g if k[1] == budget}
        base = {m: v for m, v in means.items() if m not in CERP_FAMILY}
        line = f'* {budget:g} of the full table: '
        if 'cerp' in means:
            line += f"CERP {_fmt(*means['cerp'])}"
        if base:
            best = max(base, key=lambda m: base[m][0])
            line += f'; best baseline {best} {_fmt(*base[best])}'
            if 'cerp' in means:
                gap = means['cerp'][0] - base[best][0]
                line += f' (CERP {gap:+.4f}, {100 * gap / base[best][0]:+.1f}%)'
        if 'cerp-noreg' in means:
            line += f"; cerp-noreg {_fmt(*means['cerp-noreg'])}"
        if full_ndcg and 'cerp' in means:
            line += f"; CERP keeps {100 * means['cerp'][0] / full_ndcg:.1f}% of full"
        lines.append(line)
    return '\n'.join(lines) + '\n'


def plot(rows: List[Dict[str, str]], path: str, title: str) -> None:
    r"""NDCG@20 (mean ± std over seeds) against stored bytes, log x: the
    plot of :mod:`memory_vs_ndcg` (:func:`write_plot`)."""
    sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
    from memory_vs_ndcg import write_plot
    write_plot([r for r in rows if r.get('ndcg@20')], path, title)


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('csv', help='converged CSV (written by '
                        'memory_vs_ndcg.py --profile converged)')
    parser.add_argument('--title', default=None,
                        help='title (default: the CSV name)')
    parser.add_argument('--no-plot', action='store_true',
                        help='write the markdown only')
    args = parser.parse_args(argv)
    with open(args.csv, newline='') as f:
        rows = list(csv.DictReader(f))
    if not rows:
        parser.error(f'{args.csv} has no rows')
    stem = osp.splitext(args.csv)[0]
    title = args.title or osp.basename(stem)
    with open(stem + '.md', 'w') as f:
        f.write(report(rows, title))
    if not args.no_plot:
        plot(rows, stem + '.png', title)
    print(f'wrote {stem}.md' + ('' if args.no_plot else f', {stem}.png'))
    return stem + '.md'


if __name__ == '__main__':
    main()
