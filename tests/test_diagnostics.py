import math

import pytest
import torch

from pyg_cerp.diagnostics import hash_balance, overlap_per_entity, overlap_rate
from pyg_cerp.nn.baselines import HashEmbedding, QREmbedding
from pyg_cerp.nn.compositional import CompositionalEmbedding


def test_overlap_by_hand():
    # N = 4, b = 2: entity k -> P[k % 2] + Q[k // 2].
    emb = CompositionalEmbedding(4, 4, 2, threshold_init=-100.)
    with torch.no_grad():
        emb.P.copy_(torch.tensor([[0., 1., 0., 1.], [0., 0., 1., 1.]]))
        emb.Q.copy_(torch.tensor([[1., 0., 1., 0.], [0., 1., 1., 1.]]))
    # k=0: P0,Q0 complementary -> 0; k=1: P1,Q0 both zero at dim 1 -> 1/4;
    # k=2: P0,Q1 both zero at dim 0 -> 1/4; k=3: P1,Q1 -> dim 0 -> 1/4.
    per = overlap_per_entity(emb)
    assert per.tolist() == [0., 0.25, 0.25, 0.25]
    assert overlap_per_entity(emb, torch.tensor([1, 0])).tolist() == [0.25, 0.]
    stats = overlap_rate(emb)
    assert stats.mean == pytest.approx(0.1875)
    assert stats.zero_p == pytest.approx(0.5)
    assert stats.zero_q == pytest.approx(0.375)
    # Per entity: (2/4 * 2/4), (3/4... ) -> computed from row fractions.
    zp = torch.tensor([0.5, 0.5, 0.5, 0.5])
    zq = torch.tensor([0.5, 0.5, 0.25, 0.25])
    assert stats.independent == pytest.approx(float((zp * zq).mean()))
    assert stats.composed_zero == pytest.approx(stats.mean)
    with pytest.raises(IndexError, match='4'):
        overlap_per_entity(emb, torch.tensor([4]))
    with pytest.raises(TypeError, match='compositional'):
        overlap_rate(torch.nn.Embedding(3, 2))


def test_overlap_unpruned_is_zero():
    emb = CompositionalEmbedding(50, 8, 10)
    assert overlap_rate(emb).mean == 0.


@pytest.mark.parametrize('n,b', [(100, 10), (101, 11), (70839, 5000),
                                 (37, 7), (29858 + 40981, 3542)])
def test_hash_balance_claims(n, b):
    p, q = hash_balance(CompositionalEmbedding(n, 2, b))
    # P (k mod b) is always balanced.
    assert p.balanced and set(p.histogram) <= {n // b, math.ceil(n / b)}
    assert sum(p.histogram.values()) == b
    assert sum(c * r for c, r in p.histogram.items()) == n
    # Q (k div ceil(N/b)): full rows of ceil(N/b), one short last row,
    # the rest unused.
    m = math.ceil(n / b)
    used = math.ceil(n / m)
    assert q.unused == b - used
    assert q.max_count == m
    assert q.histogram.get(m, 0) >= used - 1
    assert sum(c * r for c, r in q.histogram.items()) == n
    expected_balanced = set(q.histogram) <= {n // b, m}
    assert q.balanced == expected_balanced


def test_hash_balance_q_not_balanced_on_gowalla_sizes():
    _, q = hash_balance(CompositionalEmbedding(70839, 2, 5000))
    assert not q.balanced
    assert q.histogram == {0: 277, 9: 1, 15: 4722}
    assert 'NOT balanced' in q.summary()


def test_hash_balance_qr_and_hash():
    r, q = hash_balance(QREmbedding(100, 2, 30))
    assert r.histogram == {3: 20, 4: 10} and r.balanced
    assert q.histogram == {10: 1, 30: 3}
    (w, ) = hash_balance(HashEmbedding(100, 2, 10, hash='mod'))
    assert w.histogram == {10: 10} and w.balanced
    with pytest.raises(TypeError, match='hashed'):
        hash_balance(torch.nn.Embedding(3, 2))
