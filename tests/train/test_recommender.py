import os
import sys

import pytest
import torch

from pyg_cerp.train import Recommender
from pyg_cerp.train.recommender import pair_scores

sys.path.insert(0, os.path.dirname(__file__))
from test_trainer import block_data, lightgcn_builder  # noqa: E402


def _reference(emb, users, items):
    # The broadcast form: gather, multiply, sum.
    return (emb[users].unsqueeze(1) * emb[items]).sum(-1)


def _case(dtype, B=7, m=5, N=30, d=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(N, d, generator=gen, dtype=dtype)
    users = torch.randint(N, (B, ), generator=gen)
    items = torch.randint(N, (B, m), generator=gen)
    items[0, 1] = items[0, 0]  # A repeated pair.
    items[1, :] = users[1]  # A user scored against its own row.
    return emb, users, items


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_pair_scores_match_the_broadcast_form(dtype):
    emb, users, items = _case(dtype)
    grad = torch.randn(items.shape, dtype=dtype)
    out = []
    for fn in (pair_scores, _reference):
        x = emb.clone().requires_grad_()
        scores = fn(x, users, items)
        (scores * grad).sum().backward()
        out.append((scores.detach(), x.grad))
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[0][0], out[1][0], **tol)
    torch.testing.assert_close(out[0][1], out[1][1], **tol)


def test_pair_scores_gradient():
    emb, users, items = _case(torch.float64, B=4, m=3, N=9, d=3)
    emb.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: pair_scores(x, users, items), (emb, ))


def test_pair_scores_of_other_dtypes_take_the_gather_form():
    emb, users, items = _case(torch.float32)
    half = emb.to(torch.bfloat16)
    torch.testing.assert_close(pair_scores(half, users, items).float(),
                               _reference(emb, users, items), rtol=0.05,
                               atol=0.05)


@pytest.mark.parametrize('B,m', [(0, 3), (4, 0)])
def test_empty_pair_scores_stay_in_the_graph(B, m):
    # An empty shard of a distributed step must still back-propagate (the
    # propagation's backward is collective).
    emb = torch.randn(6, 2, requires_grad=True)
    users = torch.zeros(B, dtype=torch.long)
    items = torch.zeros(B, m, dtype=torch.long)
    scores = pair_scores(emb, users, items)
    assert scores.shape == (B, m) and scores.grad_fn is not None
    scores.sum().backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_lightgcn_candidate_scores():
    # BPR scores exactly those of scores(); the extra items' scores those of
    # the default one-call form; gradients reach the embedding.
    data = block_data()
    torch.manual_seed(0)
    model = lightgcn_builder(data, 8)(torch.nn.Embedding(140, 8))
    gen = torch.Generator().manual_seed(1)
    users = torch.randint(60, (16, ), generator=gen)
    pos = torch.randint(80, (16, ), generator=gen)
    neg = torch.randint(80, (16, 3), generator=gen)
    extra = torch.randint(80, (16, 7), generator=gen)
    pos_s, neg_s, extra_s = model.candidate_scores(users, pos, neg, extra)
    want_pos, want_neg = model.scores(users, pos, neg)
    assert torch.equal(pos_s, want_pos) and torch.equal(neg_s, want_neg)
    default = Recommender.candidate_scores(model, users, pos, neg, extra)
    torch.testing.assert_close(extra_s, default[2])
    extra_s.sum().backward()
    assert model.embedding.weight.grad.abs().sum() > 0
