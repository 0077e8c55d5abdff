import pytest
import torch

from pyg_cerp.memory import memory_report, stored_nbytes
from pyg_cerp.nn import (CompositionalEmbedding, FullEmbedding, HashEmbedding,
                         PEPEmbedding, QREmbedding, compose)
from pyg_cerp.nn.compact import CompactEmbedding, CompressedTable
from pyg_cerp.nn.quant import (check_precision, fake_quantize, quantize,
                               row_scale)

REDUCED = ['float16', 'int8', 'int4']


def table(rows=12, cols=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=gen) * 0.3
    x[torch.rand(rows, cols, generator=gen) < 0.4] = 0.
    x[3] = 0.  # An all-zero row (int8 scale 0).
    x[5, 2] = 1e-9  # Below float16's smallest subnormal.
    x[7, 0] = -x[7].abs().max() * 2  # A negative absmax.
    return x


def test_int8_by_hand():
    x = torch.tensor([[0.5, -1.27, 0.004], [0., 0., 0.]])
    scale = row_scale(x)
    assert torch.allclose(scale, torch.tensor([0.01, 0.]))
    values, s = quantize(x, 'int8')
    assert values.dtype == torch.int8 and values.tolist() == [50, -127, 0]
    assert torch.equal(s, scale)
    out = fake_quantize(x, 'int8')
    assert torch.allclose(out, torch.tensor([[0.5, -1.27, 0.], [0, 0, 0]]))
    assert (out[0] - x[0]).abs().max() <= scale[0] / 2


def test_int4_by_hand():
    x = torch.tensor([[0.5, -1.4, 0.04, 0.11], [0., 0., 0., 0.]])
    scale = row_scale(x, 'int4')
    assert torch.allclose(scale, torch.tensor([0.2, 0.]))
    values, s = quantize(x, 'int4')  # The non-zeros: 0.5, -1.4, 0.04, 0.11.
    assert values.dtype == torch.int8 and values.tolist() == [2, -7, 0, 1]
    assert torch.equal(s, scale)
    out = fake_quantize(x, 'int4')
    assert torch.allclose(out, torch.tensor([[0.4, -1.4, 0., 0.2],
                                             [0, 0, 0, 0]]))
    # Two values a byte, q + 8 in each half, the low half first.
    stored = CompressedTable.from_dense(x, 'bitmap', 'int4')
    assert stored.values.dtype == torch.uint8
    assert stored.values.tolist() == [(2 + 8) | (-7 + 8) << 4,
                                      (0 + 8) | (1 + 8) << 4]
    assert stored.nnz == 4 and stored.dtype_name == 'int4'
    assert stored.nbytes == 2 + 2 * 4 + 2  # Values, scales, bitmap.


@pytest.mark.parametrize('precision', REDUCED)
def test_stored_values_are_the_compact_ones(precision):
    x = table()
    stored = CompressedTable.from_dense(x, 'csr', precision)
    values, scale = quantize(x, precision)
    assert stored.nnz == values.numel()
    if precision == 'int4':  # Packed two a byte.
        assert stored.values.numel() == (values.numel() + 1) // 2
        values = stored.rows(torch.arange(x.size(0)))[x != 0]
        values = (values / stored.scale.unsqueeze(1).expand_as(x)[x != 0])
        assert torch.equal(values.round(), quantize(x, precision)[0].float())
    else:
        assert values.dtype == stored.values.dtype
        assert torch.equal(values, stored.values)
    assert (scale is None) == (stored.scale is None)
    if scale is not None:
        assert torch.equal(scale, stored.scale)


@pytest.mark.parametrize('layout', ['csr', 'bitmap'])
@pytest.mark.parametrize('precision', REDUCED)
def test_fake_quantize_is_the_decoded_export(precision, layout):
    x = table()
    out = fake_quantize(x, precision)
    decoded = CompressedTable.from_dense(x, layout, precision).to_dense()
    assert torch.equal(out, decoded)
    assert not torch.equal(out, x)  # It does round.
    # Row-local: quantising rows = rows of the quantised table.
    index = torch.tensor([[7, 3], [0, 7]])
    assert torch.equal(fake_quantize(x[index], precision), out[index])


def test_float32_is_the_identity_and_bad_names():
    x = table()
    assert fake_quantize(x, 'float32') is x
    assert fake_quantize(x, torch.float32) is x
    assert check_precision(torch.int8) == 'int8'
    with pytest.raises(ValueError, match="'precision'"):
        check_precision('bfloat16')
    for cls, args in ((CompositionalEmbedding, (10, 4, 5)),
                      (PEPEmbedding, (10, 4)), (QREmbedding, (10, 4, 5)),
                      (HashEmbedding, (10, 4, 5)), (FullEmbedding, (10, 4))):
        with pytest.raises(ValueError, match="'precision'"):
            cls(*args, precision='int2')


@pytest.mark.parametrize('precision', REDUCED)
def test_straight_through_gradient(precision):
    x = table().requires_grad_()
    weight = torch.randn(x.shape)
    (fake_quantize(x, precision) * weight).sum().backward()
    assert torch.equal(x.grad, weight)


def trained_cerp(precision, retrain):
    torch.manual_seed(0)
    emb = CompositionalEmbedding(200, 8, 30, threshold_init=-2.5,
                                 precision=precision)
    opt = torch.optim.Adam(emb.parameters(), lr=0.05)
    if retrain:
        emb.freeze_masks()
    for _ in range(3):
        opt.zero_grad()
        emb(torch.arange(0, 200, 3)).pow(2).sum().neg().backward()
        opt.step()
    return emb


@pytest.mark.parametrize('retrain', [False, True])
@pytest.mark.parametrize('precision', REDUCED)
def test_cerp_weight_is_the_exported_weight(precision, retrain):
    emb = trained_cerp(precision, retrain)
    assert 0 < emb.num_nonzero() < emb.num_meta_params
    compact = emb.to_compact()  # dtype: the precision.
    assert compact.dtype_name == precision
    weight = emb.weight.detach()
    assert torch.equal(compact.weight, weight)
    assert torch.equal(compact.set_decode('lookup').weight, weight)
    index = torch.tensor([[0, 199], [57, 31]])
    assert torch.equal(emb(index).detach(), weight[index])
    assert torch.equal(compact(index), weight[index])
    # Not the float32 weight: training saw the rounding.
    plain = compose(*emb.pruned_tables(), emb.num_embeddings,
                    emb.rows_per_q).detach()
    assert not torch.equal(weight, plain)
    assert torch.equal(emb.to_compact('float32').weight, plain)
    # The bytes counted at the precision are the export's.
    assert stored_nbytes(emb) == compact.nbytes
    assert memory_report(emb, 'float32').nbytes == \
        emb.to_compact('float32').nbytes > compact.nbytes
    assert f'precision={precision}' in repr(emb)


def test_cerp_save_load_keeps_the_trained_scores(tmp_path):
    emb = trained_cerp('int8', retrain=True)
    emb.to_compact().save(tmp_path / 'emb.pt')
    loaded = CompactEmbedding.load(tmp_path / 'emb.pt')
    assert torch.equal(loaded.weight, emb.weight.detach())


def test_cerp_gradients_reach_tables_and_thresholds():
    emb = CompositionalEmbedding(100, 8, 12, threshold_init=-3.,
                                 precision='int8')
    emb(torch.arange(100)).sum().backward()
    for p in (emb.P, emb.Q, emb.threshold_P, emb.threshold_Q):
        assert p.grad is not None and p.grad.abs().sum() > 0


def decoded_weight(emb, precision):
    tables = {k: v.to_dense()
              for k, v in emb.compressed_tables(precision).items()}
    if isinstance(emb, QREmbedding):
        return compose(tables['R'], tables['Q'], emb.num_embeddings,
                       emb.num_remainder, emb.operation)
    if isinstance(emb, HashEmbedding):
        return tables['W'][emb.hash_index(torch.arange(emb.num_embeddings))]
    return tables['V' if isinstance(emb, PEPEmbedding) else 'weight']


def baseline(kind, precision):
    torch.manual_seed(0)
    n, d = 120, 8
    if kind == 'pep':
        emb = PEPEmbedding(n, d, threshold_init=-3., precision=precision)
    elif kind == 'magnitude':
        emb = PEPEmbedding.from_magnitude(torch.randn(n, d) * 0.1, 0.3,
                                          precision=precision)
    elif kind.startswith('qr'):
        emb = QREmbedding(n, d, 11, operation=kind[3:], precision=precision)
    elif kind == 'hash':
        emb = HashEmbedding(n, d, 40, precision=precision)
    else:
        emb = FullEmbedding(n, d, precision=precision)
    return emb


KINDS = ['pep', 'magnitude', 'qr-add', 'qr-mul', 'hash', 'full']


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('precision', REDUCED)
def test_baseline_weight_is_the_exported_weight(kind, precision):
    emb = baseline(kind, precision)
    opt = torch.optim.Adam(emb.parameters(), lr=0.05)
    for _ in range(2):
        opt.zero_grad()
        emb(torch.arange(0, 120, 7)).pow(2).sum().neg().backward()
        opt.step()
    weight = emb.weight.detach()
    assert torch.equal(weight, decoded_weight(emb, precision))
    index = torch.tensor([[0, 119], [64, 7]])
    assert torch.equal(emb(index).detach(), weight[index])
    assert not torch.equal(weight, decoded_weight(emb, 'float32'))
    assert stored_nbytes(emb) == stored_nbytes(emb, precision) < \
        stored_nbytes(emb, 'float32')
    assert f'precision={precision}' in repr(emb)


@pytest.mark.parametrize('kind', KINDS)
def test_float32_baselines_unchanged(kind):
    emb = baseline(kind, 'float32')
    assert 'precision' not in repr(emb)
    assert torch.equal(emb.weight.detach(), decoded_weight(emb, 'float32'))
    if kind == 'full':
        assert emb.weight is emb._parameters['weight']


def test_full_int8_keeps_its_parameter_and_resets():
    emb = FullEmbedding(50, 4, precision='int8')
    assert list(emb.state_dict()) == ['weight']
    assert isinstance(emb.state_dict()['weight'], torch.Tensor)
    before = emb.state_dict()['weight'].clone()
    torch.nn.init.xavier_uniform_(emb.weight)  # As PyG's LightGCN does.
    assert not torch.equal(before, emb.state_dict()['weight'])
    with pytest.raises(RuntimeError, match='in place'):
        emb.weight.mul_(2.)
    emb.weight.sum().backward()
    assert torch.equal(emb._parameters['weight'].grad, torch.ones(50, 4))
