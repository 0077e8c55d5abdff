r"""Folds the tagged CSVs and logs of a device run
(``benchmarks/device/converged_h200.sh``) into the main converged CSVs.

Every row of ``<dataset>_<backbone>_converged_<tag>.csv`` whose (method,
budget, seed) is not yet in ``<out>/<dataset>_<backbone>_converged.csv`` is
appended to it with the note ``--note`` (where it ran); a cell already there
is reported and left alone (nothing is replaced). Each tagged log is appended
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
from typing import List

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(
    __file__)))))
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from memory_vs_ndcg import CONVERGED_COLUMNS, CSVLog  # noqa: E402

TAGGED = re.compile(r'^(?P<stem>.+_converged)_(?P<tag>[A-Za-z0-9-]+)\.csv$')


def merge(folder: str, out: str, note: str) -> List[str]:
    r"""Appends the new rows of :obj:`folder`'s tagged CSVs to the main
    CSVs in :obj:`out`; returns one line per row (added or skipped)."""
    report = []
    for path in sorted(glob.glob(osp.join(folder, '*_converged_*.csv'))):
        m = TAGGED.match(osp.basename(path))
        if m is None:
            continue
        main = CSVLog(osp.join(out, m['stem'] + '.csv'),
                      columns=CONVERGED_COLUMNS)
        have = {(r['method'], float(r['budget']), int(r['seed']))
                for r in main.rows()}
        new = []
        for row in CSVLog(path, columns=CONVERGED_COLUMNS).rows():
            key = (row['method'], float(row['budget']), int(row['seed']))
            if key in have:
                report.append(f'{m["stem"]} {key}: already there, skipped')
                continue
            row['note'] = '; '.join(x for x in (row.get('note'), note) if x)
            new.append(row)
            have.add(key)
            report.append(f'{m["stem"]} {key}: ndcg@20 {row["ndcg@20"]}')
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
