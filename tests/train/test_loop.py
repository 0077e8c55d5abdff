r"""Training to convergence (:func:`pyg_cerp.train.fit`)."""
import os

import pytest
import torch

from pyg_cerp.train import EarlyStopping, fit


def test_fit_restores_the_best_validation_epoch(monkeypatch):
    model = torch.nn.Linear(1, 1)
    values = iter([0.1, 0.5, 0.3, 0.2, 0.9])
    seen = []

    class Rec(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = model

    rec = Rec()

    def validate(m):
        seen.append(float(m.lin.bias))
        return {'ndcg@20': next(values)}

    import pyg_cerp.train.loop as loop
    epochs = []

    def fake_epoch(m, opt, sampler, epoch, clip_grad_norm=None, l2_reg=0.):
        with torch.no_grad():
            m.lin.bias.fill_(float(epoch + 1))
        epochs.append(epoch)
        return dict(loss=0.)

    monkeypatch.setattr(loop, 'train_epoch', fake_epoch)
    res = fit(rec, None, [], validate, EarlyStopping(10, patience=2))
    # Valid 0.1 (init), 0.5 (epoch 1), 0.3, 0.2: stops after 2 bad epochs.
    assert res.best_epoch == 1 and res.epochs == 3
    assert res.best_valid == 0.5
    assert float(rec.lin.bias) == 1.  # The state of epoch 1.
    with pytest.raises(ValueError):
        EarlyStopping(patience=0)


class _Interrupted(Exception):
    pass


def _resumable_fit(tmp_path, seed, interrupt_at=None, config=None,
                   distill=True):
    # fit() with distillation and a checkpoint on block data; validation
    # raises _Interrupted at its call number `interrupt_at` (a kill).
    from pyg_cerp.distributed import DistContext
    from pyg_cerp.train import CERPConfig, make_optimizer, make_sampler
    from pyg_cerp.train.checkpoint import Checkpoint, data_identity
    from pyg_cerp.train.distill import RankingDistillation
    from test_trainer import block_data, lightgcn_builder
    data = block_data()
    n = data.num_users + data.num_items
    torch.manual_seed(1)
    teacher = lightgcn_builder(data, 8)(torch.nn.Embedding(n, 8))
    torch.manual_seed(seed)  # The start is overwritten by a resume.
    model = lightgcn_builder(data, 8)(torch.nn.Embedding(n, 8))
    calls = iter(range(1, 100))

    def validate(m):
        if next(calls) == interrupt_at:
            raise _Interrupted
        return {'ndcg@20': -float(m.embedding.weight.square().sum())}

    checkpoint = Checkpoint(str(tmp_path / 'fit.pt'), data_identity(data),
                            config or CERPConfig(), DistContext())
    res = fit(model, make_optimizer(model, lr=1e-2),
              make_sampler(data.train, data.num_users, data.num_items, 2, 64,
                           seed=0),
              validate, EarlyStopping(max_epochs=6, patience=10,
                                      eval_every=2),
              distill=(RankingDistillation(teacher, 1., num_samples=5)
                       if distill else None),
              checkpoint=checkpoint)
    return model, res


def test_fit_resumes_from_its_checkpoint(tmp_path):
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    whole, whole_res = _resumable_fit(tmp_path / 'a', 0)
    (tmp_path / 'b').mkdir()
    with pytest.raises(_Interrupted):  # Killed at epoch 4's validation.
        _resumable_fit(tmp_path / 'b', 0, interrupt_at=3)
    from pyg_cerp.utils.io import safe_load
    saved = safe_load(str(tmp_path / 'b' / 'fit.pt'), require_checksum=True)
    assert saved['fit']['epoch'] == 2
    # Resumed from a different start: epochs 3-6 as in the whole run.
    model, res = _resumable_fit(tmp_path / 'b', 5)
    assert res.history == whole_res.history
    assert (res.epochs, res.best_epoch) == (6, whole_res.best_epoch)
    assert torch.equal(model.embedding.weight, whole.embedding.weight)
    # A finished fit returns its result without training again.
    again, again_res = _resumable_fit(tmp_path / 'b', 7, interrupt_at=1)
    assert again_res.history == res.history
    assert torch.equal(again.embedding.weight, model.embedding.weight)
    # A checkpoint of another configuration is refused.
    from pyg_cerp.train import CERPConfig, ResumeError
    with pytest.raises(ResumeError, match='configuration'):
        _resumable_fit(tmp_path / 'b', 0, config=CERPConfig(lr=0.5))
    with pytest.raises(ResumeError, match='with a distillation term'):
        _resumable_fit(tmp_path / 'b', 0, distill=False)
