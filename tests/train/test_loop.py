r"""Training to convergence (:func:`pyg_cerp.train.fit`)."""
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
