r"""benchmarks/converged_report.py: the table and plot of a converged CSV."""
import csv
import os
import sys

import pytest

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


def test_report_without_cerp_says_so(tmp_path):
    path = tmp_path / 'x_converged.csv'
    _write(path, [
        ('full', 1.0, 0, '', 1000, 10, 8, 0.2, 0.10, '', ''),
        ('pep', 0.1, 0, '', 90, 10, 8, 0.1, 0.06, '', ''),
    ])
    text = open(converged_report.main([str(path), '--no-plot'])).read()
    assert ('* 0.1 of the full table: CERP has no row at this budget yet; '
            'best baseline pep 0.0600\n') in text


BYTES_COLS = ['method', 'budget', 'budget_bytes', 'precision', 'seed',
              'bucket_size', 'nonzero_params', 'bytes', 'epochs',
              'best_epoch', 'valid_ndcg@20', 'recall@20', 'ndcg@20',
              'distill', 'note']


def _write_bytes(path, rows):
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, BYTES_COLS)
        w.writeheader()
        for r in rows:
            w.writerow(dict(zip(BYTES_COLS, r)))


BYTES_ROWS = [
    # method, budget, budget_bytes, precision, seed, b, nnz, bytes, epochs,
    # best, valid, recall, ndcg, distill, note
    ('full', 1.0, 4000, 'float32', 0, '', 1000, 4000, 10, 8, 0.11, 0.2,
     0.10, 0, ''),
    ('full', 1.0, 4000, 'int8', 0, '', 1000, 1100, 10, 8, 0.105, 0.2,
     0.098, 0, ''),
    # cerp int8: best on validation (0.07) but not on test (0.0650 mean).
    ('cerp', 0.05, 200, 'int8', 0, 40, 150, 190, 10, 8, 0.070, 0.1, 0.060,
     0, ''),
    ('cerp', 0.05, 200, 'int8', 1, 40, 150, 190, 10, 8, 0.070, 0.1, 0.070,
     0, ''),
    ('cerp', 0.05, 200, 'float32', 0, 40, 50, 200, 10, 8, 0.060, 0.1, 0.080,
     0, ''),
    ('cerp-noreg', 0.05, 200, 'float32', 0, 40, 50, 180, 10, 8, 0.065, 0.1,
     0.075, 0, ''),
    # Baselines: qr-mul float32 best on validation, hash int8 best on test.
    ('qr-mul', 0.05, 200, 'float32', 0, '', 50, 200, 10, 8, 0.050, 0.1,
     0.050, 0, ''),
    ('hash', 0.05, 200, 'int8', 0, '', 180, 195, 10, 8, 0.040, 0.1, 0.090,
     0, ''),
    ('qr-mul', 0.01, 40, 'int8', 0, '', '', '', '', '', '', '', '', '',
     'infeasible: QR needs 64 rows'),
    ('cerp', 0.01, 40, 'float32', 0, 10, 8, 40, 10, 8, 0.030, 0.1, 0.031,
     0, ''),
]


def test_bytes_report_chooses_on_validation(tmp_path):
    path = tmp_path / 'x_lightgcn_bytes.csv'
    _write_bytes(path, BYTES_ROWS)
    md = converged_report.main([str(path), '--no-plot'])
    text = open(md).read()
    # Every (method, precision): mean ± std over the two seeds, 65% of the
    # float32 full table, stored bytes, b.
    assert ('| 0.05 | 200 | cerp | int8 | 0.0700 ± 0.0000 (2) | '
            '0.0650 ± 0.0071 (2) | 65.0 | 0.1000 ± 0.0000 (2) | 190 | 40 | '
            '10 (8),10 (8) | 0 |') in text
    assert '| 1 | 4000 | full | int8 | 0.1050 | 0.0980 | 98.0 |' in text
    best = [line for line in text.splitlines()
            if line.startswith('* 0.05 of the full table')]
    assert len(best) == 1
    # Chosen on validation: cerp int8 (not cerp float32, better on test) and
    # qr-mul float32 (not hash int8, better on test).
    assert best[0].startswith(
        '* 0.05 of the full table: best pyg-cerp **cerp int8** (valid '
        '0.0700) test 0.0650 ± 0.0071 (2), 65.0% of full; best baseline '
        'qr-mul float32 (valid 0.0500) test 0.0500')
    assert '; pyg-cerp +0.0150 (+30.0%)' in best[0]
    assert ('seed spread: pyg-cerp ± 0.0071 over 2 seeds, 0.0600-0.0700, '
            'baseline 1 seed') in best[0]
    # A budget with CERP only, and the infeasible row with its note.
    assert ('* 0.01 of the full table: best pyg-cerp **cerp float32** '
            '(valid 0.0300) test 0.0310, 31.0% of full; no baseline row at '
            'this budget (infeasible: qr-mul int8)\n') in text
    assert ('| 0.01 | 40 | qr-mul | int8 | 0 | infeasible: QR needs 64 '
            'rows |') in text
    # The parameter-budget sections are not there.
    assert 'overlap (independent' not in text
    assert converged_report.is_bytes([dict.fromkeys(BYTES_COLS)])
    assert not converged_report.is_bytes([dict.fromkeys(COLS)])


def test_bytes_report_rejects_rows_above_budget(tmp_path):
    rows = list(BYTES_ROWS)
    rows[7] = rows[7][:7] + (201, ) + rows[7][8:]  # hash int8: 201 > 200
    path = tmp_path / 'x_lightgcn_bytes.csv'
    _write_bytes(path, rows)
    with open(path, newline='') as f:
        data = list(csv.DictReader(f))
    with pytest.raises(ValueError, match=r'hash 0.05 int8 seed 0: 201 > 200'):
        converged_report.bytes_report(data, 'x')
    with pytest.raises(SystemExit):
        converged_report.main([str(path), '--no-plot'])
    assert not (tmp_path / 'x_lightgcn_bytes.md').exists()


def test_bytes_plot_labels_precisions(tmp_path, monkeypatch):
    import bench_results
    seen = {}
    monkeypatch.setattr(bench_results, 'write_plot',
                        lambda rows, path, title: seen.update(rows=rows))
    path = tmp_path / 'x_lightgcn_bytes.csv'
    _write_bytes(path, BYTES_ROWS)
    with open(path, newline='') as f:
        converged_report.plot(list(csv.DictReader(f)), 'p.png', 't')
    labels = {r['method'] for r in seen['rows']}
    assert labels == {'full', 'full int8', 'cerp int8', 'cerp float32',
                      'cerp-noreg float32', 'qr-mul float32', 'hash int8'}


def test_bytes_report_counts_distilled_cells_as_configurations(tmp_path):
    path, extra = tmp_path / 'x_lightgcn_bytes.csv', tmp_path / 'd.csv'
    _write_bytes(path, BYTES_ROWS)
    # Distilled qr-mul float32 beats every pyg-cerp cell on validation.
    _write_bytes(extra, [('qr-mul', 0.05, 200, 'float32', 0, '', 50, 200, 10,
                          8, 0.080, 0.1, 0.068, 0.3, '')])
    text = open(converged_report.main([str(path), '--add', str(extra),
                                       '--no-plot'])).read()
    assert ('| 0.05 | 200 | qr-mul | float32 | 0.0800 | 0.0680 | 68.0 |'
            in text)
    best = [line for line in text.splitlines()
            if line.startswith('* 0.05 of the full table')]
    assert best[0].startswith(
        '* 0.05 of the full table: best pyg-cerp **cerp int8** (valid '
        '0.0700) test 0.0650 ± 0.0071 (2), 65.0% of full; best baseline '
        'qr-mul float32 + distillation (valid 0.0800) test 0.0680; '
        'pyg-cerp -0.0030 (-4.4%)')
    # The undistilled comparison is the one without the extra CSV.
    assert ('  * without distillation: best pyg-cerp **cerp int8** (valid '
            '0.0700) test 0.0650 ± 0.0071 (2), 65.0% of full; best baseline '
            'qr-mul float32 (valid 0.0500) test 0.0500; pyg-cerp +0.0150 '
            '(+30.0%)') in text
    # A budget without distilled cells has one line.
    assert 'without distillation' not in text.split('* 0.01 of')[1]
    # Parameter-budget rows do not mix with byte-budget rows.
    conv = tmp_path / 'c.csv'
    with open(conv, 'w', newline='') as f:
        w = csv.DictWriter(f, COLS)
        w.writeheader()
        w.writerow(dict.fromkeys(COLS, '1'))
    with pytest.raises(SystemExit):
        converged_report.main([str(path), '--add', str(conv), '--no-plot'])


def test_bytes_report_keeps_bucket_ratios_apart(tmp_path):
    # The same method, precision and distillation at two bucket sizes (two
    # bucket ratios, one seed each) are two configurations, not two seeds.
    rows = BYTES_ROWS + [
        ('cerp-noreg', 0.01, 40, 'int4', 1, 12, 30, 40, 10, 8, 0.050, 0.1,
         0.055, 0.3, ''),
        ('cerp-noreg', 0.01, 40, 'int4', 1, 9, 36, 40, 10, 8, 0.060, 0.1,
         0.064, 0.3, '')]
    path = tmp_path / 'x_lightgcn_bytes.csv'
    _write_bytes(path, rows)
    text = open(converged_report.main([str(path), '--no-plot'])).read()
    assert ('| 0.01 | 40 | cerp-noreg | int4 | 0.0600 | 0.0640 | 64.0 | '
            '0.1000 | 40 | 9 |') in text
    assert ('| 0.01 | 40 | cerp-noreg | int4 | 0.0500 | 0.0550 | 55.0 | '
            '0.1000 | 40 | 12 |') in text
    assert '(2)' not in text.split('| 0.01 |', 1)[1].split('##')[0]
    assert ('* 0.01 of the full table: best pyg-cerp **cerp-noreg int4 + '
            'distillation, b 9** (valid 0.0600) test 0.0640') in text
    # One line per configuration in the plot, named by its b.
    with open(path, newline='') as f:
        data = list(csv.DictReader(f))
    labels = converged_report._labels(map(converged_report._bytes_key, data))
    assert sorted(v for v in labels.values() if 'int4' in v) == [
        'cerp-noreg int4 + distillation, b 12',
        'cerp-noreg int4 + distillation, b 9']
    # A label without a twin at its budget has no b.
    assert 'cerp int8' in labels.values()
