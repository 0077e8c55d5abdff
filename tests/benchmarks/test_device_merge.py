r"""benchmarks/device/merge.py: tagged CSVs of a device run folded into the
main ones, converged and byte-budget CSVs alike."""
import os
import sys

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, '..', '..', 'benchmarks', 'device'))
import merge  # noqa: E402
from bench_results import (BYTES_COLUMNS, CONVERGED_COLUMNS,  # noqa: E402
                           CSVLog)


def _row(method, budget, seed, ndcg, **extra):
    return dict(dataset='x', backbone='lightgcn', method=method,
                budget=budget, seed=seed, **{'ndcg@20': ndcg}, **extra)


def test_merge_folds_bytes_and_converged_csvs(tmp_path):
    run, out = tmp_path / 'run', tmp_path / 'out'
    run.mkdir()
    out.mkdir()
    # Main bytes CSV: cerp 0.05 int8 seed 0 is already there.
    CSVLog(str(out / 'x_lightgcn_bytes.csv'), columns=BYTES_COLUMNS).append(
        [_row('cerp', 0.05, 0, 0.07, precision='int8', budget_bytes=200)])
    CSVLog(str(run / 'x_lightgcn_bytes_c5.csv'),
           columns=BYTES_COLUMNS).append([
               _row('cerp', 0.05, 0, 0.08, precision='int8'),  # there
               _row('cerp', 0.05, 0, 0.06, precision='float32'),  # new
               _row('qr-mul', 0.005, 0, '', precision='int8',
                    note='infeasible: QR'),
           ])
    with open(run / 'x_lightgcn_bytes_c5.log', 'w') as f:
        f.write('bytes log\n')
    CSVLog(str(run / 'x_lightgcn_converged_s1.csv'),
           columns=CONVERGED_COLUMNS).append([_row('cerp', 0.05, 1, 0.05)])
    # A CSV whose name merge cannot parse is said, not dropped silently.
    CSVLog(str(run / 'x_lightgcn_bytes_c1_s1.csv'),
           columns=BYTES_COLUMNS).append([_row('cerp', 0.01, 1, 0.08)])
    lines = merge.merge(str(run), str(out), 'H200')
    assert ("x_lightgcn_bytes ('cerp', 0.05, 'int8', 0): already there, "
            'skipped') in lines
    assert "x_lightgcn_bytes ('cerp', 0.05, 'float32', 0): ndcg@20 0.06" \
        in lines
    assert ("x_lightgcn_bytes ('qr-mul', 0.005, 'int8', 0): no model "
            '(infeasible: QR)') in lines
    assert "x_lightgcn_converged ('cerp', 0.05, 1): ndcg@20 0.05" in lines
    assert any(x.startswith('x_lightgcn_bytes_c1_s1.csv: not a tagged')
               for x in lines)
    rows = CSVLog(str(out / 'x_lightgcn_bytes.csv'),
                  columns=BYTES_COLUMNS).rows()
    assert [(r['method'], r['precision'], r['ndcg@20'], r['note'])
            for r in rows] == [
        ('cerp', 'int8', '0.07', ''), ('cerp', 'float32', '0.06', 'H200'),
        ('qr-mul', 'int8', '', 'infeasible: QR; H200')]
    with open(out / 'x_lightgcn_bytes.csv') as f:
        assert f.readline().strip() == ','.join(BYTES_COLUMNS)
    assert 'bytes log' in open(out / 'x_lightgcn_bytes.log').read()
    assert (out / 'x_lightgcn_converged.csv').exists()
    assert not (out / 'x_lightgcn_bytes_c5.csv').exists()
    # A second merge adds nothing.
    assert all('skipped' in x or 'not merged' in x
               for x in merge.merge(str(run), str(out), 'H200'))
