r"""Byte targets: pruning stops at the stored bytes of the precision."""
import pytest
import torch

from pyg_cerp.memory import stored_nbytes
from pyg_cerp.nn import CompactEmbedding, CompositionalEmbedding, PEPEmbedding
from pyg_cerp.train import PruningScheduler
from pyg_cerp.utils.io import atomic_save, safe_load

N, D, B = 2000, 32, 500
FULL_BYTES = 4 * N * D


def make(precision='int8', **kwargs):
    torch.manual_seed(0)
    return CompositionalEmbedding(N, D, B, threshold_init=-8.,
                                  precision=precision, **kwargs)


def prune(emb, scheduler, max_steps=400, steps_per_epoch=10):
    r"""Fits random targets while the drive raises the thresholds."""
    gen = torch.Generator().manual_seed(1)
    goal = torch.randn(emb.num_embeddings, emb.embedding_dim,
                       generator=gen) * 0.1
    opt = torch.optim.Adam(emb.parameters(), lr=0.1)
    scheduler.on_train_start()
    trace = []
    for step in range(max_steps):
        index = torch.randint(0, emb.num_embeddings, (256, ), generator=gen)
        opt.zero_grad()
        loss = (emb(index) - goal[index]).pow(2).sum(-1).mean()
        reg = scheduler.regularizer(index)
        (loss if reg is None else loss + reg).backward()
        opt.step()
        scheduler.step()
        if (step + 1) % steps_per_epoch == 0:
            scheduler.on_epoch_end()
        trace.append((scheduler.last_density, scheduler.planned_density()))
        if scheduler.done:
            break
    return trace


def byte_scheduler(emb, targets=(0.05, ), **kwargs):
    kwargs.setdefault('threshold_drive', 1e-2)
    return PruningScheduler(emb, targets, 'bytes', gamma_init=0.,
                            exact_snapshots=True, **kwargs)


def test_int8_reaches_a_5_percent_byte_target_and_exports_it(tmp_path):
    emb = make('int8')
    s = byte_scheduler(emb)
    assert s.precision == 'int8' and s.denominator == FULL_BYTES
    # ~2 * 500 * 32 int8 values (sigma(-8) prunes a few), 1000 scales and
    # 1000 bitmap rows.
    assert 31800 < emb.num_nonzero() < 32000
    assert s.density() == (emb.num_nonzero() + 4000 + 4000) / FULL_BYTES
    prune(emb, s)
    assert s.done
    snap = s.snapshots[0.05]
    target = 0.05 * FULL_BYTES
    assert 0.98 * target <= snap.nbytes <= target
    assert snap.density == snap.nbytes / FULL_BYTES
    # The snapshot's entries, retrained and exported at int8.
    s.freeze(0.05, rewind=True)
    compact = emb.to_compact()
    assert compact.dtype_name == 'int8'
    assert compact.nbytes == stored_nbytes(emb) == snap.nbytes
    assert 0.98 * target <= compact.nbytes <= target
    assert snap.full_fraction == pytest.approx(emb.num_nonzero() / (N * D))
    assert torch.equal(compact.weight, emb.weight.detach())
    # The file's payload: what pyg_cerp.memory counted.
    compact.save(tmp_path / 'emb.pt')
    loaded = CompactEmbedding.load(tmp_path / 'emb.pt')
    assert loaded.nbytes == snap.nbytes
    assert sum(t.numel() * t.element_size() for t in loaded.state_dict(
    ).values() if isinstance(t, torch.Tensor)) == snap.nbytes


def test_precisions_reach_different_densities_for_the_same_bytes():
    fractions, nbytes = {}, {}
    for precision in ('float32', 'float16', 'int8'):
        emb = make(precision)
        s = byte_scheduler(emb)
        prune(emb, s)
        snap = s.snapshots[0.05]
        fractions[precision] = snap.full_fraction
        nbytes[precision] = snap.nbytes
        s.freeze(0.05, rewind=True)  # (Refilled entries are 0 unrewound.)
        assert emb.to_compact().nbytes == snap.nbytes
    for n in nbytes.values():
        assert 0.98 * 0.05 * FULL_BYTES <= n <= 0.05 * FULL_BYTES
    # Fewer bytes per value keep more values (int8 pays 4 B a row).
    assert fractions['int8'] > fractions['float16'] > fractions['float32']
    # The same masks counted at float32 would miss the target.
    assert fractions['int8'] > 1.9 * fractions['float32']


def test_pace_plan_in_bytes():
    emb = make('float16')
    s = byte_scheduler(emb, (0.08, 0.05), threshold_drive=0.,
                       pace_epochs=3., steps_per_epoch=10, check_every=1)
    trace = prune(emb, s, max_steps=60)
    assert s.done
    followed = [(d, p) for d, p in trace if p is not None]
    assert len(followed) > 10
    # The pace holds the bytes at or below the plan (in the byte unit).
    assert all(d <= p for d, p in followed[1:])
    reached = s.snapshots[0.05]
    assert reached.step <= 31 + 1  # The plan ends after 3 epochs.
    assert 0.98 * 0.05 * FULL_BYTES <= reached.nbytes <= 0.05 * FULL_BYTES


def test_state_dict_round_trip_keeps_bytes_and_precision(tmp_path):
    emb = make('int8')
    s = byte_scheduler(emb, (0.1, 0.05))
    prune(emb, s, max_steps=400)
    atomic_save(s.state_dict(), tmp_path / 's.pt')
    state = safe_load(tmp_path / 's.pt')
    assert state['precision'] == 'int8'
    s2 = byte_scheduler(make('int8'), (0.05, 0.1))
    s2.load_state_dict(state)
    for t in (0.1, 0.05):
        assert s2.snapshots[t].nbytes == s.snapshots[t].nbytes
    with pytest.raises(ValueError, match='counted at'):
        byte_scheduler(make('float16'), (0.1, 0.05)).load_state_dict(state)
    # Counting at another precision than the module's is explicit.
    s3 = byte_scheduler(make('float32'), (0.1, 0.05), precision='int8')
    s3.load_state_dict(state)


def test_byte_targets_checked_at_construction():
    emb = make('int8')
    # All pruned, int8 still stores 1000 scales and 1000 bitmap rows: 3.1%.
    with pytest.raises(ValueError, match='cannot be reached'):
        byte_scheduler(emb, (0.1, 0.03))
    byte_scheduler(emb, (0.1, 0.035))
    with pytest.raises(ValueError, match="target_unit='bytes'"):
        PruningScheduler(emb, (0.1, ), precision='int8')
    with pytest.raises(ValueError, match="'precision'"):
        byte_scheduler(emb, precision='int2')
    with pytest.raises(ValueError, match="target_unit"):
        PruningScheduler(emb, (0.1, ), target_unit='byte')


def test_nbytes_of_masks_and_pep():
    emb = PEPEmbedding(300, 16, threshold_init=-2., precision='float16')
    s = PruningScheduler(emb, (0.2, ), 'bytes')
    assert s.nbytes() == stored_nbytes(emb, 'float16') == \
        s.nbytes(emb.masks())
    masks = emb.masks()[0].clone()
    masks[:, 8:] = False
    nnz = int(masks.sum())
    bitmap = nnz * 2 + 300 * 2
    csr = nnz * 3 + 301 * 4
    assert s.nbytes([masks]) == min(bitmap, csr)
    assert s.density() == s.nbytes() / (4 * 300 * 16)


def test_repr_and_outcome_name_the_unit():
    s = byte_scheduler(make('int8'), (0.1, 0.05))
    assert "unit='bytes', precision='int8'" in repr(s)
    assert "float32 bytes, int8 values" in s.outcome().message
    with pytest.raises(ValueError, match='linear'):
        s.to_full(0.1)
    assert 'precision' not in repr(PruningScheduler(make('int8'), (0.1, )))



@pytest.mark.parametrize('precision', ['int8', 'int4'])
def test_runner_prunes_to_a_byte_target_at(precision):
    # The pipeline end to end: CERPConfig(precision=..., target_unit=
    # 'bytes') -> the runner's CERP, rewound for retraining, stores at most
    # the target's bytes of the stored form.
    import os
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    from test_trainer import block_data, make_runner
    from pyg_cerp.train import CERPConfig
    data = block_data()
    n = data.num_users + data.num_items
    cfg = CERPConfig(dim=8, bucket_size=40, targets=(0.1, ),
                     target_unit='bytes', precision=precision,
                     baseline_epochs=0,
                     prune_epochs=8, retrain_epochs=1, batch_size=64,
                     num_negatives=1, threshold_init=-3., prune_start=1,
                     onset_quantile=0.02, pace_epochs=3, exact_snapshots=True,
                     ks=(5, ))
    runner = make_runner(cfg, data)
    state = runner.run()
    assert state['prune']['reached'] == [0.1]
    stage = [s for s in runner.stages() if s.kind == 'retrain'][0]
    model = runner._build('cerp', 0)
    runner.rewind(model, stage)
    assert model.embedding.precision == precision
    nbytes = stored_nbytes(model.embedding)
    assert nbytes == model.embedding.to_compact().nbytes
    assert 0.9 * 0.1 * 4 * n * 8 <= nbytes <= 0.1 * 4 * n * 8
    with pytest.raises(ValueError, match="'precision' must be one of"):
        CERPConfig(precision='int2')


def test_pace_shares_count_the_stored_rows_only():
    # N = 2000, b = 300: Q's rows 286..299 belong to no entity and are not
    # stored. With them pruned, P a little below a uniform share and Q's
    # stored rows above theirs (as on Gowalla), counting Q's share over all
    # 300 rows left Q unpruned and the pace stuck above the plan for good
    # (int8, 5% of the bytes: 0.05015).
    from pyg_cerp.memory import tables_nbytes
    torch.manual_seed(0)
    emb = CompositionalEmbedding(N, D, 300, precision='int8')
    s = byte_scheduler(emb, (0.05, ), threshold_drive=0.)
    (p_rows, _, _), (q_rows, _, _) = s._shapes
    assert (p_rows, q_rows) == (300, 286)
    keep = {'P': 6620, 'Q': 6540}  # Uniform share 0.7: 6720 and 6406.
    with torch.no_grad():
        for name, rows in (('P', p_rows), ('Q', q_rows)):
            table = getattr(emb, name)
            values = torch.linspace(0.1, 0.9, rows * D)
            values[keep[name]:] = 0.
            table.zero_()
            table[:rows] = values[torch.randperm(rows * D)].view(rows, D)
        start = s.density()
        plan = tables_nbytes(s._shapes, [int(0.7 * r * D) for r in
                                         (p_rows, q_rows)], 'int8') / \
            FULL_BYTES
        assert plan < start
        density = s._pace_bytes(s._pairs(), plan, start)
    assert density <= plan
    assert s.nbytes() <= plan * FULL_BYTES
    q_mask = emb.masks()[1]
    assert int(q_mask[:q_rows].sum()) < keep['Q']  # Q's stored rows pruned.
