import os
import sys

import pytest
import torch
import torch.nn.functional as F

from pyg_cerp.nn import CompositionalEmbedding
from pyg_cerp.train import (ConvergedRunner, EarlyStopping, Split,
                            make_optimizer, make_sampler, train_epoch,
                            train_step)
from pyg_cerp.train import fit
from pyg_cerp.train.distill import RankingDistillation, teacher_top_items

sys.path.insert(0, os.path.dirname(__file__))
from test_trainer import block_data, lightgcn_builder  # noqa: E402

DATA = block_data()
N = DATA.num_users + DATA.num_items


def random_teacher(dim=16, seed=1):
    # A teacher whose ranking the data alone does not teach.
    torch.manual_seed(seed)
    teacher = lightgcn_builder(DATA, dim)(torch.nn.Embedding(N, dim))
    with torch.no_grad():
        teacher.embedding.weight.normal_(0., 1.)
    return teacher


def train_student(distill, epochs=4, embedding=None):
    torch.manual_seed(0)
    model = lightgcn_builder(DATA, 16)(
        embedding if embedding is not None else
        CompositionalEmbedding(N, 16, 20))
    opt = make_optimizer(model, lr=2e-2)
    sampler = make_sampler(DATA.train, DATA.num_users, DATA.num_items, 5,
                           128, seed=0)
    losses = [train_epoch(model, opt, sampler, e, distill=distill)
              for e in range(epochs)]
    return model, losses


def agreement(model, top):
    mine = teacher_top_items(model, top.size(1), DATA.train)
    return float((mine.unsqueeze(-1) == top.unsqueeze(1)).any(-1).float()
                 .mean())


def test_weight_zero_is_the_step_without_distillation():
    teacher = random_teacher()
    plain, plain_losses = train_student(None)
    zero, zero_losses = train_student(
        RankingDistillation(teacher, 0., num_samples=7, top_k=3))
    for key, value in plain.state_dict().items():
        other = zero.state_dict()[key]
        assert (torch.equal(value, other) if torch.is_tensor(value) else
                value == other), key
    drop = lambda stats: {k: v for k, v in stats.items() if k != 'time'}
    assert [drop(s) for s in plain_losses] == [drop(s) for s in zero_losses]
    assert 'distill' not in zero_losses[0]


def test_distillation_pulls_the_ranking_towards_the_teacher():
    teacher = random_teacher()
    top = teacher_top_items(teacher, 10, DATA.train)
    assert agreement(teacher, top) == 1.
    plain, _ = train_student(None)
    distill = RankingDistillation(teacher, 20., num_samples=40, top_k=10)
    student, stats = train_student(distill)
    assert stats[0]['distill'] > 0
    assert stats[0]['loss'] == pytest.approx(
        stats[0]['bpr'] + stats[0]['distill'], rel=1e-5)
    base = agreement(plain, top)
    assert base < 0.2  # About chance: 10 of the ~65 unseen items.
    assert agreement(student, top) > base + 0.05
    # The teacher is never updated and stays in evaluation mode.
    assert not teacher.training
    assert torch.equal(teacher_top_items(teacher, 10, DATA.train), top)
    # A full-table student can follow it much further.
    full, _ = train_student(RankingDistillation(teacher, 20.,
                                                num_samples=40),
                            epochs=30, embedding=torch.nn.Embedding(N, 16))
    assert agreement(full, top) > 0.6


def test_listwise_and_rd_terms():
    teacher = random_teacher()
    users = torch.tensor([0, 5, 9])
    pos = torch.tensor([1, 2, 3])
    neg = torch.tensor([[4, 5], [6, 7], [8, 9]])
    # A copy of the teacher as student: zero KL; a different one: positive.
    distill = RankingDistillation(teacher, 2., num_samples=4, temperature=2.)
    same = random_teacher().eval()  # The same weights.
    bpr, kd = distill.bpr_and_distill(same, users, pos, neg)
    assert float(kd.detach()) == pytest.approx(0., abs=1e-6)
    assert torch.allclose(bpr, same.loss(users, pos, neg))
    other = random_teacher(seed=2).eval()
    items = torch.cat([pos.unsqueeze(1), neg,
                       torch.tensor([[0, 1], [2, 3], [4, 5]])], 1)
    s = distill.teacher_scores(users, items) * 0. + torch.randn(3, 5)
    t = distill.teacher_scores(users, items)
    p_t = torch.softmax(t / 2., 1)
    want = 4. * (p_t * (p_t.log() - torch.log_softmax(s / 2., 1))).sum(
        1).mean()
    assert torch.allclose(distill.loss(users, items, s), want, atol=1e-6)
    assert float(distill.bpr_and_distill(other, users, pos, neg)[1]
                 .detach()) > 0
    # The teacher's LightGCN scores: the pair scores of its own scores().
    p, n = teacher.eval().scores(users, items[:, 0], items[:, 1:])
    assert torch.allclose(t, torch.cat([p.unsqueeze(1), n], 1), atol=1e-5)
    # RD: -sum_r w_r log sigma(s_r), w_r ~ exp(-r / lambda).
    rd = RankingDistillation(teacher, 1., loss='rd', top_k=3,
                             rank_decay=2.)
    s = torch.randn(3, 3)
    w = torch.exp(-torch.arange(1., 4.) / 2.)
    want = -(F.logsigmoid(s) * w / w.sum()).sum(1).mean()
    assert torch.allclose(rd.loss(users, None, s), want, atol=1e-6)
    extra = rd.candidates(users, pos, neg)
    assert torch.equal(extra, rd.top_items()[users])
    assert 'rd' in repr(rd) and 'top_k=3' in repr(rd)


def test_candidates_and_global_random_stream():
    teacher = random_teacher()
    distill = RankingDistillation(teacher, 1., num_samples=6, top_k=4,
                                  exclude=DATA.train, seed=3)
    users = torch.tensor([0, 1, 2, 3])
    pos = torch.zeros(4, dtype=torch.long)
    neg = torch.zeros(4, 5, dtype=torch.long)
    state = torch.get_rng_state()
    extra = distill.candidates(users, pos, neg)
    assert torch.equal(torch.get_rng_state(), state)  # Own generator.
    assert extra.shape == (4, 10) and extra.dtype == torch.long
    assert int(extra.max()) < DATA.num_items
    top = distill.top_items()
    assert top.shape == (DATA.num_users, 4)
    train = set(map(tuple, DATA.train.t().tolist()))
    assert not any((u, i) in train for u in range(DATA.num_users)
                   for i in top[u].tolist())
    again = RankingDistillation(teacher, 1., num_samples=6, top_k=4,
                                exclude=DATA.train, seed=3)
    assert torch.equal(again.candidates(users, pos, neg), extra)


@pytest.mark.parametrize('kwargs, match', [
    (dict(weight=-1.), 'weight'),
    (dict(loss='kl'), 'loss'),
    (dict(loss='rd'), 'top_k'),
    (dict(temperature=0.), 'temperature'),
    (dict(top_k=10**6), 'top_k'),
    (dict(num_samples=-1), 'num_samples'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RankingDistillation(random_teacher(), **kwargs)
    with pytest.raises(TypeError, match='Recommender'):
        RankingDistillation(torch.nn.Linear(2, 2))


def test_step_and_fit_accept_distill_only_as_the_term():
    model = lightgcn_builder(DATA, 8)(torch.nn.Embedding(N, 8))
    opt = make_optimizer(model)
    batch = (torch.tensor([0, 1]), torch.tensor([0, 1]),
             torch.tensor([[2], [3]]))
    with pytest.raises(TypeError, match='RankingDistillation'):
        train_step(model, opt, batch, distill=object())
    # fit passes it to every epoch; weight 0 gives fit without it.
    sampler = make_sampler(DATA.train, DATA.num_users, DATA.num_items, 2, 64,
                           seed=0)

    def run(distill):
        torch.manual_seed(0)
        m = lightgcn_builder(DATA, 8)(torch.nn.Embedding(N, 8))
        counter = iter(range(10))  # Every epoch improves: the last is kept.
        res = fit(m, make_optimizer(m, lr=1e-2), sampler,
                  lambda r: {'ndcg@20': float(next(counter))},
                  EarlyStopping(max_epochs=2, patience=2),
                  distill=distill)
        return m, res

    (a, ra), (b, rb) = run(None), run(RankingDistillation(random_teacher(8),
                                                          0.))
    assert ra.history == rb.history
    assert torch.equal(a.embedding.weight, b.embedding.weight)
    c, rc = run(RankingDistillation(random_teacher(8), 5., num_samples=5))
    assert not torch.equal(a.embedding.weight, c.embedding.weight)


def _runner(prune_epochs=6, bucket_ratios=(2., ), **kwargs):
    # A tiny ConvergedRunner on block_data (also used by test_methods and
    # test_stages).
    from pyg_cerp.train import CERPConfig
    split = Split(DATA.train, DATA.test[:, ::2], DATA.test[:, 1::2],
                  DATA.num_users, DATA.num_items)
    config = CERPConfig.preset('faithful', dim=8, batch_size=64,
                               prune_epochs=prune_epochs, prune_speed=40.,
                               ks=(10, 20))
    return ConvergedRunner(
        split, lightgcn_builder(DATA, 8),
        lambda ei, seed: make_sampler(ei, DATA.num_users, DATA.num_items, 2,
                                      64, seed),
        config, EarlyStopping(max_epochs=2, patience=1),
        bucket_ratios=bucket_ratios, log=lambda s: None, **kwargs)


def test_converged_runner_selects_the_weight_on_validation():
    plain = _runner().run('qr-mul', 0.3, 0)
    assert plain['distill'] == 0. and plain['distill_sweep'] == {}
    runner = _runner(distill_weights=(0., 2.),
                     distill_options=dict(num_samples=8))
    out = runner.run('qr-mul', 0.3, 0)
    sweep = out['distill_sweep']
    assert sorted(sweep) == [0., 2.]
    # Weight 0 is the run without distillation, bit for bit.
    assert sweep[0.] == plain['valid_ndcg@20']
    assert out['distill'] == max(sweep, key=lambda w: (sweep[w], -w))
    assert out['valid_ndcg@20'] == max(sweep.values())
    if out['distill'] == 0.:
        assert out['ndcg@20'] == plain['ndcg@20']
    # Per cell, the runner's weights can be replaced.
    only = runner.run('qr-mul', 0.3, 0, distill_weights=(0., ))
    assert only['distill_sweep'] == {0.: plain['valid_ndcg@20']}
    assert only['ndcg@20'] == plain['ndcg@20']
    with pytest.raises(ValueError, match='distill_weights'):
        runner.run('qr-mul', 0.3, 0, distill_weights=(-2., ))
    # The teacher is the converged full table, trained once per seed.
    assert (0, 'float32') in runner._full
    assert runner.teacher(0) is runner.teacher(0)
    assert not runner.teacher(0).training
    full = runner.run('full', 1., 0)
    assert full['distill'] == 0. and full['distill_sweep'] == {}
    # Magnitude and CERP report the sweep too.
    cerp = runner.run('cerp', 0.3, 0)
    assert sorted(cerp['distill_sweep']) == [0., 2.]
    assert cerp['bucket_size'] is not None


def test_converged_runner_rejects_bad_distillation_arguments():
    with pytest.raises(ValueError, match='distill_weights'):
        _runner(distill_weights=(-1., ))
    with pytest.raises(ValueError, match='distill_options'):
        _runner(distill_weights=(1., ), distill_options=dict(wieght=2.))
    with pytest.raises(ValueError, match='distill_options'):
        _runner(distill_options=dict(teacher=None))
