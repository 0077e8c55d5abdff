r"""Issue 13: typed stages, methods as configurations of the runner,
rewinding through the scheduler, chunked MLP ranking."""
import os
import sys

import pytest
import torch

from pyg_cerp.nn import MLPScorer
from pyg_cerp.nn.baselines import QREmbedding
from pyg_cerp.train import (METHODS, CERPConfig, CERPRunner, MLPRecommender,
                            Stage, make_sampler)

sys.path.insert(0, os.path.dirname(__file__))
from test_trainer import (block_data, lightgcn_builder, make_runner,  # noqa
                          small_config)


def test_stage_names_are_the_checkpoint_keys():
    assert Stage('full', 3).name == 'full'
    assert str(Stage('retrain', 2, 0.05)) == 'retrain@0.05'
    assert Stage('finetune', 1, 0.1).name == 'finetune@0.1'
    runner = make_runner(small_config(), block_data())
    assert [s.name for s in runner.stages()] == ['full', 'prune']
    state = runner.run()
    assert [s.name for s in runner.stages()] == [
        'full', 'prune', 'retrain@0.2', 'retrain@0.1', 'finetune@0.2',
        'finetune@0.1']
    assert set(state['results']) == {s.name for s in runner.stages()
                                     if s.kind != 'prune'}


def test_fixed_method_has_one_stage():
    data = block_data()
    n = data.num_users + data.num_items
    cfg = small_config(prune_epochs=0, finetune_epochs=0)
    runner = CERPRunner(
        cfg, data, lightgcn_builder(data, 8),
        lambda seed: make_sampler(data.train, data.num_users, data.num_items,
                                  5, 64, seed),
        embedding_factory=lambda kind: QREmbedding.for_budget(n, 8, 0.3),
        method=METHODS['qr-mul'], log=lambda s: None)
    assert runner.stages() == [Stage('full', 2)]
    state = runner.run()
    assert list(state['results']) == ['full'] and state['prune'] is None
    with pytest.raises(ValueError, match='ConvergedRunner'):
        CERPRunner(cfg, data, None, lambda s: None, method='magnitude')
    # A hybrid's exact ids come from the data: no default embedding.
    with pytest.raises(ValueError, match="needs an 'embedding_factory'"):
        CERPRunner(cfg, data, None, lambda s: None, method='qr-mul-hybrid')


def test_rewind_is_the_scheduler_freeze():
    data = block_data()
    cfg = small_config(baseline_epochs=0, retrain_epochs=0,
                       finetune_epochs=0)
    runner = make_runner(cfg, data)
    state = runner.run()
    prune = state['prune']
    model = runner._build('cerp', 5)
    runner.rewind(model, Stage('retrain', 1, 0.1))
    emb = model.embedding
    assert emb.is_retraining
    assert torch.equal(emb.P, prune['scheduler']['initial_weights']['P'])
    snap = [s for s in prune['scheduler']['snapshots']
            if s['target'] == 0.1][0]
    assert torch.equal(emb.mask_P, snap['masks'][0])


def test_mlp_chunked_ranking_equals_full_ranking():
    torch.manual_seed(0)
    n = 30
    scorer = MLPScorer(10, 20, torch.nn.Embedding(n, 8), hidden_channels=[16])
    plain = MLPRecommender(scorer).eval()
    chunked = MLPRecommender(scorer, user_chunk=3, item_chunk=7).eval()
    users = torch.arange(10)
    with torch.no_grad():
        assert torch.allclose(plain.score_function()(users),
                              chunked.score_function()(users), atol=1e-6)


def test_method_config_switches_the_regulariser_off():
    base = CERPConfig(gamma_init=0.5)
    assert METHODS['cerp'].config(base).gamma_init == 0.5
    assert METHODS['cerp-noreg'].config(base, seed=3).gamma_init == 0.
    assert METHODS['cerp-noreg'].config(base, seed=3).seed == 3


def test_cerp_ft_keeps_the_values_at_the_target():
    # 'cerp' rewinds the pruned model to the initial values (two-phase),
    # 'cerp-ft' keeps the values of the step the target was reached at; both
    # freeze the same snapshot's masks.
    from test_distill import _runner  # A tiny ConvergedRunner.
    runner = _runner()
    split = runner.split
    b = 30
    two, _ = runner._prune(METHODS['cerp'], 0.3, 0, b)
    one, _ = runner._prune(METHODS['cerp-ft'], 0.3, 0, b)
    # Same snapshot, other values (the rewind itself is tested above).
    assert not torch.equal(one.embedding.P, two.embedding.P)
    assert torch.equal(one.embedding.mask_P, two.embedding.mask_P)
    assert one.embedding.is_retraining and two.embedding.is_retraining
    assert one.embedding.num_nonzero() <= 0.3 * (split.num_users +
                                                 split.num_items) * 8
