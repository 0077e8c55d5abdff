r"""The issue-11 additions: presets and derived values, exact snapshots, the
frozen-threshold onset, and the regulariser's effect on overlap."""
import math

import pytest
import torch

from pyg_cerp.diagnostics import overlap_rate
from pyg_cerp.nn import CompositionalEmbedding
from pyg_cerp.train import CERPConfig, PruningScheduler
from pyg_cerp.train.config import FAITHFUL_GAMMA, OFFICIAL_GROUPS


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
    assert f.threshold_drive == 0. and f.gamma_init == FAITHFUL_GAMMA
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


def _paced(gamma, pace_epochs=3., steps_per_epoch=40, epochs=6, seed=0):
    r"""Fits a random target while the scheduler paces the pruning to 5% of
    the full table (meta tables 10% of it: meta density 0.5 at the target) from an onset after one epoch;
    returns the scheduler, the per-epoch densities and the logit spread."""
    N, d, b = 400, 16, 20
    emb = _emb(N, d, b, seed)
    torch.manual_seed(seed + 1)
    target = torch.randn(N, d) * 0.05
    sched = PruningScheduler(emb, [0.05], gamma_init=gamma, gamma_scale=1. / N,
                             reduction='sum', prune_start=1,
                             onset_quantile=0.02, gamma_at_onset=True,
                             pace_epochs=pace_epochs, exact_snapshots=True)
    opt = torch.optim.Adam([
        dict(params=[emb.P, emb.Q], lr=1e-2),
        dict(params=[emb.threshold_P, emb.threshold_Q], lr=5e-2)])
    idx = torch.arange(N)
    sched.on_train_start()
    densities = []
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            loss = (emb(idx) - target).pow(2).sum(-1).mean()
            reg = sched.regularizer(idx)
            if reg is not None:
                loss = loss + reg
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        sched.on_epoch_end()
        densities.append(sched.full_fraction())
        if sched.done:
            break
    s = torch.cat([emb.threshold_P.flatten(), emb.threshold_Q.flatten()])
    return sched, densities, float(s.detach().std())


def test_pace_plan_reaches_the_target_progressively():
    sched, densities, std = _paced(gamma=0.)
    assert sched.steps_per_epoch == 40  # Measured on the first epoch.
    assert sched.done
    snap = sched.snapshots[0.05]
    # Reached along the plan (onset after epoch 1, 3 epochs to the target),
    # not in the first pruning epoch and not after the plan ended:
    assert 2 <= snap.epoch <= 4
    assert snap.full_fraction == pytest.approx(0.05, rel=0.03)
    # Progressive: the epoch-end densities fall step by step.
    assert densities[1] > densities[2] > 0.05 * 0.97
    assert std > 0.05  # Learned thresholds, not lockstep.
    # The plan itself: geometric from the onset density to the target.
    assert sched.planned_density() == pytest.approx(0.05, rel=1e-6)


def test_pace_with_regulariser_keeps_the_tables_complementary():
    with_reg, _, _ = _paced(gamma=0.2)
    without, _, _ = _paced(gamma=0.)
    assert with_reg.done and without.done
    emb_reg, emb_no = with_reg.embedding, without.embedding
    # Rewound as for retraining: the pruned tables are the snapshot's.
    emb_reg.freeze_masks(with_reg.snapshots[0.05].masks,
                         rewind_to=with_reg.initial_weights)
    emb_no.freeze_masks(without.snapshots[0.05].masks,
                        rewind_to=without.initial_weights)
    a, b = overlap_rate(emb_reg), overlap_rate(emb_no)
    assert a.mean <= 0.7 * a.independent
    assert a.mean / a.independent < 0.8 * b.mean / b.independent


def test_pace_state_round_trip():
    sched, _, _ = _paced(gamma=0., epochs=2)
    state = sched.state_dict()
    other = PruningScheduler(_emb(400, 16, 20), [0.05], prune_start=1,
                             pace_epochs=3.)
    other.load_state_dict(state)
    assert other.pace_offset == sched.pace_offset > 0
    assert other.onset_step == sched.onset_step
    assert other.planned_density() == pytest.approx(sched.planned_density())
    with pytest.raises(ValueError, match='pace_epochs'):
        PruningScheduler(_emb(), [0.05], pace_epochs=0.)


def _random_interactions(num_users, num_items, per_user, groups=16,
                         seed=0):
    r"""Users of group :math:`g` like random items of group :math:`g`."""
    from pyg_cerp.train import Interactions
    gen = torch.Generator().manual_seed(seed)
    users = torch.arange(num_users).repeat_interleave(per_user)
    items = (users % groups) + groups * torch.randint(
        num_items // groups, (users.numel(), ), generator=gen)
    train = torch.stack([users, items])
    return Interactions(train, train[:, :num_users], num_users, num_items)


@pytest.mark.parametrize('num_users,num_items', [
    (1_500, 1_500),      # 3,000 entities
    (15_000, 15_000),    # 30,000
    (150_000, 150_000),  # 300,000
])
def test_faithful_preset_prunes_to_every_target_on_any_size(
        num_users, num_items):
    # The default pruning of the faithful preset reaches 10%, 5% and 1% of
    # the full table on schedule whatever the number of entities and of
    # steps per epoch: b from N and the targets, the plan in epochs.
    from pyg_cerp.train import CERPRunner, make_sampler
    sys_path = __import__('sys').path
    sys_path.insert(0, __import__('os').path.dirname(__file__))
    from test_trainer import lightgcn_builder
    data = _random_interactions(num_users, num_items, 4)
    cfg = CERPConfig.preset('faithful', dim=8, baseline_epochs=0,
                            retrain_epochs=0, eval_users=10, ks=(20, ))
    runner = CERPRunner(cfg, data, lightgcn_builder(data, 8),
                        lambda seed: make_sampler(
                            data.train, num_users, num_items, 1,
                            cfg.batch_size, seed), log=lambda m: None)
    state = runner.run()
    sched = state['prune']['scheduler']
    snaps = {float(s['target']): s for s in sched['snapshots']}
    assert sorted(snaps) == [0.01, 0.05, 0.10]
    steps = runner.derived['steps_per_epoch']
    for t, s in snaps.items():
        assert s['full_fraction'] == pytest.approx(t, rel=0.02)
        # Not before the onset, and within the planned epochs.
        assert cfg.prune_start * steps < s['step'] <= (
            cfg.prune_start + cfg.pace_epochs) * steps + 1


@pytest.mark.parametrize('flag', [False, True])
def test_runner_passes_regularize_thresholds_only_to_the_scheduler(flag):
    # CERPConfig.regularize_thresholds_only (off by default) reaches
    # CompositionalEmbedding.pruning_loss through the runner's scheduler.
    from pyg_cerp.train import CERPRunner, make_sampler
    sys_path = __import__('sys').path
    sys_path.insert(0, __import__('os').path.dirname(__file__))
    from test_trainer import lightgcn_builder
    assert CERPConfig.preset('faithful').regularize_thresholds_only is False
    data = _random_interactions(50, 50, 2)
    cfg = CERPConfig.preset('faithful', dim=8, baseline_epochs=0,
                            retrain_epochs=0, eval_users=10, ks=(20, ),
                            regularize_thresholds_only=flag)
    runner = CERPRunner(cfg, data, lightgcn_builder(data, 8),
                        lambda seed: make_sampler(
                            data.train, 50, 50, 1, cfg.batch_size, seed),
                        log=lambda m: None)
    model = lightgcn_builder(data, 8)(runner._default_embedding('cerp'))
    scheduler = runner._scheduler(model)
    assert scheduler.thresholds_only is flag
    scheduler.epoch = scheduler.prune_start  # The regulariser is on.
    model.embedding.zero_grad(set_to_none=True)
    loss = scheduler.regularizer(torch.arange(20))
    assert loss is not None and loss.requires_grad
    loss.backward()
    # Thresholds only: no gradient on the values.
    assert (model.embedding.P.grad is None) is flag
