import pytest
import torch
from torch_geometric.nn.models import LightGCN

from pyg_cerp.nn import CompositionalEmbedding, MLPScorer
from pyg_cerp.train import (CERPConfig, CERPRunner, Interactions,
                            LightGCNRecommender, MLPRecommender, bpr_loss,
                            evaluate, make_optimizer, make_sampler,
                            train_epoch)
from pyg_cerp.nn import use_symmetric_propagation
from pyg_cerp.utils import lightgcn_adjacency


def block_data(num_users=60, num_items=80, groups=4, seed=0) -> Interactions:
    r"""Users of group g like (a random half of) the items of group g."""
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for u in range(num_users):
        g = u % groups
        items = torch.arange(g, num_items, groups)
        items = items[torch.randperm(items.numel(), generator=gen)]
        liked = items[:items.numel() // 2]
        for k, i in enumerate(liked.tolist()):
            (test if k % 4 == 0 else train).append((u, i))
    return Interactions(torch.tensor(train).t(), torch.tensor(test).t(),
                        num_users, num_items)


def lightgcn_builder(data: Interactions, dim: int):
    adj = lightgcn_adjacency(data.train, data.num_users, data.num_items)

    def build(embedding):
        model = LightGCN(data.num_users + data.num_items, dim, 2,
                         normalize=False)
        use_symmetric_propagation(model)
        model.embedding = embedding
        model.reset_parameters()
        return LightGCNRecommender(model, adj, data.num_users, data.num_items)

    return build


def test_bpr_loss():
    pos = torch.tensor([2.0, 0.0])
    neg = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    expected = torch.nn.functional.softplus(
        torch.tensor([-2.0, 0.0, 0.0, 0.0])).mean()
    assert torch.allclose(bpr_loss(pos, neg), expected)
    assert torch.allclose(bpr_loss(pos, neg[:, 0]),
                          torch.nn.functional.softplus(-pos).mean())
    with pytest.raises(ValueError, match='rows'):
        bpr_loss(pos, neg[:1])


def test_make_optimizer_groups():
    emb = CompositionalEmbedding(50, 4, 10)
    opt = make_optimizer(emb, lr=1e-3, weight_decay=1e-5, threshold_lr=0.1,
                         threshold_weight_decay=1e-3)
    assert len(opt.param_groups) == 2
    values, thresholds = opt.param_groups
    assert {id(p) for p in thresholds['params']} == {
        id(emb.threshold_P), id(emb.threshold_Q)}
    assert thresholds['lr'] == 0.1 and thresholds['weight_decay'] == 1e-3
    assert values['lr'] == 1e-3 and values['weight_decay'] == 1e-5
    # Threshold-lr sets the pruning speed: S rises by ~lr per step.
    emb.P.requires_grad_(False)
    emb.Q.requires_grad_(False)
    for _ in range(5):
        opt.zero_grad()
        emb.pruning_loss(torch.arange(50)).backward()
        opt.step()
    assert float(emb.threshold_P.detach().mean()) == pytest.approx(-100 + 0.5,
                                                          abs=1e-3)


@pytest.mark.parametrize('backbone', ['lightgcn', 'mlp'])
def test_training_learns(backbone):
    torch.manual_seed(0)
    data = block_data()
    n = data.num_users + data.num_items
    if backbone == 'lightgcn':
        model = lightgcn_builder(data, 16)(torch.nn.Embedding(n, 16))
    else:
        model = MLPRecommender(
            MLPScorer(data.num_users, data.num_items,
                      torch.nn.Embedding(n, 16), hidden_channels=[32]))
    before = evaluate(model, data.train, data.test, ks=(5, 10))
    sampler = make_sampler(data.train, data.num_users, data.num_items, 5,
                           128, seed=0)
    opt = make_optimizer(model, lr=5e-2)
    losses = [train_epoch(model, opt, sampler, e)['loss'] for e in range(8)]
    after = evaluate(model, data.train, data.test, ks=(5, 10))
    assert losses[-1] < losses[0] - 0.1
    assert after['recall@10'] > before['recall@10'] + 0.1
    assert set(after) == {'recall@5', 'recall@10', 'ndcg@5', 'ndcg@10'}
    # A user sample gives a different, seeded estimate.
    part = evaluate(model, data.train, data.test, ks=(10, ), max_users=7)
    assert part == evaluate(model, data.train, data.test, ks=(10, ),
                            max_users=7)
    assert part['recall@10'] != after['recall@10']


def small_config(**kwargs) -> CERPConfig:
    values = dict(dim=8, bucket_size=20, threshold_init=-4.,
                  targets=(0.2, 0.1), baseline_epochs=2, prune_epochs=8,
                  retrain_epochs=2, finetune_epochs=1, batch_size=64,
                  lr=1e-2, threshold_lr=0.2, threshold_weight_decay=1e-2,
                  gamma_init=0.1, ks=(10, ))
    values.update(kwargs)
    return CERPConfig(**values)


def make_runner(config, data, out_dir=None, logs=None):
    return CERPRunner(
        config, data, lightgcn_builder(data, config.dim),
        lambda seed: make_sampler(data.train, data.num_users, data.num_items,
                                  config.num_negatives, config.batch_size,
                                  seed), out_dir=out_dir,
        log=(logs.append if logs is not None else lambda s: None))


def test_runner_two_phase_procedure():
    data = block_data()
    logs = []
    state = make_runner(small_config(), data, logs=logs).run()
    assert state['finished']
    prune = state['prune']
    assert prune['reached'] == [0.2, 0.1] and prune['missing'] == []
    assert set(state['results']) == {
        'full', 'retrain@0.2', 'retrain@0.1', 'finetune@0.2',
        'finetune@0.1'
    }
    # The retrained models keep the snapshot's memory: at most the target.
    for t in (0.2, 0.1):
        for mode in ('retrain', 'finetune'):
            res = state['results'][f'{mode}@{t:g}']
            assert res['full_fraction'] <= t
            assert 0 <= res['recall@10'] <= 1
    assert state['results']['full']['full_fraction'] == 1.0
    # Phase 1 stopped as soon as the last target was reached.
    prune_epochs = [h for h in state['history'] if h['stage'] == 'prune']
    assert len(prune_epochs) < 8
    assert any('target 0.1 reached' in line for line in logs)


def test_runner_reports_unreached_targets():
    data = block_data()
    config = small_config(threshold_lr=1e-4, prune_epochs=1,
                          baseline_epochs=0, retrain_epochs=1,
                          finetune_epochs=0, targets=(0.5, 0.01))
    with pytest.warns(UserWarning, match='0.01.*NOT reached'):
        state = make_runner(config, data).run()
    assert state['prune']['missing'] == [0.01]
    assert list(state['results']) == ['retrain@0.5']


def test_runner_resume_is_exact(tmp_path):
    data = block_data()
    config = small_config(finetune_epochs=0, baseline_epochs=1,
                          retrain_epochs=1)
    straight = make_runner(config, data).run()
    # Interrupt twice: inside the baseline and inside phase 1.
    part = make_runner(config, data, out_dir=str(tmp_path)).run(stop_after=1)
    assert not part['finished']
    part = make_runner(config, data, out_dir=str(tmp_path)).run(
        resume=True, stop_after=2)
    assert not part['finished'] and part['current']['stage'] == 'prune'
    resumed = make_runner(config, data, out_dir=str(tmp_path)).run(
        resume=True)
    assert resumed['finished']
    assert resumed['results'].keys() == straight['results'].keys()
    for name, res in straight['results'].items():
        for key in ('recall@10', 'ndcg@10', 'nonzero'):
            assert resumed['results'][name][key] == res[key], (name, key)
    with pytest.raises(ValueError, match='another configuration'):
        make_runner(small_config(lr=0.5), data,
                    out_dir=str(tmp_path)).run(resume=True)


def test_sample_eval_users_keeps_whole_users_and_is_seeded():
    from pyg_cerp.train.loop import sample_eval_users
    gen = torch.Generator().manual_seed(0)
    train = torch.stack([torch.randint(50, (400, ), generator=gen),
                         torch.randint(30, (400, ), generator=gen)])
    test = torch.stack([torch.arange(50), torch.zeros(50, dtype=torch.long)])
    tr, te = sample_eval_users(train, test, 50, 10, seed=3)
    users = te[0].unique()
    assert users.numel() == 10
    assert bool(torch.isin(tr[0], users).all())
    # Every training edge of a sampled user is kept.
    assert tr.size(1) == int(torch.isin(train[0], users).sum())
    tr2, te2 = sample_eval_users(train, test, 50, 10, seed=3)
    assert torch.equal(te, te2)
    assert sample_eval_users(train, test, 50, None)[0] is train


@pytest.mark.parametrize('kwargs,match', [
    (dict(lr=float('inf')), "'lr' must be a finite"),
    (dict(threshold_lr=float('nan')), "'threshold_lr' must be a finite"),
    (dict(gamma_init=float('nan')), "'gamma_init' must be a finite"),
    (dict(threshold_init=float('nan')), "'threshold_init' must be a finite"),
    (dict(gamma_init=-1.), r"'gamma_init' must be in \[0, inf\)"),
    (dict(gamma_decay=float('nan')), "'gamma_decay' must be a finite"),
    (dict(targets=(0.5, 0.)), r"'targets' must be in \(0, 1\)"),
    (dict(targets=(1.,)), r"'targets' must be in \(0, 1\)"),
    (dict(targets=(float('nan'),)), "'targets' must be a finite"),
    (dict(eval_users=0), "'eval_users' must be positive"),
    (dict(ks=(2.5,)), "'ks' must be positive integers"),
    (dict(target_unit='x'), "'target_unit' must be"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        small_config(**kwargs)


def test_target_below_one_stored_value_is_refused_before_training():
    data = block_data()
    # 2 b d = 320 meta values: 0.001 of them is less than one value.
    config = small_config(targets=(0.5, 0.001), target_unit='meta')
    runner = make_runner(config, data)
    runner._train_epoch = None  # training would fail differently
    with pytest.raises(ValueError, match=r"target 0.001 .* fewer than one "
                       r"stored value"):
        runner.run()


def test_empty_test_set_is_refused():
    data = block_data()
    data = data._replace(test=data.test[:, :0])
    with pytest.raises(ValueError, match="'data.test' has no"):
        make_runner(small_config(), data)


def test_non_finite_loss_stops_training(tmp_path):
    data = block_data()
    runner = make_runner(small_config(), data, out_dir=str(tmp_path))
    real = runner._train_epoch

    def diverging(*args, **kwargs):
        stats = real(*args, **kwargs)
        stats['loss'] = float('nan')
        return stats

    runner._train_epoch = diverging
    with pytest.raises(FloatingPointError, match="diverged in stage 'full' "
                       "epoch 1: the loss is nan"):
        runner.run()
    assert not (tmp_path / 'checkpoint.pt').exists()  # nothing saved


def test_resume_refuses_other_data_and_corrupted_checkpoint(tmp_path):
    from pyg_cerp.utils.io import CheckpointError
    from pyg_cerp.train import ResumeError
    data = block_data()
    config = small_config(baseline_epochs=2)
    make_runner(config, data, out_dir=str(tmp_path)).run(stop_after=1)
    other = block_data(seed=1)  # same counts, other pairs
    with pytest.raises(ResumeError, match="other data.*'train_sha256'"):
        make_runner(config, other, out_dir=str(tmp_path)).run(resume=True)
    # One flipped byte inside tensor data is detected.
    from pyg_cerp.utils.io import safe_load
    path = tmp_path / 'checkpoint.pt'
    state = safe_load(path)
    weight = next(iter(state['current']['model'].values()))
    raw = bytearray(path.read_bytes())
    pos = raw.find(weight.numpy().tobytes())
    assert pos > 0
    raw[pos + 7] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match='checkpoint.pt'):
        make_runner(config, data, out_dir=str(tmp_path)).run(resume=True)


def test_second_run_on_same_folder_fails(tmp_path):
    import socket
    import subprocess
    proc = subprocess.Popen(['sleep', '30'])
    try:
        (tmp_path / '.lock').write_text(f'{socket.gethostname()} '
                                        f'{proc.pid}\n')
        with pytest.raises(RuntimeError, match='in use by another run'):
            make_runner(small_config(), block_data(),
                        out_dir=str(tmp_path)).run()
    finally:
        proc.kill()
        proc.wait()
