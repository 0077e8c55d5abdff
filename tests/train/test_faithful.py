r"""The issue-11 additions: presets and derived values, exact snapshots, the
frozen-threshold onset, and the regulariser's effect on overlap."""
import math

import pytest
import torch

from pyg_cerp.diagnostics import overlap_rate
from pyg_cerp.nn import CompositionalEmbedding
from pyg_cerp.train import CERPConfig, PruningScheduler
from pyg_cerp.train.cerp import OFFICIAL_GROUPS


def test_presets_and_derived_values():
    legacy = CERPConfig.preset('legacy')
    # The configuration of the committed quick-profile numbers: the field
    # defaults with the training schedule before issue 10.
    assert legacy == CERPConfig(baseline_epochs=3, retrain_epochs=3,
                                batch_size=8192, lr=5e-3, l2_reg=0.)
    d = legacy.derived(70839, 810128)
    assert d['bucket_size'] == 5000 and d['gamma_scale'] == 1.
    assert d['reduction'] == 'mean' and d['threshold_lr'] == 6e-2
    f = CERPConfig.preset('faithful', batch_size=8192)
    assert f.threshold_drive == 0. and f.gamma_init == 1.
    d = f.derived(70839, 810128)
    # Official per-entity weight 1 relative to a pair weight 1/10:
    assert d['gamma_scale'] == pytest.approx(OFFICIAL_GROUPS / (8192 * 5))
    assert d['reduction'] == 'sum'
    assert d['threshold_weight_decay'] == pytest.approx(1e-5 * 10 / 40960)
    assert d['steps_per_epoch'] == math.ceil(810128 / 8192)
    assert d['threshold_lr'] == pytest.approx(2. / d['steps_per_epoch'])
    off = CERPConfig.preset('official')
    assert off.threshold_init == -100. and off.lr == 1e-3
    assert off.derived(100, 100)['weight_decay'] == pytest.approx(
        1e-5 * 10 / (off.batch_size * 5))
    with pytest.raises(ValueError, match='preset'):
        CERPConfig.preset('nope')


@pytest.mark.parametrize('N', [7000, 36000, 70839])  # Gowalla slice sizes.
def test_bucket_size_from_entities_and_targets(N):
    cfg = CERPConfig.preset('faithful')
    b = cfg.derived(N, 10 * N)['bucket_size']
    # Meta tables hold 2 * max(target) of the full table: the largest
    # target is at meta density 0.5, the smallest at 0.05.
    assert 2 * b / N == pytest.approx(2 * max(cfg.targets), rel=1e-3)
    cfg = CERPConfig.preset('faithful', targets=(0.05, 0.01))
    assert cfg.derived(N, N)['bucket_size'] == math.ceil(0.05 * N)


def _emb(N=300, d=8, b=30, seed=0):
    torch.manual_seed(seed)
    return CompositionalEmbedding(N, d, b, threshold_init=-100.)


def test_exact_snapshot_when_a_step_overshoots():
    emb = _emb()
    s = PruningScheduler(emb, [0.05], exact_snapshots=True)
    s.on_train_start()  # Meta = 20% of full.
    with torch.no_grad():  # One jump: prune ~95% of the meta entries.
        q = torch.quantile(emb.P.abs().flatten(), 0.95)
        emb.threshold_P.fill_(float(torch.logit(q)))
        emb.threshold_Q.fill_(float(torch.logit(q)))
    assert s.full_fraction() < 0.05 * 0.5
    s.step()
    snap = s.snapshots[0.05]
    assert snap.full_fraction == pytest.approx(0.05, rel=0.02)
    assert sum(int(m.sum()) for m in snap.masks) == math.floor(
        0.05 * emb.num_full_params)
    # Without it, the snapshot is the overshooting mask.
    emb2 = _emb()
    s2 = PruningScheduler(emb2, [0.05])
    s2.on_train_start()
    with torch.no_grad():
        emb2.threshold_P.fill_(float(torch.logit(q)))
        emb2.threshold_Q.fill_(float(torch.logit(q)))
    s2.step()
    assert s2.snapshots[0.05].full_fraction < 0.05 * 0.5


def test_thresholds_frozen_until_onset_then_at_value_quantile():
    emb = _emb()
    s = PruningScheduler(emb, [0.1], prune_start=2, onset_quantile=0.1)
    s.on_train_start()
    assert not emb.threshold_P.requires_grad
    s.on_epoch_end()
    assert not emb.threshold_Q.requires_grad
    s.on_epoch_end()  # Epoch 2 starts: onset.
    assert emb.threshold_P.requires_grad and emb.threshold_Q.requires_grad
    q = torch.quantile(emb.P.detach().abs().flatten(), 0.1)
    assert torch.sigmoid(emb.threshold_P).mean().item() == pytest.approx(
        q.item(), rel=1e-4)
    # Resuming before the onset freezes them again.
    s3 = PruningScheduler(_emb(), [0.1], prune_start=2)
    st = s.state_dict()
    st['epoch'] = 1
    s3.load_state_dict(st)
    assert not s3.embedding.threshold_P.requires_grad


def _prune(gamma, steps=300, seed=0):
    r"""Prunes with a weak, decaying-free drive (weight decay on the logits)
    and a fitting task on a random target, with or without the
    regulariser; returns the overlap statistics."""
    N, d, b = 400, 16, 40
    emb = _emb(N, d, b, seed)
    torch.manual_seed(seed + 1)
    target = torch.randn(N, d) * 0.05
    with torch.no_grad():
        q = torch.quantile(emb.P.abs().flatten(), 0.02)
        emb.threshold_P.fill_(float(torch.logit(q)))
        emb.threshold_Q.fill_(float(torch.logit(q)))
    opt = torch.optim.Adam([
        dict(params=[emb.P, emb.Q], lr=1e-2),
        dict(params=[emb.threshold_P, emb.threshold_Q], lr=2e-2,
             weight_decay=1e-4)])
    idx = torch.arange(N)
    for _ in range(steps):
        loss = (emb(idx) - target).pow(2).sum(-1).mean()
        if gamma > 0:
            loss = loss + gamma * emb.pruning_loss(idx, reduction='sum') / N
        opt.zero_grad()
        loss.backward()
        opt.step()
    s = torch.cat([emb.threshold_P.flatten(), emb.threshold_Q.flatten()])
    return overlap_rate(emb), float(s.detach().std())


def test_regulariser_makes_the_pruned_tables_complementary():
    with_reg, std = _prune(gamma=0.05)
    without, _ = _prune(gamma=0.)
    # Both pruned enough that chance overlap is not negligible (the
    # regulariser also slows pruning: zero fractions ~0.2 vs ~0.5).
    assert without.independent > 0.05 and with_reg.independent > 0.02
    assert with_reg.mean <= 0.7 * with_reg.independent
    assert with_reg.mean / with_reg.independent < \
        0.8 * without.mean / without.independent
    assert std > 0.05  # Learned thresholds, not lockstep.
