r"""Table and plot of a converged comparison CSV
(``benchmarks/memory_vs_ndcg.py --profile converged``).

Per budget: every method's test Recall@20 / NDCG@20 (mean ± std over seeds,
with the seed count), its share of the full table's NDCG@20, stored bytes,
epochs, CERP's ``b``, and the overlap rate of CERP's two pruned tables
against the independent expectation; then the best method per budget and
CERP's gap to the best baseline. Everything was selected on the validation
split by the run itself; this script only reads the CSV.

A bytes CSV (``--budget-unit bytes``, told apart by its ``budget_bytes``
and ``precision`` columns) gets per byte budget every (method, precision):
validation and test NDCG@20, the share of the float32 full table's, stored
bytes (at most ``budget_bytes``; a row above it is an error), ``b``,
epochs, the distillation weight; then per budget the best pyg-cerp
configuration (cerp, cerp-noreg, cerp-ft, cerp-mul, cerp-mul-hybrid, any
precision) against the best baseline (qr-mul-hybrid among them), both
chosen on validation NDCG@20, with the test difference and the seed
spread; and the infeasible rows with their note.

Examples::

    python benchmarks/converged_report.py \
        benchmarks/results/gowalla_lightgcn_converged.csv
    python benchmarks/converged_report.py \
        benchmarks/results/gowalla_lightgcn_bytes.csv \
        --add benchmarks/results/gowalla_lightgcn_bytes_distill.csv
"""
import argparse
import csv
import math
import os.path as osp
import sys
from collections import Counter, defaultdict
from typing import (Callable, Dict, Iterable, List, Optional, Sequence,
                    Tuple)

CERP_FAMILY = ('cerp', 'cerp-noreg', 'cerp-ft', 'cerp-mul', 'cerp-mul-hybrid')


def _stats(vals: Sequence[float]) -> Tuple[float, float, int]:
    n = len(vals)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean)**2 for v in vals) / (n - 1)) if n > 1 else 0.
    return mean, std, n


def _fmt(mean: float, std: float, n: int, digits: int = 4) -> str:
    return (f'{mean:.{digits}f} ± {std:.{digits}f} ({n})' if n > 1 else
            f'{mean:.{digits}f}')


def _key(r: Dict[str, str]) -> Tuple[str, float]:
    return r['method'], float(r['budget'])


def _bytes_key(r: Dict[str, str]) -> Tuple[str, float, str, bool, str]:
    # (method, budget, precision, distilled, b): a distilled cell, and a
    # bucket size of its own (another bucket ratio), is a configuration of
    # its own; the seeds of one configuration share b.
    return (r['method'], float(r['budget']), r.get('precision') or 'float32',
            float(r.get('distill') or 0) > 0, r.get('bucket_size') or '')


#: The float32 full table's key (the reference of every bytes report).
FULL_KEY = ('full', 1.0, 'float32', False, '')


def _label(key: Tuple) -> str:
    # 'cerp int8', 'qr-mul int8 + distillation'.
    return f'{key[0]} {key[2]}' + (' + distillation' if key[3] else '')


def _labels(keys: Iterable[Tuple]) -> Dict[Tuple, str]:
    r"""The label of each key, with its ``b`` where two keys of one budget
    would share a label (the same method, precision and distillation at two
    bucket ratios): 'cerp-noreg int4 + distillation, b 3244'."""
    keys = list(dict.fromkeys(keys))  # Once each (a key per seed's row).
    count = Counter((_label(k), k[1]) for k in keys)
    return {k: _label(k) + (f', b {k[4]}' if count[_label(k), k[1]] > 1
                            else '') for k in keys}


def group(rows: List[Dict[str, str]],
          key: Callable[[Dict[str, str]], Tuple] = _key
          ) -> Dict[Tuple, List[Dict]]:
    r"""Rows with a result, grouped by :obj:`key` (default (method,
    budget); a bytes CSV: (method, budget, precision, distilled, b))."""
    out: Dict[Tuple, List[Dict]] = defaultdict(list)
    for r in rows:
        if r.get('ndcg@20'):
            out[key(r)].append(r)
    return out


def _col(rs: Sequence[Dict[str, str]], col: str) -> Tuple[float, float, int]:
    return _stats([float(r[col]) for r in rs])


def _best(g: Dict[Tuple, List[Dict]], keys: Sequence[Tuple],
          col: str) -> Optional[Tuple]:
    r"""The key of :obj:`keys` with the highest mean :obj:`col` (the
    first on ties), or :obj:`None`."""
    keys = list(keys)
    return max(keys, key=lambda k: _col(g[k], col)[0]) if keys else None


#: A table column: its header and its cell from (key, rows of the key).
Column = Tuple[str, Callable[[Tuple, List[Dict]], str]]


def _table(g: Dict[Tuple, List[Dict]], columns: Sequence[Column]
           ) -> List[str]:
    r"""One line per key, budgets descending, within a budget by mean test
    NDCG@20 descending."""
    lines = ['| ' + ' | '.join(h for h, _ in columns) + ' |',
             '|' + '---|' * len(columns)]
    for budget in sorted({k[1] for k in g}, reverse=True):
        keys = sorted((k for k in g if k[1] == budget),
                      key=lambda k: -_col(g[k], 'ndcg@20')[0])
        for key in keys:
            lines.append('| ' + ' | '.join(f(key, g[key])
                                           for _, f in columns) + ' |')
    return lines


def _pct_cell(full_ndcg: Optional[float]) -> Callable:
    def cell(key: Tuple, rs: List[Dict]) -> str:
        nd = _col(rs, 'ndcg@20')[0]
        return f'{100 * nd / full_ndcg:.1f}' if full_ndcg else '-'
    return cell


def _b_cell(key: Tuple, rs: List[Dict]) -> str:
    return ','.join(sorted({r['bucket_size'] for r in rs
                            if r['bucket_size']})) or '-'


def _epochs_cell(key: Tuple, rs: List[Dict]) -> str:
    return ','.join(f"{r['epochs']} ({r['best_epoch']})" for r in rs)


def _overlap_cell(key: Tuple, rs: List[Dict]) -> str:
    if not rs[0].get('overlap_rate'):
        return '-'
    o = _col(rs, 'overlap_rate')[0]
    i = _col(rs, 'overlap_independent')[0]
    return f'{o:.3f} ({i:.3f}, {o / i:.2f}x)'


def _metric_cell(col: str) -> Callable:
    return lambda key, rs: _fmt(*_col(rs, col))


METHODS = ('cerp', 'cerp-noreg', 'cerp-ft', 'cerp-mul', 'cerp-mul-hybrid',
           'magnitude', 'qr-mul', 'qr-mul-hybrid', 'qr-add', 'pep', 'hash')


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
             'independent.', '']
    lines += _table(g, [
        ('budget', lambda k, rs: f'{k[1]:g}'),
        ('method', lambda k, rs: k[0]),
        ('Recall@20', _metric_cell('recall@20')),
        ('NDCG@20', _metric_cell('ndcg@20')),
        ('% of full NDCG', _pct_cell(full_ndcg)),
        ('bytes', lambda k, rs: f"{_col(rs, 'bytes')[0] / 1e6:.3f} MB"),
        ('b', _b_cell),
        ('epochs (best)', _epochs_cell),
        ('overlap (independent, ratio)', _overlap_cell)])
    budgets = sorted({k[1] for k in g}, reverse=True)
    lines += ['', '## Per method and budget', '', pivot(rows),
              '## CERP against the best baseline', '']
    if full_ndcg:
        lines += [f'Full table: NDCG@20 {full_ndcg:.4f}.', '']
    for budget in (b for b in budgets if b < 1):
        means = {k[0]: _stats([float(r['ndcg@20']) for r in g[k]])
                 for k in g if k[1] == budget}
        base = {m: v for m, v in means.items() if m not in CERP_FAMILY}
        line = f'* {budget:g} of the full table: '
        line += (f"CERP {_fmt(*means['cerp'])}" if 'cerp' in means else
                 'CERP has no row at this budget yet')
        if base:
            best = _best(g, [(m, budget) for m in base], 'ndcg@20')[0]
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


def is_bytes(rows: List[Dict[str, str]]) -> bool:
    r"""Whether :obj:`rows` come from a bytes CSV (``--budget-unit
    bytes``, :data:`bench_results.BYTES_COLUMNS`)."""
    return bool(rows) and 'budget_bytes' in rows[0] and 'precision' in rows[0]


def check_bytes(rows: List[Dict[str, str]]) -> None:
    r"""Raises :class:`ValueError` if a row stores more than its
    ``budget_bytes`` (the runner guarantees it; such a row is a broken
    comparison)."""
    over = [r for r in rows if r.get('bytes') and r.get('budget_bytes')
            and float(r['bytes']) > float(r['budget_bytes'])]
    if over:
        raise ValueError('stored bytes above the budget: ' + '; '.join(
            f"{r['method']} {r['budget']} {r.get('precision') or 'float32'} "
            f"seed {r['seed']}: {r['bytes']} > {r['budget_bytes']}"
            for r in over))


def _spread(rs: List[Dict[str, str]]) -> str:
    nd = _col(rs, 'ndcg@20')
    if nd[2] < 2:
        return '1 seed'
    vals = [float(r['ndcg@20']) for r in rs]
    return (f'± {nd[1]:.4f} over {nd[2]} seeds, '
            f'{min(vals):.4f}-{max(vals):.4f}')


def _missing(none: List[Dict[str, str]], budget: float, cerp: bool) -> str:
    # 'yet', or the infeasible (method precision) cells of the side.
    cells = sorted({f"{r['method']} {r.get('precision') or 'float32'}"
                    for r in none if float(r['budget']) == budget and
                    (r['method'] in CERP_FAMILY) == cerp})
    return f"(infeasible: {', '.join(cells)})" if cells else 'yet'


def bytes_report(rows: List[Dict[str, str]], title: str) -> str:
    r"""The report of a bytes CSV: per byte budget every configuration
    (method, precision, distilled or not, b), then the best pyg-cerp
    configuration against the best baseline, both chosen on validation
    NDCG@20, and the infeasible rows."""
    check_bytes(rows)
    g = group(rows, _bytes_key)
    full = g.get(FULL_KEY)
    full_ndcg = _col(full, 'ndcg@20')[0] if full else None
    lines = [f'# {title}', '',
             'Byte budgets: `budget` is a fraction of the full table\'s '
             'float32 bytes, `budget bytes` what it allows; every model is '
             'trained and stored at its precision. Test metrics of the epoch '
             'with the best validation NDCG@20 (nothing selected on test). '
             '`(n)`: number of seeds, ± their standard deviation. % of full: '
             'of the float32 full table\'s test NDCG@20. Bytes: the stored '
             'form (`pyg_cerp.memory`), at most the budget bytes in every '
             'row (checked).', '']
    lines += _table(g, [
        ('budget', lambda k, rs: f'{k[1]:g}'),
        ('budget bytes', lambda k, rs: rs[0]['budget_bytes'] or '-'),
        ('method', lambda k, rs: k[0]),
        ('precision', lambda k, rs: k[2]),
        ('valid NDCG@20', _metric_cell('valid_ndcg@20')),
        ('NDCG@20', _metric_cell('ndcg@20')),
        ('% of full NDCG', _pct_cell(full_ndcg)),
        ('Recall@20', _metric_cell('recall@20')),
        ('bytes', lambda k, rs: f"{_col(rs, 'bytes')[0]:.0f}"),
        ('b', _b_cell),
        ('epochs (best)', _epochs_cell),
        ('distill', lambda k, rs: ','.join(sorted(
            {r.get('distill') or '0' for r in rs})))])
    lines += ['', '## Best pyg-cerp configuration against the best baseline',
              '', 'Both chosen on validation NDCG@20 (mean over seeds) among '
              'every method, precision and distillation weight at the '
              f'budget; pyg-cerp: {", ".join(CERP_FAMILY)}. The difference '
              'is in test NDCG@20, relative to the baseline. Where a budget '
              'has distilled cells (the full table as teacher, '
              '`pyg_cerp.train.RankingDistillation`, which any method can '
              'use), a second line compares the undistilled ones.', '']
    if full_ndcg:
        lines += [f'Full table (float32): NDCG@20 {full_ndcg:.4f}.', '']
    none = [r for r in rows if not r.get('ndcg@20')]
    for budget in sorted({k[1] for k in g if k[1] < 1} |
                         {float(r['budget']) for r in none
                          if float(r['budget']) < 1}, reverse=True):
        keys = [k for k in g if k[1] == budget]
        lines.append(_versus(g, keys, budget, full_ndcg, none,
                             f'* {budget:g} of the full table: '))
        if any(k[3] for k in keys):
            lines.append(_versus(g, [k for k in keys if not k[3]], budget,
                                 full_ndcg, none, '  * without distillation: '))
    if none:
        lines += ['', '## Infeasible (no model)', '',
                  '| budget | budget bytes | method | precision | seed | note |',
                  '|---|---|---|---|---|---|']
        for r in sorted(none, key=lambda r: (-float(r['budget']),
                                             r['method'], r['precision'],
                                             r['seed'])):
            note = (r.get('note') or 'no result').replace('|', '/')
            lines.append(f"| {float(r['budget']):g} | {r['budget_bytes']} | "
                         f"{r['method']} | {r.get('precision') or 'float32'} "
                         f"| {r['seed']} | {note} |")
    return '\n'.join(lines) + '\n'


def _versus(g: Dict[Tuple, List[Dict]], keys: Sequence[Tuple], budget: float,
            full_ndcg: Optional[float], none: List[Dict[str, str]],
            line: str) -> str:
    # The best pyg-cerp configuration of keys against the best baseline,
    # both on validation NDCG@20.
    cerp = _best(g, [k for k in keys if k[0] in CERP_FAMILY],
                 'valid_ndcg@20')
    base = _best(g, [k for k in keys if k[0] not in CERP_FAMILY],
                 'valid_ndcg@20')
    if cerp is None:
        line += 'pyg-cerp has no row at this budget ' + _missing(
            none, budget, True)
    else:
        line += _side(g, cerp, 'pyg-cerp **', '**')
        nd = _col(g[cerp], 'ndcg@20')
        if full_ndcg:
            line += f', {100 * nd[0] / full_ndcg:.1f}% of full'
    if base is None:
        line += '; no baseline row at this budget ' + _missing(
            none, budget, False)
    else:
        line += '; ' + _side(g, base, 'baseline ', '')
        bn = _col(g[base], 'ndcg@20')
        if cerp is not None:
            gap = nd[0] - bn[0]
            line += (f'; pyg-cerp {gap:+.4f} ({100 * gap / bn[0]:+.1f}%); '
                     f'seed spread: pyg-cerp {_spread(g[cerp])}, '
                     f'baseline {_spread(g[base])}')
    return line


def _side(g: Dict[Tuple, List[Dict]], key: Tuple, name: str,
          close: str) -> str:
    # 'best <name><label><close> (valid v) test t' for one configuration.
    return (f'best {name}{_labels(g)[key]}{close} (valid '
            f"{_col(g[key], 'valid_ndcg@20')[0]:.4f}) test "
            f"{_fmt(*_col(g[key], 'ndcg@20'))}")


def plot(rows: List[Dict[str, str]], path: str, title: str) -> None:
    r"""NDCG@20 (mean ± std over seeds) against stored bytes, log x: the
    plot of :mod:`memory_vs_ndcg` (:func:`bench_results.write_plot`); a
    bytes CSV's lines are (method, precision), the float32 full table the
    reference line."""
    sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
    from bench_results import write_plot
    rows = [r for r in rows if r.get('ndcg@20')]
    if is_bytes(rows):
        keys = [_bytes_key(r) for r in rows]
        labels = _labels(keys)
        rows = [dict(r, method='full' if k == FULL_KEY else labels[k])
                for r, k in zip(rows, keys)]
    write_plot(rows, path, title)


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('csv', help='converged or bytes CSV (written by '
                        'memory_vs_ndcg.py --profile converged [--budget-unit '
                        'bytes])')
    parser.add_argument('--add', action='append', default=[], metavar='CSV',
                        help='more rows of the same kind, reported with the '
                        "first CSV's (e.g. the distilled cells of "
                        "gowalla_lightgcn_bytes_distill.csv); repeatable")
    parser.add_argument('--title', default=None,
                        help='title (default: the CSV name)')
    parser.add_argument('--no-plot', action='store_true',
                        help='write the markdown only')
    args = parser.parse_args(argv)
    with open(args.csv, newline='') as f:
        rows = list(csv.DictReader(f))
    if not rows:
        parser.error(f'{args.csv} has no rows')
    for path in args.add:
        with open(path, newline='') as f:
            more = list(csv.DictReader(f))
        if more and is_bytes(more) != is_bytes(rows):
            parser.error(f'--add {path}: not the same kind of CSV as '
                         f'{args.csv} (bytes and parameter budgets)')
        rows += more
    stem = osp.splitext(args.csv)[0]
    title = args.title or osp.basename(stem)
    try:
        text = (bytes_report if is_bytes(rows) else report)(rows, title)
    except ValueError as error:
        parser.error(f'{args.csv}: {error}')
    with open(stem + '.md', 'w') as f:
        f.write(text)
    if not args.no_plot:
        plot(rows, stem + '.png', title)
    print(f'wrote {stem}.md' + ('' if args.no_plot else f', {stem}.png'))
    return stem + '.md'


if __name__ == '__main__':
    main()
