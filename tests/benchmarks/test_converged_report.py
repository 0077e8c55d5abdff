r"""benchmarks/converged_report.py: the table and plot of a converged CSV."""
import csv
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..',
                                'benchmarks'))
import converged_report  # noqa: E402

COLS = ['method', 'budget', 'seed', 'bucket_size', 'bytes', 'epochs',
        'best_epoch', 'recall@20', 'ndcg@20', 'overlap_rate',
        'overlap_independent']


def _write(path, rows):
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, COLS)
        w.writeheader()
        for r in rows:
            w.writerow(dict(zip(COLS, r)))


def test_report_aggregates_seeds_and_ranks_baselines(tmp_path):
    path = tmp_path / 'x_converged.csv'
    _write(path, [
        ('full', 1.0, 0, '', 1000, 10, 8, 0.2, 0.10, '', ''),
        ('cerp', 0.05, 0, 50, 60, 10, 8, 0.1, 0.06, 0.1, 0.2),
        ('cerp', 0.05, 1, 50, 60, 10, 8, 0.1, 0.08, 0.1, 0.2),
        ('qr-mul', 0.05, 0, '', 50, 10, 8, 0.1, 0.05, '', ''),
        ('magnitude', 0.05, 0, '', 90, 10, 8, 0.1, 0.09, '', ''),
        ('pep', 0.01, 0, '', 20, 10, 8, 0.1, '', '', ''),  # no result yet
    ])
    md = converged_report.main([str(path), '--no-plot'])
    text = open(md).read()
    # Seeds: mean 0.07, std 0.0141, 2 seeds; 70% of the full table.
    assert '| cerp | (not yet run) | 0.0700 ± 0.0141 (2) (70%), 0.00 |' in text
    assert '| 0.05 | cerp | 0.1000 ± 0.0000 (2) | 0.0700 ± 0.0141 (2) |' in text
    assert '0.100 (0.200, 0.50x)' in text  # overlap against independent
    assert ('best baseline magnitude 0.0900 (CERP -0.0200, -22.2%)'
            in text)
    assert '| pep |' not in text.split('## Per method')[0]  # no result
