import pytest
import torch

from pyg_cerp.nn import CompositionalEmbedding
from pyg_cerp.nn.baselines import (FullEmbedding, HashEmbedding,
                                   PEPEmbedding, QREmbedding)
from pyg_cerp.train import (METHODS, EarlyStopping, build_embedding, fit,
                            get_method, holdout_split)
from pyg_cerp.train.methods import bucket_candidates


def test_method_registry_and_budgets():
    assert list(METHODS) == ['full', 'cerp', 'cerp-noreg', 'cerp-ft', 'pep',
                             'qr-mul', 'qr-add', 'hash', 'magnitude']
    assert [m.name for m in METHODS.values() if m.compositional] == [
        'cerp', 'cerp-noreg', 'cerp-ft']
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
    assert get_method('cerp').regularized
    assert not get_method('cerp-noreg').regularized
    with pytest.raises(ValueError, match='bucket_size'):
        build_embedding('cerp', n, d, 0.1)
    with pytest.raises(ValueError, match='Unknown method'):
        get_method('qr')
    with pytest.raises(ValueError, match='QREmbedding'):
        build_embedding('qr-mul', n, d, 0.01)  # Needs ~2 sqrt(N) rows.
    assert bucket_candidates(1000, 0.05) == [38, 50, 100]


def test_holdout_split_is_per_user_and_seeded():
    torch.manual_seed(0)
    users = torch.arange(10).repeat_interleave(torch.arange(1, 11))
    ei = torch.stack([users, torch.arange(users.numel())])
    tr, va = holdout_split(ei, 10, 0.2, seed=3)
    assert tr.size(1) + va.size(1) == ei.size(1)
    deg_tr = torch.bincount(tr[0], minlength=10)
    deg_va = torch.bincount(va[0], minlength=10)
    assert (deg_tr >= 1).all()  # Every user keeps a training pair.
    assert deg_va[0] == 0 and deg_va[9] == 2  # ceil(0.2 * 10).
    tr2, va2 = holdout_split(ei, 10, 0.2, seed=3)
    assert torch.equal(va, va2)
    assert not torch.equal(va, holdout_split(ei, 10, 0.2, seed=4)[1])


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

    import pyg_cerp.train.converged as methods
    epochs = []

    def fake_epoch(m, opt, sampler, epoch, clip_grad_norm=None, l2_reg=0.):
        with torch.no_grad():
            m.lin.bias.fill_(float(epoch + 1))
        epochs.append(epoch)
        return dict(loss=0.)

    monkeypatch.setattr(methods, 'train_epoch', fake_epoch)
    res = fit(rec, None, [], validate, EarlyStopping(10, patience=2))
    # Valid 0.1 (init), 0.5 (epoch 1), 0.3, 0.2: stops after 2 bad epochs.
    assert res.best_epoch == 1 and res.epochs == 3
    assert res.best_valid == 0.5
    assert float(rec.lin.bias) == 1.  # The state of epoch 1.
    with pytest.raises(ValueError):
        EarlyStopping(patience=0)
