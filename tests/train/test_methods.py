import pytest
import torch

from pyg_cerp.nn import CompositionalEmbedding
from pyg_cerp.nn.baselines import (FullEmbedding, HashEmbedding,
                                   PEPEmbedding, QREmbedding)
from pyg_cerp.train import METHODS, EarlyStopping, build_embedding, get_method
from pyg_cerp.memory import memory_report
from pyg_cerp.planner import full_table_nbytes, plan_budget
from pyg_cerp.train.methods import (bucket_candidates, budget_nbytes,
                                    bytes_infeasible)


def test_method_registry_and_budgets():
    assert list(METHODS) == ['full', 'cerp', 'cerp-noreg', 'cerp-ft',
                             'cerp-mul', 'pep', 'qr-mul', 'qr-add', 'hash',
                             'magnitude', 'cerp-mul-hybrid', 'qr-mul-hybrid']
    assert [m.name for m in METHODS.values() if m.compositional] == [
        'cerp', 'cerp-noreg', 'cerp-ft', 'cerp-mul', 'cerp-mul-hybrid']
    assert [m.base for m in METHODS.values() if m.base] == ['cerp-mul',
                                                           'qr-mul']
    assert not METHODS['cerp-ft'].rewind and METHODS['cerp'].rewind
    assert METHODS['cerp-ft'].regularized
    n, d = 2000, 8
    for name, cls in [('full', FullEmbedding), ('magnitude', FullEmbedding),
                      ('pep', PEPEmbedding), ('hash', HashEmbedding),
                      ('qr-mul', QREmbedding), ('qr-add', QREmbedding)]:
        emb = build_embedding(name, n, d, 0.1)
        assert type(emb) is cls
        if name in ('hash', 'qr-mul', 'qr-add'):
            assert emb.num_nonzero() <= 0.1 * n * d
    assert build_embedding('qr-mul', n, d, 0.1).operation == 'mul'
    assert build_embedding('qr-add', n, d, 0.1).operation == 'add'
    emb = build_embedding('cerp', n, d, 0.1, bucket_size=100)
    assert isinstance(emb, CompositionalEmbedding) and emb.bucket_size == 100
    assert emb.operation == 'add'
    assert build_embedding('cerp-mul', n, d, 0.1,
                           bucket_size=100).operation == 'mul'
    assert not get_method('cerp-mul').regularized
    assert get_method('cerp').regularized
    assert not get_method('cerp-noreg').regularized
    with pytest.raises(ValueError, match='bucket_size'):
        build_embedding('cerp', n, d, 0.1)
    with pytest.raises(ValueError, match='Unknown method'):
        get_method('qr')
    with pytest.raises(ValueError, match='QREmbedding'):
        build_embedding('qr-mul', n, d, 0.01)  # Needs ~2 sqrt(N) rows.
    assert bucket_candidates(1000, 0.05) == [38, 50, 100]


def test_byte_budgets_size_every_method_at_its_precision():
    n, d = 2000, 8
    full = full_table_nbytes(n, d)
    assert budget_nbytes(n, d, 0.05) == 3200 == full // 20
    with pytest.raises(ValueError, match='budget'):
        budget_nbytes(n, d, 1.5)
    for precision in ('float32', 'int8', 'int4'):
        for name in ('qr-mul', 'qr-add', 'hash'):
            emb = build_embedding(name, n, d, 0.05, precision=precision,
                                  budget_unit='bytes')
            assert emb.precision == precision
            assert memory_report(emb).nbytes <= 3200
        for name in ('full', 'magnitude', 'pep'):
            emb = build_embedding(name, n, d, 0.05, precision=precision,
                                  budget_unit='bytes')
            assert emb.precision == precision
    # int8 rows are 12 bytes instead of 32: the same bytes buy more rows.
    assert build_embedding('hash', n, d, 0.05, precision='int8',
                           budget_unit='bytes').num_buckets == 3200 // 12
    assert build_embedding('hash', n, d, 0.05, budget_unit='bytes'
                           ).num_buckets == 100
    # int4 rows: 4 bytes of values and a 4-byte scale.
    assert build_embedding('hash', n, d, 0.05, precision='int4',
                           budget_unit='bytes').num_buckets == 3200 // 8
    # QR needs ~2 sqrt(N) = 90 rows: 3200 bytes buy 100 float32 rows.
    with pytest.raises(ValueError, match='QREmbedding'):
        build_embedding('qr-mul', n, d, 0.02, budget_unit='bytes')
    build_embedding('qr-mul', n, d, 0.02, precision='int8',
                    budget_unit='bytes')
    with pytest.raises(ValueError, match='budget_unit'):
        build_embedding('hash', n, d, 0.05, budget_unit='values')
    with pytest.raises(ValueError, match='precision'):
        build_embedding('hash', n, d, 0.05, precision='int2')
    emb = build_embedding('cerp', n, d, 0.05, bucket_size=50,
                          precision='int8', budget_unit='bytes')
    assert emb.precision == 'int8'
    # b for a byte budget: the planner's, per ratio; int8 keeps about four
    # times the values, so its b are larger.
    b32 = bucket_candidates(n, 0.05, (1.5, 2., 4.), 'bytes', d)
    b8 = bucket_candidates(n, 0.05, (1.5, 2., 4.), 'bytes', d, 'int8')
    assert b32 == sorted(plan_budget(n, d, 3200, precisions=('float32', ),
                                     bucket_ratio=r).bucket_size
                         for r in (1.5, 2., 4.))
    assert len(b32) == 3 and all(b > b_ for b, b_ in zip(b8, b32))
    assert b8[0] > 2 * b32[0]
    with pytest.raises(ValueError, match='dim'):
        bucket_candidates(n, 0.05, budget_unit='bytes')
    # The value budgets are unchanged.
    assert bucket_candidates(1000, 0.05, budget_unit='full') == [38, 50, 100]


def test_a_pruned_table_whose_index_alone_exceeds_the_budget_is_infeasible():
    # PEP over 2000 x 8 int8: the bitmap (2000 bytes) and the row scales
    # (8000 bytes) come before any value.
    pep = PEPEmbedding(2000, 8, precision='int8')
    note = bytes_infeasible(pep, 3200)
    assert note.startswith('infeasible: the stored form of PEPEmbedding at '
                           'int8 takes 10000 bytes with no value kept')
    assert note.endswith('allows 3200 bytes')
    assert bytes_infeasible(pep, 64000) == ''
    assert bytes_infeasible(PEPEmbedding(2000, 8), 3200) == ''  # CSR, fp32


def _byte_runner(**kwargs):
    import os
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    from test_distill import _runner
    return _runner(prune_epochs=10, bucket_ratios=(2., 4.), **kwargs)


def test_converged_runner_trains_every_method_to_a_byte_budget():
    # N = 140, d = 8: the full float32 table takes 4480 bytes.
    runner = _byte_runner(budget_unit='bytes')
    assert runner.budget_nbytes(0.3) == 1344
    feasible = set()
    for precision in ('float32', 'int8'):
        for method in METHODS:
            for budget in ((1., ) if method == 'full' else (0.3, 0.1)):
                out = runner.run(method, budget, 0, precision=precision)
                assert out['precision'] == precision
                assert out['budget_bytes'] == int(budget * 4480)
                if 'recommender' not in out:
                    assert out['note'].startswith(('infeasible',
                                                   'target')), out
                    continue
                feasible.add((method, budget, precision))
                emb = out['recommender'].embedding
                assert emb.precision == precision  # Trained at it.
                report = memory_report(emb)
                assert out['bytes'] == report.nbytes <= out['budget_bytes']
                assert 0. <= out['ndcg@20'] <= 1.
                if method.startswith('cerp'):
                    assert out['bucket_size'] in out['bucket_sweep']
                    assert len(out['bucket_sweep']) == 2
    # Every method meets 30% of the bytes at both precisions (a hybrid's
    # QR at float32 not: its 120 other entities need 704 of 686 bytes).
    assert ('qr-mul-hybrid', 0.3, 'float32') not in feasible
    for method in METHODS:
        if method != 'full':
            want = {(method, 0.3, p) for p in ('float32', 'int8')
                    if (method, p) != ('qr-mul-hybrid', 'float32')}
            assert want <= feasible, method
    # At 10% (448 bytes): QR needs 24 rows of 32 float32 bytes, and a
    # pruned full table at int8 stores a 4-byte scale and a 1-byte bitmap
    # per row (700 bytes) with no value kept.
    assert ('qr-mul', 0.1, 'int8') in feasible
    assert ('qr-mul', 0.1, 'float32') not in feasible
    assert ('pep', 0.1, 'float32') in feasible
    assert ('magnitude', 0.1, 'float32') in feasible
    out = runner.run('magnitude', 0.1, 0, precision='int8')
    assert 'recommender' not in out and out['note'].startswith('infeasible')
    assert '700 bytes' in out['note'] and '448 bytes' in out['note']
    assert ('pep', 0.1, 'int8') not in feasible
    assert ('cerp', 0.1, 'int8') in feasible
    # The full table of each precision is trained once and reused.
    assert {(0, 'float32'), (0, 'int8')} <= set(runner._full)
    with pytest.raises(ValueError, match='budget_unit'):
        _byte_runner(budget_unit='values')


def test_full_tables_are_cached_on_disk_and_tied_to_their_data(
        tmp_path, monkeypatch):
    from pyg_cerp.train import ConvergedRunner, Split
    from pyg_cerp.train.checkpoint import ResumeError
    from pyg_cerp.utils.io import CheckpointError
    cache = str(tmp_path / 'full')
    first = _byte_runner(cache=cache)
    state, res = first.full_model(0)
    # The fit's progress file is dropped once the full table is stored.
    (path, ) = (tmp_path / 'full').iterdir()
    assert path.name.startswith('full_seed0_float32_')

    # Another runner loads it instead of training, bit for bit; the
    # magnitude cell then runs from it.
    second = _byte_runner(cache=cache)
    monkeypatch.setattr(ConvergedRunner, '_fit', lambda *a, **k: 1 / 0)
    loaded, loaded_res = second.full_model(0)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert loaded_res == res
    monkeypatch.undo()
    out = second.run('magnitude', 0.3, 0)
    assert out['ndcg@20'] == first.run('magnitude', 0.3, 0)['ndcg@20']

    # Another stopping rule or precision is another file.
    other = _byte_runner(cache=cache)
    other.stopping = EarlyStopping(max_epochs=1, patience=1)
    other.full_model(0)
    _byte_runner(cache=cache, budget_unit='bytes').full_model(0, 'int8')
    full = [p for p in (tmp_path / 'full').iterdir()
            if p.name.startswith('full_')]
    assert len(full) == 3

    # Other training pairs under the same name: refused, file kept.
    runner = _byte_runner(cache=cache)
    s = runner.split
    runner.split = Split(s.train[:, 1:], s.valid, s.test, s.num_users,
                         s.num_items)
    with pytest.raises(ResumeError, match='other data'):
        runner.full_model(0)
    # A flipped byte: refused, not silently retrained over.
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError):
        _byte_runner(cache=cache).full_model(0)
    assert path.read_bytes() == bytes(raw)


def _counting(runner, interrupt_at=None):
    # Counts the runner's validations; the one numbered `interrupt_at`
    # raises KeyboardInterrupt (a kill).
    validate, calls = runner.validate, []

    def counted(model):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return validate(model)

    runner.validate = counted
    return calls


def test_a_killed_cell_resumes_from_the_cache(tmp_path):
    # CERP with two bucket sizes: two fits of 3 epochs, 4 validations each.
    def runner(**kwargs):
        out = _byte_runner(**kwargs)
        out.stopping = EarlyStopping(max_epochs=3, patience=3)
        return out

    whole = runner()
    whole_calls = _counting(whole)
    expected = whole.run('cerp', 0.3, 0)
    assert len(whole_calls) == 8
    cache = str(tmp_path / 'cache')
    killed = runner(cache=cache)
    _counting(killed, interrupt_at=7)  # In the second fit, at epoch 2.
    with pytest.raises(KeyboardInterrupt):
        killed.run('cerp', 0.3, 0)
    assert len([p for p in (tmp_path / 'cache').iterdir()
                if p.name.startswith('fit_seed0_')]) == 2
    resumed = runner(cache=cache)
    calls = _counting(resumed)
    out = resumed.run('cerp', 0.3, 0)
    assert len(calls) == 2  # The first fit is done, the second at epoch 1.
    for key in ('ndcg@20', 'recall@20', 'valid_ndcg@20', 'epochs',
                'best_epoch', 'bucket_size', 'bucket_sweep'):
        assert out[key] == expected[key], key
    assert not list((tmp_path / 'cache').iterdir())  # Done: dropped.


def test_hybrid_budget_gives_exact_rows_to_the_most_frequent_entities():
    from pyg_cerp.nn import HybridEmbedding
    from pyg_cerp.nn.hybrid import exact_nbytes
    from pyg_cerp.train.methods import hybrid_budget
    n, d = 2000, 8
    k, rest_n, f = hybrid_budget(n, d, 0.1, 0.5, 'int8')
    nbytes = budget_nbytes(n, d, 0.1)
    assert exact_nbytes(n, d, k, 'int8') <= nbytes // 2 < exact_nbytes(
        n, d, k + 1, 'int8')
    assert rest_n == n - k
    assert f * 4 * rest_n * d == pytest.approx(
        nbytes - exact_nbytes(n, d, k, 'int8'))
    emb = build_embedding('qr-mul-hybrid', n, d, 0.1, precision='int8',
                          budget_unit='bytes', exact_index=torch.arange(k))
    assert isinstance(emb, HybridEmbedding) and emb.num_exact == k
    assert memory_report(emb).nbytes <= nbytes
    with pytest.raises(ValueError, match="budget_unit='bytes'"):
        build_embedding('qr-mul-hybrid', n, d, 0.1,
                        exact_index=torch.arange(k))
    with pytest.raises(ValueError, match="exact_share"):
        hybrid_budget(n, d, 0.1, 1.)
    with pytest.raises(ValueError, match='buys no exact row'):
        hybrid_budget(n, d, 0.001, 0.01)

    runner = _byte_runner(budget_unit='bytes')
    ids = runner.exact_index(0.3, 'int8')
    train = runner.split.train
    degree = torch.cat([
        torch.bincount(train[0], minlength=runner.split.num_users),
        torch.bincount(train[1], minlength=runner.split.num_items)])
    assert ids.numel() == hybrid_budget(140, 8, 0.3, 0.5, 'int8')[0]
    others = ~torch.isin(torch.arange(140), ids)
    assert degree[ids].min() >= degree[others].max()
    out = runner.run('cerp-mul-hybrid', 0.3, 0, precision='int8')
    assert out['exact_rows'] == ids.numel()
    assert torch.equal(out['recommender'].embedding.exact_index, ids)
    assert out['bytes'] <= out['budget_bytes']
    assert runner.run('qr-mul', 0.3, 0, precision='int8')['exact_rows'] == 0


def test_hybrid_exact_rows_can_start_from_the_teacher():
    runner = _byte_runner(budget_unit='bytes', exact_init='teacher')
    model = runner._build(runner._embedding('qr-mul-hybrid', 0.3, 'int8'), 0)
    emb, teacher = model.embedding, runner.teacher(0).embedding.weight
    assert torch.equal(emb.exact.detach(), teacher[emb.exact_index])
    # Phase 1 rewinds a pruned hybrid to them for its retraining.
    _, rest, f = runner._hybrid_budget(0.3, 'int8')
    b = bucket_candidates(rest, f, (2., ), 'bytes', 8, 'int8')[0]
    pruned, _ = runner._prune(METHODS['cerp-mul-hybrid'], 0.3, 0, b, 'int8')
    emb = pruned.embedding
    assert emb.is_retraining
    assert torch.equal(emb.exact.detach(), teacher[emb.exact_index])
    # Other methods and the default start are untouched.
    plain = _byte_runner(budget_unit='bytes')
    hybrid = plain._build(plain._embedding('qr-mul-hybrid', 0.3, 'int8'), 0)
    assert not torch.equal(hybrid.embedding.exact.detach(),
                           teacher[hybrid.embedding.exact_index])
    with pytest.raises(ValueError, match="'exact_init'"):
        _byte_runner(exact_init='zeros')
