import math

import pytest
import torch
from torch_geometric.nn.models import LightGCN

from pyg_cerp.nn.baselines import (FullEmbedding, HashEmbedding,
                                   PEPEmbedding, QREmbedding, budget_rows)
from pyg_cerp.nn.compositional import CompositionalEmbedding
from pyg_cerp.nn.mlp import MLPScorer


def make(kind, n=100, d=8, fraction=0.2, **kwargs):
    torch.manual_seed(0)
    if kind == 'cerp':  # kwargs: bucket_size, threshold_init.
        return CompositionalEmbedding(n, d, **kwargs)
    if kind == 'full':
        return FullEmbedding(n, d, **kwargs)
    if kind == 'pep':
        return PEPEmbedding(n, d, threshold_init=kwargs.pop('s', -5.),
                            **kwargs)
    if kind == 'qr':
        return QREmbedding.for_budget(n, d, fraction, **kwargs)
    if kind == 'hash':
        return HashEmbedding.for_budget(n, d, fraction, **kwargs)
    if kind == 'hash-mod':
        return HashEmbedding.for_budget(n, d, fraction, hash='mod', **kwargs)
    raise ValueError(kind)


KINDS = ['full', 'pep', 'qr', 'hash', 'hash-mod']


@pytest.mark.parametrize('kind', KINDS)
def test_shapes_and_weight_equals_forward(kind):
    emb = make(kind)
    assert emb.weight.shape == (100, 8)
    assert torch.equal(emb.weight, emb(torch.arange(100)))
    assert emb(torch.tensor([[3, 4, 5]])).shape == (1, 3, 8)
    assert emb(torch.empty(0, dtype=torch.long)).shape == (0, 8)
    assert emb.num_full_params == 800
    assert 0 < emb.full_table_fraction() <= 1
    assert emb.nbytes() > 0
    assert str(100) in repr(emb)


@pytest.mark.parametrize('kind', KINDS)
def test_bad_ids(kind):
    emb = make(kind)
    with pytest.raises(IndexError, match='100'):
        emb(torch.tensor([0, 100]))
    with pytest.raises(IndexError, match='-1'):
        emb(torch.tensor([-1]))
    with pytest.raises(TypeError, match='float'):
        emb(torch.tensor([1.]))


@pytest.mark.parametrize('kind', KINDS)
def test_gradients_flow_through_weight_and_forward(kind):
    emb = make(kind)
    (emb.weight.pow(2).sum() + emb(torch.tensor([1, 2])).sum()).backward()
    grads = [p.grad for p in emb.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize('kind', ['pep', 'qr', 'hash'])
def test_inplace_init_on_weight_resets_for_real(kind):
    emb = make(kind)
    before = [p.detach().clone() for p in emb.parameters()]
    torch.nn.init.xavier_uniform_(emb.weight)
    after = list(emb.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after))
    with pytest.raises(RuntimeError, match=type(emb).__name__):
        emb.weight.add_(1.)
    assert type(emb.weight * 2) is torch.Tensor


@pytest.mark.parametrize('n,fraction', [(100, 0.2), (70839, 0.1),
                                        (70839, 0.05), (70839, 0.01),
                                        (12345, 0.033)])
def test_parameter_count_fits_budget(n, fraction):
    d = 4
    budget = fraction * n * d
    qr = QREmbedding.for_budget(n, d, fraction)
    n_qr = sum(p.numel() for p in qr.parameters())
    assert n_qr == qr.num_nonzero() <= budget + 1e-6
    # The largest m that fits: one more remainder row would not fit.
    if qr.num_remainder < n:
        assert QREmbedding.num_rows(n, qr.num_remainder + 1) * d > budget
    # Unique pairs of rows for every entity.
    r_row, q_row = qr.hash_index(torch.arange(n))
    assert (q_row * qr.num_remainder + r_row).unique().numel() == n
    assert int(q_row.max()) < qr.num_quotient

    hs = HashEmbedding.for_budget(n, d, fraction)
    n_hs = sum(p.numel() for p in hs.parameters())
    assert n_hs == hs.num_nonzero() <= budget + 1e-6
    assert (hs.num_buckets + 1) * d > budget
    rows = hs.hash_index(torch.arange(n))
    assert int(rows.min()) >= 0 and int(rows.max()) < hs.num_buckets


def test_budget_errors():
    with pytest.raises(ValueError, match='at least'):
        QREmbedding.for_budget(70839, 64, 0.005)  # needs ~2 sqrt(N) rows
    with pytest.raises(ValueError, match='fraction'):
        HashEmbedding.for_budget(100, 4, 0.)
    with pytest.raises(ValueError, match='fraction'):
        budget_rows(100, 1.5)
    assert budget_rows(100, 0.1) == 10
    with pytest.raises(ValueError, match='num_remainder'):
        QREmbedding(10, 4, 11)
    with pytest.raises(ValueError, match='num_buckets'):
        HashEmbedding(10, 4, 0)
    with pytest.raises(ValueError, match='hash'):
        HashEmbedding(10, 4, 3, hash='md5')
    with pytest.raises(TypeError, match='embedding_dim'):
        PEPEmbedding(10, 4.0)


def test_qr_composes_rows_by_hand():
    emb = QREmbedding(10, 2, 4)  # m = 4, ceil(10/4) = 3 quotient rows
    assert emb.num_quotient == 3
    assert torch.equal(emb(torch.tensor(7)), emb.R[3] + emb.Q[1])


def test_hash_mod_and_universal():
    emb = HashEmbedding(10, 2, 4, hash='mod')
    assert emb.hash_index(torch.arange(10)).tolist() == [
        0, 1, 2, 3, 0, 1, 2, 3, 0, 1
    ]
    uni = HashEmbedding(1000, 2, 17, seed=3)
    a, c = int(uni.hash_a), int(uni.hash_c)
    k = torch.arange(1000)
    expected = ((a * k + c) % (2**31 - 1)) % 17
    assert torch.equal(uni.hash_index(k), expected)
    # Deterministic in the seed, stored in the state dict.
    assert int(HashEmbedding(1000, 2, 17, seed=3).hash_a) == a
    assert 'hash_a' in uni.state_dict()


def test_full_embedding_is_an_embedding():
    emb = make('full')
    assert isinstance(emb, torch.nn.Embedding)
    assert emb.num_nonzero() == 800 and emb.full_table_fraction() == 1.
    assert emb.nbytes() == 800 * 4
    bound = math.sqrt(6 / (100 + 8))  # Xavier, not N(0, 1)
    assert float(emb.weight.detach().abs().max()) <= bound


# CERP: LightGCN(n, 16) with b = 9, S = -6, the loss below 0.8 of the
# first; the MLP with b = 8, S = -8, 50 steps and the loss below half.
CERP_LIGHTGCN = dict(d=16, bucket_size=9, threshold_init=-6.)
CERP_MLP = dict(d=8, bucket_size=8, threshold_init=-8.)


@pytest.mark.parametrize('precision', ['float32', 'int8'])
@pytest.mark.parametrize('kind', ['cerp'] + KINDS)
def test_inside_pyg_lightgcn(kind, precision):
    gen = torch.Generator().manual_seed(0)
    nu, ni = 30, 40
    u = torch.randint(nu, (200, ), generator=gen)
    i = torch.randint(ni, (200, ), generator=gen) + nu
    edge_index = torch.stack([torch.cat([u, i]), torch.cat([i, u])])
    n = nu + ni
    args = CERP_LIGHTGCN if kind == 'cerp' else dict(d=8, fraction=0.3)
    model = LightGCN(n, args['d'], num_layers=2)
    model.embedding = make(kind, n=n, precision=precision, **args)
    before = [p.detach().clone() for p in model.embedding.parameters()]
    model.reset_parameters()  # Must not fail, must reset for real.
    assert not torch.equal(before[0], next(model.embedding.parameters()))
    # The same checks as PyG's own LightGCN tests.
    pred = model(edge_index, edge_index[:, :10])
    assert pred.shape == (10, )
    top = model.recommend(edge_index, src_index=torch.arange(nu),
                          dst_index=torch.arange(nu, n), k=5)
    assert top.shape == (nu, 5) and bool((top >= nu).all())

    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(30):
        pos = edge_index[:, :200]
        neg = torch.stack([pos[0], torch.randint(nu, n, (200, ),
                                                 generator=gen)])
        out = model(edge_index, torch.cat([pos, neg], dim=1))
        loss = model.recommendation_loss(out[:200], out[200:],
                                         node_id=pos.flatten())
        assert loss > 0
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < (0.8 if kind == 'cerp' else 0.9) * losses[0]


@pytest.mark.parametrize('kind', ['cerp'] + KINDS)
def test_inside_mlp_scorer(kind):
    nu, ni = 20, 30
    cerp = kind == 'cerp'
    emb = make(kind, n=nu + ni, **(CERP_MLP if cerp else dict(fraction=0.3)))
    model = MLPScorer(nu, ni, emb, hidden_channels=None if cerp else (16, ))
    user = torch.randint(nu, (100, ), generator=torch.Generator().manual_seed(0))
    pos = torch.randint(ni, (100, ), generator=torch.Generator().manual_seed(1))
    neg = torch.randint(ni, (100, ), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    first = None
    for _ in range(50 if cerp else 40):
        loss = -torch.nn.functional.logsigmoid(
            model(user, pos) - model(user, neg)).mean()
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < (0.5 if cerp else 1.) * first
    model.eval()
    assert torch.allclose(model.score_all(user[:3]),
                          model(user[:3].view(3, 1), torch.arange(ni)),
                          atol=1e-5)


def test_qr_mul_combines_by_product_and_keeps_scale():
    torch.manual_seed(0)
    n, d = 1000, 16
    qr = QREmbedding(n, d, 40, operation='mul')
    idx = torch.tensor([0, 41, 999])
    assert torch.allclose(qr(idx), qr.R[idx % 40] * qr.Q[idx // 40])
    assert torch.allclose(qr.weight[idx], qr(idx))
    # The product starts at the variance of a Xavier-uniform N x d table.
    target = (6 / (n + d)) / 3
    assert float(qr.weight.var()) == pytest.approx(target, rel=0.15)
    add = QREmbedding(n, d, 40)
    assert add.operation == 'add'
    assert torch.allclose(add(idx), add.R[idx % 40] + add.Q[idx // 40])
    assert 'operation=mul' in repr(qr)
    big = QREmbedding.for_budget(n, d, 0.1, operation='mul')
    assert big.operation == 'mul' and big.num_nonzero() <= 0.1 * n * d
    with pytest.raises(ValueError, match='operation'):
        QREmbedding(n, d, 40, operation='concat')


@pytest.mark.parametrize('precision', ['float32', 'float16', 'int8'])
def test_sized_to_a_byte_budget(precision):
    from pyg_cerp.memory import stored_nbytes
    from pyg_cerp.nn.baselines import nbytes_rows
    n, d = 1000, 16
    nbytes = 4 * n * d // 10  # 10% of the full float32 table.
    row = {'float32': 64, 'float16': 32, 'int8': 16 + 4}[precision]
    assert nbytes_rows(d, nbytes, precision) == nbytes // row
    qr = QREmbedding.for_nbytes(n, d, nbytes, precision, operation='mul')
    hs = HashEmbedding.for_nbytes(n, d, nbytes, precision)
    for emb in (qr, hs):
        assert emb.precision == precision
        assert nbytes - row < stored_nbytes(emb) <= nbytes
    # The largest m: one more remainder row would not fit.
    assert QREmbedding.num_rows(n, qr.num_remainder + 1) * row > nbytes
    full = torch.randn(n, d)
    mag = PEPEmbedding.from_magnitude(full, nbytes=nbytes,
                                      precision=precision)
    kept = mag.num_nonzero()
    assert stored_nbytes(mag) <= nbytes < \
        stored_nbytes(PEPEmbedding.from_magnitude(
            full, (kept + 1) / (n * d), precision=precision))
    if precision == 'float32':  # Sizes as the fraction API at 4 B/value.
        assert hs.num_buckets == HashEmbedding.for_budget(n, d,
                                                          0.1).num_buckets


def test_byte_budget_errors():
    with pytest.raises(ValueError, match='nbytes=100'):
        HashEmbedding.for_nbytes(100, 64, 100, 'float16')
    with pytest.raises(ValueError, match="nbytes=1000 .int8."):
        QREmbedding.for_nbytes(10000, 4, 1000, 'int8')
    with pytest.raises(ValueError, match='exactly one'):
        PEPEmbedding.from_magnitude(torch.randn(10, 4), 0.1, nbytes=100)
    with pytest.raises(ValueError, match='keeps none'):
        PEPEmbedding.from_magnitude(torch.randn(10, 4), nbytes=10)
