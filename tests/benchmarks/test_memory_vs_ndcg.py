import csv
import importlib.util
import os.path as osp
import random
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))
import bench_jobs  # noqa: E402
import bench_pipeline  # noqa: E402
import bench_results  # noqa: E402


def load_harness():
    path = osp.join(ROOT, 'benchmarks', 'memory_vs_ndcg.py')
    spec = importlib.util.spec_from_file_location('memory_vs_ndcg', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = load_harness()

REQUIRED = ['method', 'budget', 'nonzero_params', 'bytes', 'recall@10',
            'ndcg@10', 'recall@20', 'ndcg@20', 'epochs', 'seconds', 'seed',
            'overlap_rate']


def write_split(folder, num_users=30, num_items=40, seed=0):
    raw = folder / 'raw'
    raw.mkdir(parents=True)
    rng = random.Random(seed)
    with open(raw / 'train.txt', 'w') as f, open(raw / 'test.txt', 'w') as g:
        for u in range(num_users):
            items = rng.sample(range(num_items), 8)
            f.write(' '.join(map(str, [u] + items[:6])) + '\n')
            g.write(' '.join(map(str, [u] + items[6:])) + '\n')
    return folder


def test_end_to_end_tiny(tmp_path):
    pytest.importorskip('pyg_cerp.train')
    data = write_split(tmp_path / 'syn')
    out = tmp_path / 'out'
    argv = ['--dataset', str(data), '--out', str(out), '--quick',
            '--backbone', 'both', '--methods', 'full,cerp,cerp-noreg,pep,qr,hash',
            '--budgets', '0.5,0.3', '--prune-epochs', '4',
            '--retrain-epochs', '1', '--batch-size', '32', '--eval-users',
            '20', '--dim', '8', '--bucket-size', '20', '--threshold-init',
            '-3', '--threshold-lr', '0.5', '--fresh']
    outputs = harness.main(argv)
    assert len(outputs) == 6
    for backbone in ('lightgcn', 'mlp'):
        path = out / f'syn_{backbone}.csv'
        with open(path) as f:
            rows = list(csv.DictReader(f))
        assert set(REQUIRED) <= set(rows[0])
        methods = {r['method'] for r in rows}
        assert methods == {'full', 'cerp', 'cerp-noreg', 'pep', 'qr', 'hash'}
        done = [r for r in rows if r['ndcg@20']]
        assert {'full', 'qr', 'hash'} <= {r['method'] for r in done}
        for r in done:
            assert 0 <= float(r['ndcg@20']) <= 1
            assert int(r['bytes']) > 0
            assert int(r['eval_users']) == 20
            if r['method'] != 'full':
                # Fixed methods fit the budget; pruned ones met the target.
                assert float(r['full_table_fraction']) <= \
                    float(r['budget']) + 1e-9
        for r in done:
            if r['method'].startswith('cerp'):
                assert r['overlap_rate'] != ''
        assert (out / f'syn_{backbone}.png').stat().st_size > 1000
        md = (out / f'syn_{backbone}.md').read_text()
        assert 'Best method per budget' in md and 'Hash balance' in md

    # A second call resumes: nothing left to run, the files are rewritten.
    before = (out / 'syn_mlp.csv').read_text()
    harness.main([a for a in argv if a != '--fresh'])
    assert (out / 'syn_mlp.csv').read_text() == before


def test_make_jobs_and_schedules():
    jobs = bench_jobs.make_jobs(['cerp', 'qr', 'full'], [0.05, 0.1], [0, 1])
    labels = [j.label for j in jobs]
    assert labels[:4] == ['full@1 seed 0', 'qr@0.1 seed 0', 'qr@0.05 seed 0',
                          'cerp@0.1,0.05 seed 0']
    assert len(jobs) == 8
    jobs = bench_jobs.make_jobs(['cerp'], [0.05], [0], ['halve1', 'const'])
    assert [j.gamma_schedule for j in jobs] == ['halve1', 'const']


def test_eval_subset_is_fixed_and_keeps_whole_users():
    test = torch.tensor([[0, 0, 1, 2, 2, 2, 3], [1, 2, 3, 4, 5, 6, 7]])
    sub = harness.eval_subset(test, 4, 2, seed=0)
    users = torch.unique(sub[0])
    assert users.numel() == 2
    for u in users.tolist():
        assert int((sub[0] == u).sum()) == int((test[0] == u).sum())
    assert torch.equal(sub, harness.eval_subset(test, 4, 2, seed=0))
    assert torch.equal(harness.eval_subset(test, 4, 0), test)


def test_pep_threshold_matches_cerp_scale():
    import math
    s = bench_pipeline.pep_threshold_init(70839, 64, 5000, -6.)
    ratio = (1 / (1 + math.exp(-s))) / (1 / (1 + math.exp(6.)))
    assert ratio == pytest.approx(math.sqrt(5064 / 70903), rel=1e-6)


def test_chunked_score_function():
    calls = []

    def score_all(users, item_batch_size):
        calls.append(users.numel())
        assert item_batch_size == 7
        return users.float().unsqueeze(1).repeat(1, 3)

    f = harness.chunked_score_function(score_all, 4, 7)
    out = f(torch.arange(10))
    assert out.shape == (10, 3) and calls == [4, 4, 2]
    assert torch.equal(out[:, 0], torch.arange(10).float())


def test_markdown_and_plot_from_rows(tmp_path):
    rows = []
    for method, budget, ndcg, nbytes in [
        ('full', 1.0, 0.15, 1e7), ('cerp', 0.1, 0.14, 1e6),
        ('cerp', 0.05, 0.12, 5e5), ('qr', 0.1, 0.145, 1e6),
        ('qr', 0.05, 0.11, 5e5)
    ]:
        for seed, eps in ((0, 0.), (1, 0.002)):
            rows.append({c: '' for c in bench_results.COLUMNS} | dict(
                method=method, budget=str(budget), seed=str(seed),
                reached='True', nonzero_params='10', bytes=str(nbytes),
                full_table_fraction=str(budget), epochs='2', seconds='1',
                **{'ndcg@20': str(ndcg + eps), 'recall@20': '0.2',
                   'ndcg@10': '0.1', 'recall@10': '0.1'}))
    md = tmp_path / 'r.md'
    bench_results.write_markdown(rows, str(md), 'title')
    text = md.read_text()
    assert 'budget 0.1: best **qr** (0.1460); CERP 0.1410 is 0.0050 below' \
        in text
    assert 'budget 0.05: best **cerp**' in text
    assert '## Seed spread' in text and '0.0020' in text
    png = tmp_path / 'r.png'
    bench_results.write_plot(rows, str(png), 'title')
    assert png.stat().st_size > 1000


def test_bad_arguments():
    with pytest.raises(SystemExit):
        harness.parse_args(['--methods', 'cerp,foo'])
    with pytest.raises(SystemExit):
        harness.parse_args(['--budgets', '1.5'])
    with pytest.raises(SystemExit):
        harness.parse_args(['--methods', 'qr', '--gamma-schedules', 'const'])
    # merge.py reads the tag back from the file name: no '_' in it.
    with pytest.raises(SystemExit):
        harness.parse_args(['--tag', 'c1i_s1'])
    assert harness.parse_args(['--tag', 'c1i-s1']).tag == 'c1i-s1'
    args = harness.parse_args(['--quick', '--retrain-epochs', '5'])
    assert args.profile_obj.retrain_epochs == 5
    assert args.profile_obj.name == 'quick*'


def test_resolve_hyper_precedence_and_threshold_scaling():
    from types import SimpleNamespace
    defaults = SimpleNamespace(dim=64, bucket_size=5000, threshold_init=-6.,
                               gamma_init=1., lr=5e-3, threshold_lr=2e-2,
                               batch_size=16384, num_negatives=5,
                               prune_epochs=8)
    args = harness.parse_args(['--quick', '--gamma', '0.1'])
    hyper = bench_jobs.resolve_hyper(args, args.profile_obj, defaults)
    assert hyper['gamma_init'] == 0.1 and hyper['dim'] == 64
    # The quick profile prunes for 3 epochs of batch 32768 instead of 8 of
    # 16384: 16/3 times fewer steps, so 16/3 times the threshold lr.
    assert args.profile_obj.prune_epochs == 3
    assert hyper['batch_size'] == 32768
    assert hyper['threshold_lr'] == pytest.approx(2e-2 * (8 / 16384) /
                                                  (3 / 32768))
    args = harness.parse_args(['--quick', '--threshold-lr', '0.03'])
    assert bench_jobs.resolve_hyper(args, args.profile_obj,
                                    defaults)['threshold_lr'] == 0.03


CONVERGED = ['method', 'budget', 'seed', 'bucket_size', 'nonzero_params',
             'bytes', 'epochs', 'recall@20', 'ndcg@20', 'overlap_rate',
             'overlap_independent']


def test_converged_profile_resumes_cell_by_cell(tmp_path):
    data = write_split(tmp_path / 'syn')
    out = tmp_path / 'out'
    argv = ['--profile', 'converged', '--dataset', str(data), '--out',
            str(out), '--backbone', 'lightgcn', '--methods', 'full,cerp',
            '--budgets', '0.5', '--max-epochs', '3', '--patience', '1',
            '--batch-size', '32', '--dim', '8', '--prune-epochs', '6',
            '--prune-speed', '30']
    (path, ) = harness.main(argv)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert set(CONVERGED) <= set(rows[0])
    assert [(r['method'], float(r['budget'])) for r in rows] == \
        [('full', 1.0), ('cerp', 0.5)]
    full, cerp = rows
    assert full['overlap_rate'] == '' and full['bucket_size'] == ''
    assert 1 <= int(cerp['epochs']) <= 3
    assert float(cerp['full_table_fraction']) <= 0.5 + 0.02
    assert cerp['overlap_rate'] != '' and cerp['overlap_independent'] != ''
    # b was chosen among >= 3 candidates, on validation.
    sweep = dict(x.split(':') for x in cerp['bucket_sweep'].split(';'))
    assert len(sweep) >= 3 and cerp['bucket_size'] in sweep
    assert float(sweep[cerp['bucket_size']]) == pytest.approx(
        max(map(float, sweep.values())))
    assert float(cerp['valid_ndcg@20']) == pytest.approx(
        float(sweep[cerp['bucket_size']]), abs=1e-5)
    # A restart skips finished cells; a new cell is appended once.
    before = open(path).read()
    harness.main(argv)
    assert open(path).read() == before
    harness.main([a if a != 'full,cerp' else 'full,hash' for a in argv])
    with open(path) as f:
        rows = list(csv.DictReader(f))
    keys = [(r['method'], r['budget'], r['seed']) for r in rows]
    assert len(keys) == len(set(keys)) == 3
    assert rows[-1]['method'] == 'hash'


def test_converged_profile_rejects_old_method_names(tmp_path):
    with pytest.raises(SystemExit):
        harness.parse_args(['--profile', 'converged', '--methods', 'qr'])
    with pytest.raises(SystemExit):
        harness.parse_args(['--quick', '--methods', 'magnitude'])


def test_csvlog_adds_new_columns_to_an_older_file(tmp_path):
    # A resumed run with more columns must not write its rows under the
    # older file's headers: the file gains the columns, old rows stay.
    path = str(tmp_path / 'c.csv')
    bench_results.CSVLog(path, columns=['method', 'ndcg@20']).append(
        [dict(method='full', **{'ndcg@20': 0.14})])
    log = bench_results.CSVLog(path, columns=['method', 'seed', 'ndcg@20',
                                              'distill'])
    assert log.columns == ['method', 'ndcg@20', 'seed', 'distill']
    log.append([dict(method='cerp', seed=0, distill=0.3,
                     **{'ndcg@20': 0.09})])
    rows = log.rows()
    assert rows[0] == {'method': 'full', 'ndcg@20': '0.14', 'seed': '',
                       'distill': ''}
    assert rows[1] == {'method': 'cerp', 'ndcg@20': '0.09', 'seed': '0',
                       'distill': '0.3'}


BYTES = ['method', 'budget_bytes', 'precision', 'bucket_size',
         'nonzero_params', 'bytes', 'epochs', 'recall@20', 'ndcg@20',
         'distill', 'valid_ndcg@20', 'seed', 'overlap_rate', 'commit',
         'embedding_dim', 'note']


def test_converged_profile_with_byte_budgets(tmp_path):
    from pyg_cerp.memory import DTYPES
    from pyg_cerp.planner import load_table
    data = write_split(tmp_path / 'syn')  # N = 70, d = 8: 2240 bytes.
    out = tmp_path / 'out'
    argv = ['--profile', 'converged', '--dataset', str(data), '--out',
            str(out), '--backbone', 'lightgcn', '--budget-unit', 'bytes',
            '--precisions', 'float32,int8', '--budgets', '0.3,0.005',
            '--max-epochs', '2', '--patience', '1', '--batch-size', '32',
            '--dim', '8', '--prune-epochs', '10', '--prune-speed', '30',
            '--tag', 't']
    (path, ) = harness.main(argv)
    assert osp.basename(path) == 'syn_lightgcn_bytes_t.csv'
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert set(BYTES) <= set(rows[0])
    methods = bench_jobs.CONVERGED_METHODS
    # One row per (method, budget, precision, seed); 'full' at budget 1.
    keys = [(r['method'], float(r['budget']), r['precision'], r['seed'])
            for r in rows]
    assert len(keys) == len(set(keys)) == 2 * (1 + 2 * (len(methods) - 1))
    for r in rows:
        assert int(r['budget_bytes']) == int(float(r['budget']) * 2240)
        assert r['precision'] in DTYPES
        if r['note']:  # No model: no bytes.
            assert r['bytes'] == '' and r['ndcg@20'] == ''
            continue
        assert int(r['bytes']) <= int(r['budget_bytes'])
        assert r['distill'] == '0.0' and r['embedding_dim'] == '8'
        assert 0 <= float(r['ndcg@20']) <= 1 and int(r['epochs']) >= 1
    by = {(r['method'], float(r['budget']), r['precision']): r for r in rows}
    # Every method meets 30% of the bytes at both precisions.
    for m in methods:
        for p in ('float32', 'int8'):
            r = by[(m, 1.0 if m == 'full' else 0.3, p)]
            assert r['note'] == '' and r['bytes'] != '', (m, p, r['note'])
    # int8 stores a byte a value (+ a float32 scale a row): the full table
    # takes 70 * (8 + 4) bytes; hashing buys 56 rows instead of 21.
    assert int(by[('full', 1.0, 'int8')]['bytes']) == 70 * 12
    assert int(by[('full', 1.0, 'float32')]['bytes']) == 2240
    assert int(by[('hash', 0.3, 'int8')]['nonzero_params']) > 2 * int(
        by[('hash', 0.3, 'float32')]['nonzero_params'])
    # 0.5% (11 bytes) is below every method: each says why in its note.
    for m in methods[1:]:
        for p in ('float32', 'int8'):
            assert by[(m, 0.005, p)]['note'].startswith('infeasible'), m
    # The budget planner reads the file (rows with a model only).
    table = load_table(path)
    assert {(r.method, r.precision) for r in table} == {
        (m, p) for m in ('cerp', 'cerp-noreg', 'cerp-ft', 'cerp-mul')
        for p in ('float32', 'int8')}
    # A restart skips finished cells; a new precision appends its cells.
    before = open(path).read()
    harness.main(argv)
    assert open(path).read() == before
    harness.main([a if a != 'float32,int8' else 'int8,float16'
                  for a in argv[:-2]] + ['--methods', 'full,hash', '--tag',
                                         't'])
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert open(path).read().startswith(before)
    new = rows[len(keys):]
    assert sorted((r['method'], r['precision'], r['budget']) for r in new) \
        == [('full', 'float16', '1.0'), ('hash', 'float16', '0.005'),
            ('hash', 'float16', '0.3')]
    assert 0 < int(new[0]['bytes']) <= int(new[0]['budget_bytes'])


def test_byte_budget_arguments():
    with pytest.raises(SystemExit):  # A value budget has no precision.
        harness.parse_args(['--profile', 'converged', '--precisions',
                            'int8'])
    with pytest.raises(SystemExit):
        harness.parse_args(['--profile', 'converged', '--budget-unit',
                            'bytes', '--precisions', 'int2'])
    with pytest.raises(SystemExit):
        harness.parse_args(['--profile', 'converged', '--budget-unit',
                            'bytes', '--precisions', 'int8,int8'])
    with pytest.raises(SystemExit):
        harness.parse_args(['--quick', '--budget-unit', 'bytes'])
    args = harness.parse_args(['--profile', 'converged', '--budget-unit',
                               'bytes', '--precisions', 'float32,int8'])
    assert args.precisions == ['float32', 'int8']
    assert harness.parse_args(['--profile', 'converged']).budget_unit == \
        'full'
