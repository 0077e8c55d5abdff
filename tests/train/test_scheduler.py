import math
import warnings

import pytest
import torch

from pyg_cerp.nn import CompositionalEmbedding
from pyg_cerp.train import (PruningScheduler, TargetNotReachedError,
                            TargetNotReachedWarning)
from pyg_cerp.utils.io import atomic_save, safe_load


class ToyPrunable(torch.nn.Module):
    r"""A prunable embedding whose density the test sets directly."""
    def __init__(self, num_full: int = 1000, num_meta: int = 200,
                 with_loss: bool = True):
        super().__init__()
        self.num_full_params = num_full
        self.num_meta_params = num_meta
        self.weight = torch.nn.Parameter(torch.ones(num_meta))
        self.nnz = num_meta
        self.frozen = None
        if with_loss:
            self.pruning_loss = lambda index=None: -self.weight.sum()

    def num_nonzero(self) -> int:
        return self.nnz

    def masks(self):
        mask = torch.zeros(self.num_meta_params, dtype=torch.bool)
        mask[:self.nnz] = True
        return (mask, ~mask)

    def freeze_masks(self, masks=None, rewind_to=None):
        self.frozen = (masks, rewind_to)

    def initial_state(self):
        return {'P': self.weight.detach().clone()}


def test_gamma_decay_schedules():
    emb = ToyPrunable()
    s = PruningScheduler(emb, [0.1], gamma_init=2.0, gamma_decay=0.5)
    gammas = []
    for _ in range(4):
        gammas.append(s.gamma)
        s.on_epoch_end()
    assert gammas == [2.0, 1.0, 0.5, 0.25]

    s = PruningScheduler(emb, [0.1], gamma_init=1.0, gamma_decay=0.5,
                         gamma_decay_every=2)
    gammas = []
    for _ in range(5):
        gammas.append(s.gamma)
        s.on_epoch_end()
    assert gammas == [1.0, 1.0, 0.5, 0.5, 0.25]

    s = PruningScheduler(emb, [0.1], gamma_init=0.3, gamma_decay=1.0)
    for _ in range(3):
        s.on_epoch_end()
    assert s.gamma == 0.3


def test_regularizer_weighting_and_skip():
    emb = ToyPrunable(num_meta=10)
    s = PruningScheduler(emb, [0.005], gamma_init=0.5)
    reg = s.regularizer()
    assert float(reg.detach()) == pytest.approx(-5.0)
    s2 = PruningScheduler(ToyPrunable(with_loss=False), [0.005])
    assert s2.regularizer() is None  # No pruning_loss: skipped.
    s3 = PruningScheduler(emb, [0.005], gamma_init=0.0)
    assert s3.regularizer() is None


def test_snapshots_at_first_crossing_full_unit():
    emb = ToyPrunable(num_full=1000, num_meta=200)  # Starts at 20% of full.
    s = PruningScheduler(emb, [0.01, 0.10, 0.05])  # Sorted internally.
    assert s.targets == [0.10, 0.05, 0.01]
    assert s.on_train_start() == []
    reached_at = {}
    for step, nnz in enumerate([190, 120, 100, 80, 49, 30, 20, 11, 10], 1):
        emb.nnz = nnz
        for t in s.step():
            reached_at[t] = step
    assert reached_at == {0.10: 3, 0.05: 5, 0.01: 9}
    assert s.done
    snap = s.snapshots[0.05]
    assert snap.step == 5 and snap.density == pytest.approx(0.049)
    assert int(snap.masks[0].sum()) == 49  # The masks of that step.
    emb.nnz = 1
    assert s.step() == []  # Done: nothing more.
    assert s.regularizer() is None


def test_targets_in_meta_unit_and_check_every():
    emb = ToyPrunable(num_full=1000, num_meta=200)
    s = PruningScheduler(emb, [0.5, 0.25], target_unit='meta', check_every=2)
    s.on_train_start()
    emb.nnz = 99  # 0.495 of meta, but step 1 is not checked.
    assert s.step() == []
    assert s.step() == [0.5]  # Checked at step 2.
    assert s.snapshots[0.5].full_fraction == pytest.approx(0.099)
    emb.nnz = 50
    s.step()
    assert s.on_epoch_end() == [0.25]  # Epoch ends always check.
    assert s.snapshots[0.25].epoch == 0


def test_unreachable_target_report():
    emb = ToyPrunable(num_full=1000, num_meta=200)
    s = PruningScheduler(emb, [0.1, 0.01])
    s.on_train_start()
    for nnz in (150, 90, 40, 60):
        emb.nnz = nnz
        s.step()
    s.on_epoch_end()
    out = s.outcome()
    assert out.reached == [0.1] and out.missing == [0.01]
    assert out.min_density == pytest.approx(0.04)
    assert '0.01' in out.message and '0.04' in out.message
    assert 'threshold learning rate' in out.message
    with pytest.warns(TargetNotReachedWarning, match='NOT reached'):
        s.check_complete()
    with pytest.raises(TargetNotReachedError, match='only fell to 0.04'):
        s.check_complete(strict=True)


def test_invalid_and_already_met_targets():
    emb = ToyPrunable(num_full=1000, num_meta=80)  # Starts at 8% of full.
    for bad in ([0.0], [1.0], [-0.1], [1.5], [0.1, 0.1], []):
        with pytest.raises(ValueError):
            PruningScheduler(emb, bad)
    with pytest.raises(ValueError, match='target_unit'):
        PruningScheduler(emb, [0.1], target_unit='bytes')
    s = PruningScheduler(emb, [0.10, 0.05])
    with pytest.warns(UserWarning, match='already met before training'):
        assert s.on_train_start() == [0.10]
    assert s.snapshots[0.10].step == 0 and not s.done
    with pytest.raises(TypeError, match='not prunable'):
        PruningScheduler(torch.nn.Embedding(3, 2), [0.1])


def test_state_dict_round_trip(tmp_path):
    emb = ToyPrunable(num_full=1000, num_meta=200)
    s = PruningScheduler(emb, [0.1, 0.05], gamma_decay=0.5)
    s.on_train_start()
    emb.nnz = 90
    s.step()
    s.on_epoch_end()
    atomic_save(s.state_dict(), tmp_path / 's.pt')
    state = safe_load(tmp_path / 's.pt')  # weights_only=True.

    s2 = PruningScheduler(ToyPrunable(num_full=1000, num_meta=200),
                          [0.05, 0.1])
    s2.load_state_dict(state)
    assert s2.num_steps == 1 and s2.epoch == 1 and s2.gamma == 0.5
    assert list(s2.snapshots) == [0.1]
    assert torch.equal(s2.snapshots[0.1].masks[0], s.snapshots[0.1].masks[0])
    assert torch.equal(s2.initial_weights['P'], s.initial_weights['P'])
    with pytest.raises(ValueError, match='Cannot load'):
        PruningScheduler(emb, [0.2]).load_state_dict(state)


def test_with_compositional_embedding_and_freeze():
    torch.manual_seed(0)
    emb = CompositionalEmbedding(100, 8, 20, threshold_init=-100.)
    s = PruningScheduler(emb, [0.3, 0.2])  # Meta tables: 40% of full.
    s.on_train_start()
    assert s.start_density == pytest.approx(0.4)
    init = s.initial_weights['P'].clone()
    with torch.no_grad():  # Prune ~65% by raising the thresholds.
        emb.threshold_P.fill_(math.log(0.3 / 0.7))
        emb.threshold_Q.fill_(math.log(0.3 / 0.7))
        emb.P.add_(0.01)
    assert s.step() == [0.3, 0.2]
    assert s.density() <= 0.2
    s.freeze(0.2, rewind=True)
    assert emb.is_retraining
    assert torch.equal(emb.P, init)  # Rewound.
    assert torch.equal(emb.mask_P, s.snapshots[0.2].masks[0])
    assert emb.num_nonzero() <= s.snapshots[0.2].density * 800


def test_threshold_drive_raises_thresholds_past_zero():
    torch.manual_seed(0)
    emb = CompositionalEmbedding(100, 8, 20, threshold_init=-1.)
    with torch.no_grad():  # Values far above any threshold.
        emb.P.fill_(5.)
        emb.Q.fill_(5.)
    s = PruningScheduler(emb, [0.05], gamma_init=0., threshold_drive=1e-3)
    opt = torch.optim.Adam([emb.threshold_P, emb.threshold_Q], lr=0.1)
    s.on_train_start()
    for _ in range(20):
        opt.zero_grad()
        s.regularizer(torch.arange(100)).backward()
        opt.step()
        s.step()
    # Rises by ~lr per step, beyond S = 0 (no saturation at sigmoid(0)).
    assert float(emb.threshold_P.detach().mean()) == pytest.approx(1.0,
                                                                   abs=0.05)
    assert not s.done
    with torch.no_grad():
        emb.P.fill_(0.5)  # Below sigmoid(1) = 0.73: pruned.
        emb.Q.fill_(0.5)
    assert s.step() == [0.05] and s.regularizer() is None
    assert PruningScheduler(emb, [0.05], threshold_drive=0.,
                            gamma_init=0.).regularizer() is None
    with pytest.raises(ValueError, match='threshold_drive'):
        PruningScheduler(emb, [0.05], threshold_drive=-1.)
