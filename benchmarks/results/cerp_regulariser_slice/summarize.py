"""Summarise the runs of runs.sh: one row per (tag, method, budget, seed) from
the converged CSVs, with the phase-1 BPR per epoch parsed from the logs."""
import csv
import glob
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def phase1(log_path):
    # The [prune] blocks in order; each ends at its 'target ... reached' or
    # 'not reached' line, and is followed by the retrain lines of its cell.
    blocks, cur = [], []
    for line in open(log_path):
        m = re.match(r'\[prune\] epoch (\d+)/\d+ .*\(bpr ([\d.]+), reg '
                     r'([-\d.e]+)\) gamma ([\d.e-]+)', line)
        if m:
            cur.append((int(m[1]), float(m[2]), float(m[3]), float(m[4])))
        m = re.match(r'(\S+)@([\d.]+) b=\d+ epoch', line)
        if m and cur:
            blocks.append((m[1], float(m[2]), cur))
            cur = []
    return blocks


def main(show_test=False):
    rows = []
    for path in sorted(glob.glob(os.path.join(HERE, '*_converged_*.csv'))):
        tag = path.rsplit('_converged_', 1)[1][:-4]
        log = path[:-4] + '.log'
        blocks = phase1(log) if os.path.isfile(log) else []
        # Each run of memory_vs_ndcg appends its cells in the CSV order.
        used = [False] * len(blocks)
        for r in csv.DictReader(open(path)):
            bpr = ''
            for i, (meth, bud, ep) in enumerate(blocks):
                if not used[i] and meth == r['method'] and abs(
                        bud - float(r['budget'])) < 1e-9:
                    used[i] = True
                    bpr = ' '.join(f'{b:.2f}' for _, b, _, _ in ep)
                    break
            ov, ind = r['overlap_rate'], r['overlap_independent']
            ratio = (float(ov) / float(ind)) if ov and ind else float('nan')
            rows.append(dict(tag=tag, method=r['method'], budget=r['budget'],
                             seed=r['seed'], b=r['bucket_size'],
                             overlap=ov, indep=ind, ratio=f'{ratio:.2f}',
                             valid=r['valid_ndcg@20'], test=r['ndcg@20'],
                             epochs=f"{r['epochs']} ({r['best_epoch']})",
                             bpr=bpr))
    cols = ['tag', 'method', 'budget', 'seed', 'b', 'overlap', 'indep',
            'ratio', 'valid', 'epochs', 'bpr'] + (['test'] if show_test
                                                  else [])
    if '--agg' in sys.argv:
        return aggregate(rows, show_test)
    print('| ' + ' | '.join(cols) + ' |')
    print('|' + '---|' * len(cols))
    for r in sorted(rows, key=lambda r: (-float(r['budget']), r['tag'],
                                         r['seed'])):
        print('| ' + ' | '.join(str(r[c]) for c in cols) + ' |')


def aggregate(rows, show_test):
    # Per (tag, budget): seeds, mean overlap ratio, valid NDCG@20 per seed
    # and mean (and test, if asked).
    groups = {}
    for r in rows:
        groups.setdefault((r['tag'], r['budget']), []).append(r)
    cols = ['tag', 'budget', 'seeds', 'overlap/indep (per seed)',
            'valid NDCG@20 (per seed)', 'valid mean'] + (
                ['test NDCG@20 (per seed)', 'test mean'] if show_test else [])
    print('| ' + ' | '.join(cols) + ' |')
    print('|' + '---|' * len(cols))
    for (tag, budget), rs in sorted(groups.items(),
                                    key=lambda kv: (-float(kv[0][1]),
                                                    kv[0][0])):
        rs = sorted(rs, key=lambda r: r['seed'])
        v = [float(r['valid']) for r in rs]
        out = [tag, budget, ','.join(r['seed'] for r in rs),
               ' '.join(r['ratio'] for r in rs),
               ' '.join(f'{x:.4f}' for x in v), f'{sum(v) / len(v):.4f}']
        if show_test:
            t = [float(r['test']) for r in rs]
            out += [' '.join(f'{x:.4f}' for x in t),
                    f'{sum(t) / len(t):.4f}']
        print('| ' + ' | '.join(out) + ' |')


if __name__ == '__main__':
    main('--test' in sys.argv)
