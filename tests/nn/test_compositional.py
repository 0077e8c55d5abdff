import math
import warnings

import pytest
import torch

from pyg_cerp.nn import CompositionalEmbedding, soft_threshold


def make(n=100, d=8, b=12, **kwargs):
    torch.manual_seed(0)
    return CompositionalEmbedding(n, d, b, **kwargs)


@pytest.mark.parametrize('n,b', [(100, 10), (101, 11), (70839, 5000),
                                 (50, 50), (37, 7)])
def test_hashing_is_balanced_and_unique(n, b):
    emb = CompositionalEmbedding(n, 2, b)
    p_row, q_row = emb.hash_index(torch.arange(n))
    m = math.ceil(n / b)
    assert int(p_row.max()) < b and int(q_row.max()) < b
    assert int(torch.bincount(p_row).max()) <= m
    assert int(torch.bincount(q_row).max()) <= m
    # Every (P row, Q row) pair is unique when b >= sqrt(N).
    pairs = p_row * b + q_row
    assert pairs.unique().numel() == n


def test_small_bucket_warns_and_shares_pairs():
    with pytest.warns(UserWarning, match='share both'):
        emb = CompositionalEmbedding(100, 2, 5)
    p_row, q_row = emb.hash_index(torch.arange(100))
    assert (p_row * 5 + q_row).unique().numel() < 100


def test_no_warning_at_sqrt_n():
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        CompositionalEmbedding(100, 2, 10)


def test_soft_threshold_hand_computed():
    value = torch.tensor([[0.9, -0.9, 0.2, -0.2, 0.0]])
    s = torch.zeros_like(value)  # sigmoid(0) = 0.5
    out = soft_threshold(value, s)
    assert torch.allclose(out, torch.tensor([[0.4, -0.4, 0.0, 0.0, 0.0]]))


def test_forward_composes_rows_by_hand():
    emb = CompositionalEmbedding(10, 3, 4, threshold_init=0.)  # tau = 0.5
    with torch.no_grad():
        emb.P.copy_(torch.arange(12.).view(4, 3) / 10 - 0.6)
        emb.Q.copy_(torch.linspace(-1, 1, 12).view(4, 3))
    p_hat = torch.sign(emb.P) * torch.relu(emb.P.abs() - 0.5)
    q_hat = torch.sign(emb.Q) * torch.relu(emb.Q.abs() - 0.5)
    # N = 10, b = 4: ceil(N/b) = 3, entity 7 -> P row 3, Q row 2.
    expected = p_hat[3] + q_hat[2]
    assert torch.allclose(emb(torch.tensor(7)), expected)
    assert emb(torch.tensor([[7, 7]])).shape == (1, 2, 3)


def test_weight_equals_forward_of_all_ids():
    for n, b in [(100, 12), (97, 10), (64, 64), (10, 1)]:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            emb = CompositionalEmbedding(n, 5, b, threshold_init=-1.)
        assert emb.weight.shape == (n, 5)
        assert torch.equal(emb.weight, emb(torch.arange(n)))


def test_gradients_reach_all_parameters():
    emb = make(threshold_init=-3.)
    out = emb(torch.tensor([0, 5, 99]))
    (out.pow(2).sum() + emb.pruning_loss()).backward()
    for name in ('P', 'Q', 'threshold_P', 'threshold_Q'):
        grad = getattr(emb, name).grad
        assert grad is not None and grad.abs().sum() > 0, name

    emb.zero_grad()
    emb.weight.sum().backward()
    assert emb.P.grad.abs().sum() > 0 and emb.Q.grad.abs().sum() > 0


def test_pruning_loss_thresholds_only_changes_only_the_value_gradient():
    emb = make(threshold_init=-2.)  # sigmoid(-2) = 0.12: some pruned
    index = torch.tensor([0, 5, 17, 63, 99, 5])

    def grads(**kwargs):
        emb.zero_grad(set_to_none=True)
        loss = emb.pruning_loss(index, reduction='sum', **kwargs)
        loss.backward()
        return loss.detach(), [None if p.grad is None else p.grad.clone()
                               for p in (emb.P, emb.Q, emb.threshold_P,
                                         emb.threshold_Q)]

    loss, (gP, gQ, gSP, gSQ) = grads()
    assert gP.abs().sum() > 0 and gSP.abs().sum() > 0
    loss2, (gP2, gQ2, gSP2, gSQ2) = grads(thresholds_only=True)
    assert torch.equal(loss, loss2)
    assert gP2 is None and gQ2 is None  # No value gradient ...
    assert torch.equal(gSP, gSP2) and torch.equal(gSQ, gSQ2)  # ... same.
    # Off by default and when False.
    assert grads(thresholds_only=False)[1][0] is not None


def test_pruning_loss_prefers_complementary_zero_patterns():
    # N = 4, b = 2: entity k -> P[k % 2] + Q[k // 2]; rows never zero together
    # when P zeroes the even and Q the odd dimensions.
    emb = CompositionalEmbedding(4, 4, 2, threshold_init=-100.)
    even = torch.tensor([0., 1., 0., 1.])
    odd = torch.tensor([1., 0., 1., 0.])
    with torch.no_grad():
        emb.P.copy_(even.repeat(2, 1))
        emb.Q.copy_(odd.repeat(2, 1))
    complementary = emb.pruning_loss()
    with torch.no_grad():
        emb.Q.copy_(even.repeat(2, 1))  # same zero positions as P
    overlapping = emb.pruning_loss()
    assert complementary < overlapping
    assert torch.isclose(complementary, torch.tensor(-4.), atol=1e-4)
    assert torch.isclose(overlapping, torch.tensor(-2.), atol=1e-4)
    assert torch.isclose(emb.pruning_loss(reduction='sum'),
                         torch.tensor(-8.), atol=1e-3)
    with pytest.raises(ValueError, match='reduction'):
        emb.pruning_loss(reduction='avg')


def test_pruning_loss_on_batch_uses_batch_rows():
    emb = make(threshold_init=-100.)
    idx = torch.tensor([1, 2, 2])
    expected = -torch.tanh(100 * emb(idx)).pow(2).sum() / 3
    assert torch.allclose(emb.pruning_loss(idx), expected)


def test_counting_and_densities():
    emb = CompositionalEmbedding(100, 4, 10, threshold_init=-100.)
    assert emb.num_meta_params == 80 and emb.num_full_params == 400
    assert emb.num_nonzero() == 80
    with torch.no_grad():
        emb.P[:5].zero_()
    assert emb.num_nonzero() == 60
    assert emb.meta_density() == pytest.approx(60 / 80)
    assert emb.full_table_fraction() == pytest.approx(60 / 400)
    with torch.no_grad():
        emb.threshold_Q.fill_(100.)  # tau = 1 > every xavier value
    assert emb.num_nonzero() == 20


def test_freeze_masks_keeps_values_and_blocks_thresholds():
    emb = make(threshold_init=-1.5)
    before = emb.weight.detach().clone()
    mask_p, mask_q = emb.masks()
    assert 0 < int(mask_p.sum()) < mask_p.numel()
    emb.freeze_masks()
    assert emb.is_retraining
    assert torch.allclose(emb.weight, before)
    assert not emb.threshold_P.requires_grad
    # Masked entries stay zero after an optimiser step.
    opt = torch.optim.SGD(emb.parameters(), lr=1.)
    emb.weight.sum().backward()
    opt.step()
    p_hat, q_hat = emb.pruned_tables()
    assert torch.equal(p_hat != 0, mask_p & (p_hat != 0))
    assert int((p_hat != 0).sum()) <= int(mask_p.sum())
    assert not bool((p_hat[~mask_p] != 0).any())


def test_freeze_masks_rewinds_to_initial_state():
    emb = make(threshold_init=-1.5)
    init = emb.initial_state()
    with torch.no_grad():
        emb.P.add_(1.)
    masks = emb.masks()
    emb.freeze_masks(masks, rewind_to=init)
    p_hat, _ = emb.pruned_tables()
    assert torch.equal(p_hat, init['P'] * masks[0])
    with pytest.raises(KeyError, match='Q'):
        emb.freeze_masks(rewind_to={'P': init['P']})
    with pytest.raises(ValueError, match='shape'):
        emb.freeze_masks((masks[0][:2], masks[1]))


def test_state_dict_round_trip_includes_masks_and_mode():
    emb = make(threshold_init=-1.5)
    emb.freeze_masks()
    state = emb.state_dict()
    other = make(threshold_init=-100.)
    other.load_state_dict(state)
    assert other.is_retraining and not other.threshold_P.requires_grad
    assert torch.equal(other.weight, emb.weight)
    assert torch.equal(other.mask_P, emb.mask_P)
    with pytest.raises(RuntimeError, match='expected'):
        CompositionalEmbedding(100, 8, 13).load_state_dict(state)


def test_reset_parameters_leaves_retrain_mode():
    emb = make(threshold_init=-1.5)
    emb.freeze_masks()
    emb.reset_parameters()
    assert not emb.is_retraining and emb.threshold_P.requires_grad
    assert torch.all(emb.threshold_P == -1.5)
    assert bool(emb.mask_P.all())


def test_inplace_on_weight_resets_or_raises():
    emb = make()
    old = emb.P.detach().clone()
    torch.nn.init.xavier_uniform_(emb.weight)
    assert not torch.equal(old, emb.P)
    old = emb.P.detach().clone()
    torch.nn.init.trunc_normal_(emb.weight)
    assert not torch.equal(old, emb.P)
    with pytest.raises(RuntimeError, match='in place'):
        emb.weight.add_(1.)
    with pytest.raises(RuntimeError, match='in place'):
        w = emb.weight
        w += 1
    # Out-of-place ops give plain tensors.
    assert type(emb.weight * 2) is torch.Tensor


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(bucket_size=0), ValueError, 'bucket_size'),
    (dict(bucket_size=101), ValueError, '101'),
    (dict(bucket_size=2.5), TypeError, 'bucket_size'),
    (dict(num_embeddings=0), ValueError, 'num_embeddings'),
    (dict(embedding_dim=-1), ValueError, 'embedding_dim'),
])
def test_bad_construction(kwargs, error, match):
    args = dict(num_embeddings=100, embedding_dim=4, bucket_size=10)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        CompositionalEmbedding(**args)


def test_bad_ids():
    emb = make()
    with pytest.raises(IndexError, match='100'):
        emb(torch.tensor([0, 100]))
    with pytest.raises(IndexError, match='-3'):
        emb(torch.tensor([-3]))
    with pytest.raises(TypeError, match='float'):
        emb(torch.tensor([1.0]))
    with pytest.raises(TypeError, match='bool'):
        emb(torch.tensor([True]))
    assert emb(torch.empty(0, dtype=torch.long)).shape == (0, 8)


def test_repr_names_sizes_and_sparsity():
    text = repr(CompositionalEmbedding(70839, 64, 5000))
    for part in ('70839', '64', 'bucket_size=5000', 'meta_density',
                 'full_table_fraction', 'mode=prune'):
        assert part in text


@pytest.mark.parametrize('n,b', [(100, 12), (97, 10), (64, 64), (10, 1),
                                 (50, 7), (13, 13)])
@pytest.mark.parametrize('op', ['add', 'mul'])
def test_compose_matches_indexing_and_gradcheck(n, b, op):
    from pyg_cerp.nn import compose
    gen = torch.Generator().manual_seed(0)
    P = torch.randn(b, 3, dtype=torch.double, generator=gen,
                    requires_grad=True)
    m = math.ceil(n / b)
    for m, rows in [(m, b), (b, math.ceil(n / b))]:  # CERP, then QR.
        Q = torch.randn(rows, 3, dtype=torch.double, generator=gen,
                        requires_grad=True)
        k = torch.arange(n)
        ref = (P[k % b] + Q[k // m] if op == 'add' else P[k % b] * Q[k // m])
        assert torch.equal(compose(P, Q, n, m, op), ref)
        assert torch.equal(compose(P, Q, k.view(2, -1) if n % 2 == 0 else k,
                                   m, op).reshape(n, 3), ref)
        for pad in (False, True):
            assert torch.autograd.gradcheck(
                lambda P, Q: compose(P, Q, n, m, op, pad_grad=pad), (P, Q))


def test_soft_threshold_gradients_match_operator_chain():
    torch.manual_seed(0)
    value = torch.randn(40, 6, dtype=torch.double, requires_grad=True)
    for shape in [(40, 6), (1, 6), (40, 1)]:
        s = torch.randn(*shape, dtype=torch.double, requires_grad=True)
        assert torch.autograd.gradcheck(soft_threshold, (value, s))
        ref = torch.sign(value) * torch.relu(value.abs() - torch.sigmoid(s))
        assert torch.allclose(soft_threshold(value, s), ref)


def test_pruning_loss_gradient():
    emb = CompositionalEmbedding(50, 4, 8, threshold_init=-3.).double()
    index = torch.tensor([0, 3, 3, 49, 17])
    assert torch.autograd.gradcheck(
        lambda p: emb.pruning_loss(index, K=3.) + 0 * p.sum(), (emb.P, ))
    ref = -torch.tanh(3. * emb(index)).pow(2).sum() / index.numel()
    assert torch.allclose(emb.pruning_loss(index, K=3.), ref)


@pytest.mark.parametrize('dtype', [torch.uint8, torch.int16])
@pytest.mark.parametrize('check', [True, False])
def test_narrow_integer_ids_rejected(dtype, check):
    # uint8 ids would be taken as a boolean mask (a (10, 8) tensor of other
    # rows), int16 ids fail inside torch: both are a named error.
    emb = CompositionalEmbedding(100, 8, 10, check_index=check)
    ids = torch.tensor([11, 12, 13, 14, 15, 16, 17, 18, 19, 21])
    with pytest.raises(TypeError, match=f"dtype {dtype}"):
        emb(ids.to(dtype))
    assert torch.equal(emb(ids.int()), emb(ids))


def test_load_state_dict_refuses_other_num_embeddings():
    # Same b and d, so every tensor has the same shape: only the stored
    # sizes tell the two apart.
    src, dst = make(n=100, b=12), make(n=120, b=12)
    with pytest.raises(RuntimeError, match=r"other sizes.*'num_embeddings'"
                       r": \(100, 120\)"):
        dst.load_state_dict(src.state_dict())
    same = make(n=100, b=12)
    assert not same.load_state_dict(src.state_dict()).missing_keys
    assert torch.equal(same.weight, src.weight)
    assert src.state_dict()['_extra_state'] == dict(
        num_embeddings=100, embedding_dim=8, bucket_size=12, operation='add')
    # A state of a product embedding does not load into a sum, and a state
    # saved before 'operation' existed (no such key) loads as a sum.
    mul = CompositionalEmbedding(100, 8, 12, operation='mul')
    with pytest.raises(RuntimeError, match=r"'operation': \('mul', 'add'\)"):
        same.load_state_dict(mul.state_dict())
    old = src.state_dict()
    del old['_extra_state']['operation']
    same.load_state_dict(old)
    with pytest.raises(RuntimeError, match=r"'operation': \('add', 'mul'\)"):
        mul.load_state_dict(old)


def test_product_composition():
    # operation='mul': e_k = P_hat[k mod b] * Q_hat[k div ceil(N/b)] in
    # forward, weight and the regulariser, initialised as QR's product (the
    # variance of a Xavier-uniform N x d table), exported bit for bit.
    torch.manual_seed(0)
    n, d, b = 1000, 16, 40
    emb = CompositionalEmbedding(n, d, b, operation='mul', precision='int8')
    assert 'operation=mul' in repr(emb)
    with torch.no_grad():
        emb.threshold_P.fill_(-3.)  # Prune some of both tables.
        emb.threshold_Q.fill_(-3.)
    idx = torch.randint(0, n, (64, ))
    P, Q = emb.quantized_tables()
    expected = P[idx % b] * Q[idx // emb.rows_per_q]
    assert 0 < int((expected == 0).sum()) < expected.numel()
    assert torch.equal(emb(idx), expected)
    assert torch.equal(emb.weight[idx], expected)
    p_hat, q_hat = emb.pruned_tables()
    raw = p_hat[idx % b] * q_hat[idx // emb.rows_per_q]
    assert torch.allclose(emb.pruning_loss(idx),
                          -(torch.tanh(100. * raw)**2).sum(-1).mean())
    emb.reset_parameters()
    s = (18. / (n + d))**0.25
    assert emb.P.abs().max() <= s and emb.P.abs().max() > 0.9 * s
    var = emb.weight.detach().var().item()
    assert 0.5 < var / (2. / (n + d)) < 2.  # Xavier: t^2 / 3 = 2 / (N + d).
    compact = emb.to_compact()
    assert 'operation=mul' in repr(compact)
    assert torch.equal(compact.weight, emb.weight.detach())
    assert torch.equal(compact.set_decode('lookup')(idx), emb(idx).detach())
    with pytest.raises(ValueError, match="'operation' must be"):
        CompositionalEmbedding(n, d, b, operation='max')


def test_threshold_init_must_be_finite():
    with pytest.raises(ValueError, match="'threshold_init' must be a finite"):
        make(threshold_init=float('nan'))


def test_freeze_masks_rewind_to_wrong_shape():
    emb = make()
    with pytest.raises(ValueError, match=r"'rewind_to\['P'\]' must have "
                       r"shape \(12, 8\) \(got \(3, 8\)\)"):
        emb.freeze_masks(rewind_to={'P': torch.zeros(3, 8),
                                    'Q': torch.zeros(3, 8)})
    assert not emb.is_retraining


def test_nan_is_not_counted_as_non_zero():
    emb = make(threshold_init=-2.)
    with torch.no_grad():
        emb.threshold_P[0, 0] = float('nan')
    with pytest.raises(FloatingPointError, match='1 nan value'):
        emb.num_nonzero()
    assert 'nonzero=nan' in repr(emb)
