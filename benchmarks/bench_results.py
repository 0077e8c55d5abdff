r"""The results of ``benchmarks/memory_vs_ndcg.py``: the CSV columns of each
profile, the resumable CSV log (:class:`CSVLog`), the aggregation over seeds,
the markdown table, the plot, the hash-balance diagnostics and the commit the
code runs on."""
import csv
import math
import os
import os.path as osp
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from bench_jobs import Job  # noqa: E402
from pyg_cerp.diagnostics import hash_balance  # noqa: E402
from pyg_cerp.nn.baselines import HashEmbedding, QREmbedding  # noqa: E402
from pyg_cerp.nn.compositional import CompositionalEmbedding  # noqa: E402

#: The CSV columns of the quick and full profiles.
COLUMNS = [
    'dataset', 'backbone', 'method', 'budget', 'seed', 'gamma_schedule',
    'reached', 'target_epoch', 'nonzero_params', 'full_table_fraction',
    'bytes', 'bytes_format', 'bytes_source', 'recall@10', 'ndcg@10',
    'recall@20', 'ndcg@20', 'epochs', 'prune_epochs', 'seconds',
    'prune_seconds', 'overlap_rate', 'overlap_independent', 'eval_users',
    'profile', 'commit', 'note'
]
#: The CSV columns of the converged profile.
CONVERGED_COLUMNS = [
    'dataset', 'backbone', 'method', 'budget', 'seed', 'bucket_size',
    'nonzero_params', 'full_table_fraction', 'bytes', 'bytes_format',
    'epochs', 'best_epoch', 'prune_epochs', 'valid_ndcg@20', 'recall@10',
    'ndcg@10', 'recall@20', 'ndcg@20', 'overlap_rate', 'overlap_independent',
    'bucket_sweep', 'seconds', 'eval_users', 'profile', 'commit', 'note',
    'precision', 'distill', 'distill_sweep'
]
#: The CSV columns of the converged profile with byte budgets
#: (``--budget-unit bytes``): ``budget`` is the fraction of the full table's
#: float32 bytes, ``budget_bytes`` the bytes it allows, ``bytes`` the stored
#: bytes of the trained model at ``precision``.
BYTES_COLUMNS = [
    'dataset', 'backbone', 'method', 'budget', 'budget_bytes', 'precision',
    'seed', 'bucket_size', 'nonzero_params', 'full_table_fraction', 'bytes',
    'bytes_format', 'embedding_dim', 'epochs', 'best_epoch', 'prune_epochs',
    'valid_ndcg@20', 'recall@10', 'ndcg@10', 'recall@20', 'ndcg@20',
    'distill', 'distill_sweep', 'overlap_rate', 'overlap_independent',
    'bucket_sweep', 'seconds', 'eval_users', 'profile', 'commit', 'note',
    'exact_rows', 'exact_init'
]


class CSVLog:
    r"""Appends rows to a CSV file, flushing each to disk at once (columns
    :obj:`columns`, default :data:`COLUMNS`). An existing file keeps its
    column order; columns it lacks are added at the end (the file is
    rewritten atomically once, old rows empty there), so that a row is never
    written under another column's header."""
    def __init__(self, path: str, fresh: bool = False,
                 columns: Optional[Sequence[str]] = None) -> None:
        self.path = path
        self.columns = list(columns or COLUMNS)
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        if fresh and osp.exists(path):
            os.remove(path)
        if osp.exists(path) and osp.getsize(path) > 0:
            with open(path, newline='') as f:
                reader = csv.DictReader(f)
                header, old = list(reader.fieldnames or []), list(reader)
            merged = header + [c for c in self.columns if c not in header]
            if merged != header:
                tmp = path + '.tmp'
                with open(tmp, 'w', newline='') as f:
                    writer = csv.DictWriter(f, merged)
                    writer.writeheader()
                    writer.writerows(old)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            self.columns = merged

    def rows(self) -> List[Dict[str, str]]:
        if not osp.exists(self.path):
            return []
        with open(self.path, newline='') as f:
            return list(csv.DictReader(f))

    def append(self, rows: Sequence[Dict]) -> None:
        new = not osp.exists(self.path) or osp.getsize(self.path) == 0
        with open(self.path, 'a', newline='') as f:
            writer = csv.DictWriter(f, self.columns, extrasaction='ignore')
            if new:
                writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k, '') for k in self.columns})
            f.flush()
            os.fsync(f.fileno())

    def done(self, job: Job, profile: str) -> bool:
        r"""Whether every row of :obj:`job` is already in the file."""
        have = {(r['method'], float(r['budget']), int(r['seed']),
                 r['gamma_schedule'], r['profile'])
                for r in self.rows()}
        return all((job.method, float(b), job.seed, job.gamma_schedule,
                    profile) in have for b in job.budgets)


def _num(value: str) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def row_label(row: Dict) -> str:
    r"""The method of a CSV row, with its gamma schedule in brackets where
    it has one."""
    g = row.get('gamma_schedule') or ''
    return f"{row['method']}[{g}]" if g else row['method']


def aggregate(rows: List[Dict[str, str]]) -> Dict[Tuple[str, float], Dict]:
    r"""Mean, standard deviation, min and max over seeds per
    (method label, budget), for every numeric column."""
    groups: Dict[Tuple[str, float], List[Dict]] = {}
    for row in rows:
        groups.setdefault((row_label(row), float(row['budget'])),
                          []).append(row)
    out = {}
    for key, group in groups.items():
        agg: Dict[str, Any] = dict(n=len(group), rows=group)
        for col in COLUMNS:
            vals = [_num(r.get(col)) for r in group]
            vals = [v for v in vals if v is not None]
            if not vals:
                continue
            mean = sum(vals) / len(vals)
            std = (math.sqrt(sum((v - mean)**2 for v in vals) /
                             (len(vals) - 1)) if len(vals) > 1 else 0.)
            agg[col] = dict(mean=mean, std=std, min=min(vals), max=max(vals),
                            n=len(vals))
        out[key] = agg
    return out


def _fmt_bytes(n: float) -> str:
    for unit, size in (('GB', 1e9), ('MB', 1e6), ('kB', 1e3)):
        if n >= size:
            return f'{n / size:.2f} {unit}'
    return f'{n:.0f} B'


def write_markdown(rows: List[Dict[str, str]], path: str, title: str,
                   header: str = '') -> None:
    r"""The results table (means over seeds; ``±`` the standard deviation
    where there are several), the best method per budget, CERP's gap, the
    overlap diagnostics and the seed spread."""
    agg = aggregate(rows)
    metrics = ('recall@10', 'ndcg@10', 'recall@20', 'ndcg@20')
    lines = [f'# {title}', '']
    if header:
        lines += [header, '']
    lines += ['| method | budget | seeds | non-zeros | % of full | bytes | '
              'R@10 | N@10 | R@20 | N@20 | epochs (+prune) | epochs to '
              'target | seconds | overlap (indep.) |',
              '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']

    def cell(a: Dict, col: str, digits: int = 4) -> str:
        if col not in a:
            return '-'
        m = a[col]
        if m['n'] > 1 and m['std'] > 0:
            return f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}"
        return f"{m['mean']:.{digits}f}"

    keys = sorted(agg, key=lambda k: (-k[1], -agg[k].get(
        'ndcg@20', {'mean': -1})['mean']))
    for key in keys:
        a = agg[key]
        label, budget = key
        reached = all(r['reached'] in ('True', 'true', '1')
                      for r in a['rows'])
        if 'ndcg@20' not in a:
            note = a['rows'][0].get('note') or 'no result'
            lines.append(f'| {label} | {budget:g} | {a["n"]} | '
                         f'{note.replace("|", "/")} '
                         f'| | | | | | | | | | |')
            continue
        nnz = a['nonzero_params']['mean']
        frac = 100 * a['full_table_fraction']['mean']
        byt = _fmt_bytes(a['bytes']['mean'])
        ep = f"{a['epochs']['mean']:.0f}"
        if a.get('prune_epochs', {}).get('mean', 0):
            ep += f" (+{a['prune_epochs']['mean']:.0f})"
        tgt = cell(a, 'target_epoch', 2)
        sec = f"{a['seconds']['mean']:.0f}"
        if a.get('prune_seconds', {}).get('mean', 0):
            sec += f" (+{a['prune_seconds']['mean']:.0f})"
        ov = '-'
        if 'overlap_rate' in a:
            ov = (f"{a['overlap_rate']['mean']:.4f} "
                  f"({a['overlap_independent']['mean']:.4f})")
        lines.append(
            f'| {label} | {budget:g} | {a["n"]} | {nnz:.0f} | {frac:.2f} | '
            f'{byt} | ' + ' | '.join(cell(a, m) for m in metrics) +
            f' | {ep} | {tgt} | {sec} | {ov} |' +
            ('' if reached else ' (target missed)'))

    # Best per budget and CERP's gap.
    budgets = sorted({k[1] for k in agg if k[1] < 1}, reverse=True)
    full = agg.get(('full', 1.0), {}).get('ndcg@20', {}).get('mean')
    lines += ['', '## Best method per budget (NDCG@20)', '']
    if full is not None:
        lines.append(f'Full table (the ceiling): NDCG@20 = {full:.4f}.')
        lines.append('')
    for b in budgets:
        cands = {k[0]: agg[k]['ndcg@20']['mean'] for k in agg
                 if k[1] == b and 'ndcg@20' in agg[k]}
        if not cands:
            continue
        best = max(cands, key=cands.get)
        line = f'* budget {b:g}: best **{best}** ({cands[best]:.4f})'
        cerp = cands.get('cerp')
        if cerp is not None and best != 'cerp':
            gap = cands[best] - cerp
            line += (f'; CERP {cerp:.4f} is {gap:.4f} below '
                     f'({100 * gap / cands[best]:.1f}% relative)')
        elif cerp is not None:
            others = {k: v for k, v in cands.items() if k != 'cerp'}
            if others:
                second = max(others, key=others.get)
                line += (f'; next {second} {others[second]:.4f} '
                         f'({cerp - others[second]:+.4f})')
        missing = sorted({k[0] for k in agg if k[1] == b} - set(cands))
        if missing:
            line += f'; no result: {", ".join(missing)}'
        lines.append(line)

    # Seed spread.
    multi = [(k, a) for k, a in agg.items() if a['n'] > 1 and 'ndcg@20' in a]
    if multi:
        lines += ['', '## Seed spread', '',
                  '| method | budget | seeds | NDCG@20 mean ± std | min | '
                  'max | max - min | Recall@20 mean ± std |',
                  '|---|---|---|---|---|---|---|---|']
        for (label, budget), a in sorted(multi):
            n = a['ndcg@20']
            r = a['recall@20']
            lines.append(
                f"| {label} | {budget:g} | {n['n']} | {n['mean']:.4f} ± "
                f"{n['std']:.4f} | {n['min']:.4f} | {n['max']:.4f} | "
                f"{n['max'] - n['min']:.4f} | {r['mean']:.4f} ± "
                f"{r['std']:.4f} |")
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def write_plot(rows: List[Dict[str, str]], path: str, title: str) -> None:
    r"""NDCG@20 (mean over seeds) against stored bytes, log x, one line per
    method; the full table as a horizontal reference line."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    agg = aggregate(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = sorted({k[0] for k in agg if k[0] != 'full'})
    for label in labels:
        pts = sorted((a['bytes']['mean'], a['ndcg@20']['mean'],
                      a['ndcg@20']['std'])
                     for k, a in agg.items()
                     if k[0] == label and 'ndcg@20' in a)
        if not pts:
            continue
        xs, ys, es = zip(*pts)
        ax.errorbar(xs, ys, yerr=es if any(es) else None, marker='o',
                    capsize=3, label=label)
    full = agg.get(('full', 1.0))
    if full is not None and 'ndcg@20' in full:
        ax.axhline(full['ndcg@20']['mean'], color='k', linestyle='--',
                   linewidth=1,
                   label=f"full table ({_fmt_bytes(full['bytes']['mean'])})")
    ax.set_xscale('log')
    ax.set_xlabel('stored bytes of the embedding (log scale)')
    ax.set_ylabel('NDCG@20')
    ax.set_title(title)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def diagnostics_section(num_entities: int, bucket_size: int,
                        budgets: Sequence[float]) -> str:
    r"""Hash balance of CERP's P and Q (and of QR at each budget) from the
    actual hash functions."""
    lines = ['## Hash balance (reuse counts of meta rows)', '',
             f'N = {num_entities}, b = {bucket_size}. A perfectly balanced '
             f'hash uses every row floor(N/b) or ceil(N/b) times.', '']
    emb = CompositionalEmbedding(num_entities, 1, bucket_size)
    for t in hash_balance(emb):
        lines.append(f'* CERP {t.summary()}; unused rows: {t.unused}')
    for b in budgets:
        try:
            qr = QREmbedding.for_budget(num_entities, 1, b)
        except ValueError:
            continue
        for t in hash_balance(qr):
            lines.append(f'* QR@{b:g} {t.summary()}')
        hs = HashEmbedding.for_budget(num_entities, 1, b)
        (t, ) = hash_balance(hs)
        lines.append(f'* hash@{b:g} W: {t.rows} rows, counts '
                     f'{t.min_used_count}..{t.max_count} '
                     f'(expected {t.expected[0]}/{t.expected[1]}), '
                     f'unused rows: {t.unused}')
    return '\n'.join(lines)


def git_commit() -> str:
    r"""The commit of the code (with ``+dirty`` for uncommitted changes);
    the environment variable ``PYG_CERP_COMMIT`` where the copy has no git
    history (*e.g.* a working tree copied to a GPU machine)."""
    if os.environ.get('PYG_CERP_COMMIT'):
        return os.environ['PYG_CERP_COMMIT']
    here = osp.dirname(osp.abspath(__file__))
    try:
        sha = subprocess.run(['git', 'rev-parse', '--short=12', 'HEAD'],
                             cwd=here, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain',
                                '--untracked-files=no'], cwd=here,
                               capture_output=True, text=True).stdout.strip()
        return sha + ('+dirty' if dirty else '')
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'
