r"""Folds the tagged CSVs and logs of a device run
(``benchmarks/device/converged_h200.sh``) into the main converged CSVs.

Every row of ``<dataset>_<backbone>_converged_<tag>.csv`` whose (method,
budget, seed) is not yet in ``<out>/<dataset>_<backbone>_converged.csv`` is
appended to it with the note ``--note`` (where it ran); likewise every row of
a byte-budget CSV ``<dataset>_<backbone>_bytes_<tag>.csv`` (``--budget-unit
bytes``) whose (method, budget, precision, seed) is not yet in
``<out>/<dataset>_<backbone>_bytes.csv``. A cell already there is reported
and left alone (nothing is replaced). Each tagged log is appended
to the main log under a header naming the tag.

Example::

    tar xzf results.tgz -C /tmp/run
    python benchmarks/device/merge.py /tmp/run --note 'H200, 20 processes'
"""
import argparse
import glob
import os.path as osp
import re
import sys
from typing import Dict, List, Tuple

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(
    __file__)))))
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from bench_results import (BYTES_COLUMNS, CONVERGED_COLUMNS,  # noqa: E402
                           CSVLog)

TAGGED = re.compile(r'^(?P<stem>.+_(?P<kind>converged|bytes))_'
                    r'(?P<tag>[A-Za-z0-9-]+)\.csv$')


def cell_key(row: Dict[str, str], kind: str) -> Tuple:
    r"""A row's cell: (method, budget, seed) in a converged CSV, (method,
    budget, precision, seed) in a bytes CSV."""
    if kind == 'bytes':
        return (row['method'], float(row['budget']),
                row.get('precision') or 'float32', int(row['seed']))
    return row['method'], float(row['budget']), int(row['seed'])


def merge(folder: str, out: str, note: str) -> List[str]:
    r"""Appends the new rows of :obj:`folder`'s tagged CSVs to the main
    CSVs in :obj:`out`; returns one line per row (added or skipped)."""
    report = []
    paths = sorted(glob.glob(osp.join(folder, '*_converged_*.csv')) +
                   glob.glob(osp.join(folder, '*_bytes_*.csv')))
    for path in paths:
        m = TAGGED.match(osp.basename(path))
        if m is None:
            # Not a tagged CSV of this layout (e.g. a tag holding '_'):
            # said, so that no finished cell is dropped unnoticed.
            report.append(f'{osp.basename(path)}: not a tagged '
                          '<dataset>_<backbone>_{converged,bytes}_<tag>.csv '
                          '(tag: letters, digits, -), not merged')
            continue
        columns = BYTES_COLUMNS if m['kind'] == 'bytes' else CONVERGED_COLUMNS
        main = CSVLog(osp.join(out, m['stem'] + '.csv'), columns=columns)
        have = {cell_key(r, m['kind']) for r in main.rows()}
        new = []
        for row in CSVLog(path, columns=columns).rows():
            key = cell_key(row, m['kind'])
            if key in have:
                report.append(f'{m["stem"]} {key}: already there, skipped')
                continue
            report.append(f'{m["stem"]} {key}: ' + (
                f'ndcg@20 {row["ndcg@20"]}' if row.get('ndcg@20') else
                f'no model ({row.get("note") or "no note"})'))
            row['note'] = '; '.join(x for x in (row.get('note'), note) if x)
            new.append(row)
            have.add(key)
        main.append(new)
        log = path[:-4] + '.log'
        if osp.exists(log):
            with open(log) as src, open(osp.join(out, m['stem'] + '.log'),
                                        'a') as dst:
                dst.write(f'# ---- device run, tag {m["tag"]} ({note})\n')
                dst.write(src.read())
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('folder', help='the unpacked results.tgz')
    parser.add_argument('--out', default=osp.join(osp.dirname(osp.dirname(
        osp.abspath(__file__))), 'results'), help='the main CSVs\' folder '
        '(default: benchmarks/results)')
    parser.add_argument('--note', default='', help='appended to each new '
                        "row's note (where it ran)")
    args = parser.parse_args()
    for line in merge(args.folder, args.out, args.note):
        print(line)


if __name__ == '__main__':
    main()
