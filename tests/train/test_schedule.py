r"""Issue 10: the training schedule (L2 on ego embeddings, phase-1 batch and
lr, fused Adam, no per-step device reads) (the CLI's precedence rules: tests/train/test_cli.py)."""
import os
import sys

import pytest
import torch

from pyg_cerp.train import (CERPConfig, CERPRunner, make_optimizer,
                            make_sampler, train_epoch, train_step)

sys.path.insert(0, os.path.dirname(__file__))
from test_trainer import block_data, lightgcn_builder  # noqa: E402


def test_l2_penalty_is_lightgcn_regulariser():
    data = block_data()
    rec = lightgcn_builder(data, 8)(torch.nn.Embedding(140, 8))
    users, pos = torch.tensor([0, 1, 1]), torch.tensor([3, 5, 7])
    neg = torch.tensor([[2, 4], [6, 8], [0, 1]])
    w = rec.embedding.weight
    ids = torch.cat([users, pos + 60, neg.reshape(-1) + 60])
    expected = 0.5 * w[ids].pow(2).sum() / 3
    assert torch.allclose(rec.l2_penalty(users, pos, neg), expected)

    # train_step adds l2_reg times the penalty (and nothing without it).
    opt = make_optimizer(rec, lr=0.)
    batch = (users, pos, neg)
    out0 = train_step(rec, opt, batch, clip_grad_norm=None)
    g0 = w.grad.clone()
    out1 = train_step(rec, opt, batch, clip_grad_norm=None, l2_reg=0.5)
    assert torch.allclose(out0['bpr'], out1['bpr'])
    assert torch.allclose(out1['loss'], out1['bpr'] + 0.5 * expected)
    w_ids = torch.zeros_like(w)
    w_ids.index_add_(0, ids, w[ids].detach())
    assert torch.allclose(w.grad - g0, 0.5 * w_ids / 3, atol=1e-6)


def test_step_returns_tensors_and_epoch_floats():
    data = block_data()
    rec = lightgcn_builder(data, 8)(torch.nn.Embedding(140, 8))
    opt = make_optimizer(rec, lr=1e-2)
    assert opt.defaults['fused'] is True  # One kernel for all parameters.
    sampler = make_sampler(data.train, 60, 80, 2, 64, seed=0)
    out = train_step(rec, opt, next(iter(sampler)))
    assert all(isinstance(out[k], torch.Tensor) and out[k].dim() == 0
               for k in ('loss', 'bpr', 'reg'))
    stats = train_epoch(rec, opt, sampler, 1, l2_reg=1e-3)
    assert all(isinstance(stats[k], float) for k in ('loss', 'bpr', 'reg'))
    assert stats['steps'] == len(sampler)


def test_phase_one_has_its_own_batch_and_lr():
    data = block_data()
    cfg = CERPConfig(dim=8, bucket_size=20, targets=(0.2, ), target_unit='meta',
                     baseline_epochs=0, prune_epochs=1, retrain_epochs=0,
                     batch_size=64, lr=1e-2, prune_batch_size=16,
                     prune_lr=1e-3, threshold_init=-3., eval_users=10)
    runner = CERPRunner(cfg, data, lightgcn_builder(data, 8),
                        lambda seed: make_sampler(data.train, 60, 80, 2, 64,
                                                  seed), log=lambda m: None)
    prune = runner._stage_sampler('prune')
    assert prune.batch_size == 16 and runner.sampler.batch_size == 64
    assert runner._stage_sampler('retrain@0.2') is runner.sampler
    model = runner._build('cerp', 0)
    assert runner._optimizer(model, 'prune').param_groups[0]['lr'] == 1e-3
    assert runner._optimizer(model, 'full').param_groups[0]['lr'] == 1e-2
    state = runner.run()
    (record, ) = [r for r in state['history'] if r['stage'] == 'prune']
    assert record['steps'] == -(-data.train.size(1) // 16)
    with pytest.raises(ValueError, match='prune_batch_size'):
        CERPConfig(prune_batch_size=0)


def test_legacy_preset_is_the_old_schedule():
    old = CERPConfig.preset('legacy')
    assert (old.batch_size, old.lr, old.l2_reg, old.baseline_epochs,
            old.retrain_epochs) == (8192, 5e-3, 0., 3, 3)
    assert old.prune_schedule() == (8192, 5e-3)
    new = CERPConfig()
    assert (new.batch_size, new.lr, new.l2_reg) == (32768, 2e-2, 1e-4)
    assert new.prune_schedule() == (8192, 5e-3)  # Capped.
    assert CERPConfig(batch_size=16, lr=1e-3).prune_schedule() == (16, 1e-3)
    assert CERPConfig(prune_batch_size=99,
                      prune_lr=0.1).prune_schedule() == (99, 0.1)


