import math
import os
import warnings

import pytest
import torch

from pyg_cerp.nn import CompositionalEmbedding
from pyg_cerp.memory import layout_nbytes
from pyg_cerp.nn.compact import CompactEmbedding, FormatError
from pyg_cerp.utils.io import content_digest

LAYOUTS = ['csr', 'bitmap', 'auto']
DECODES = ['cache', 'lookup']


def make(n=200, d=16, b=15, threshold_init=-2.5, seed=0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return CompositionalEmbedding(n, d, b, threshold_init=threshold_init)


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('decode', DECODES)
@pytest.mark.parametrize('n,b', [(200, 15), (10, 7), (37, 37), (50, 1)])
def test_float32_matches_training_module(layout, decode, n, b):
    emb = make(n=n, b=b)
    compact = emb.to_compact(torch.float32, layout=layout, decode=decode)
    assert isinstance(compact, CompactEmbedding)
    expected = emb.weight.detach()
    assert compact.weight.shape == (n, 16)
    assert (compact.weight - expected).abs().max() <= 1e-6
    idx = torch.randint(n, (7, 3))
    assert (compact(idx) - emb(idx).detach()).abs().max() <= 1e-6
    assert compact(idx).shape == (7, 3, 16)
    # Only the used rows of Q are stored.
    m = math.ceil(n / b)
    assert compact.Q.num_rows == math.ceil(n / m)
    assert compact.P.num_rows == b


def test_retrain_mode_and_exact_zeros():
    emb = make(threshold_init=-2.)
    emb.freeze_masks()
    with torch.no_grad():
        emb.P.add_(0.01)  # Masked entries stay zero in P_hat.
    compact = emb.to_compact()
    p_hat, q_hat = emb.pruned_tables()
    assert compact.nnz == emb.num_nonzero()
    assert torch.equal(compact.P.to_dense(), p_hat.detach())
    assert torch.equal(compact.Q.to_dense(),
                       q_hat.detach()[:emb.num_q_rows_used])


@pytest.mark.parametrize('layout', ['csr', 'bitmap'])
@pytest.mark.parametrize('decode', DECODES)
def test_reduced_precision_within_tolerance(layout, decode):
    emb = make(threshold_init=-3.)
    w = emb.weight.detach()
    p_hat, q_hat = (t.detach() for t in emb.pruned_tables())
    # float16: relative rounding 2^-11 per value, two values per entry.
    half = emb.to_compact(torch.float16, layout, decode).weight
    bound = (p_hat.abs().max() + q_hat.abs().max()) * 2.**-11
    assert (half - w).abs().max() <= bound
    # int8: at most half a scale step per value, s_r = absmax_r / 127.
    c8 = emb.to_compact('int8', layout, decode)
    assert c8.dtype_name == 'int8' and c8.P.values.dtype == torch.int8
    idx = torch.arange(emb.num_embeddings)
    p_row, q_row = emb.hash_index(idx)
    s_p = p_hat.abs().amax(1) / 127
    s_q = q_hat.abs().amax(1) / 127
    per_row = (s_p[p_row] + s_q[q_row]) / 2 + 1e-6
    err = (c8.weight - w).abs().amax(1)
    assert bool((err <= per_row).all())
    assert err.max() > 0  # int8 does round.
    # The zero pattern survives quantisation (no new non-zeros).
    assert not bool(((c8.P.to_dense() != 0) & (p_hat == 0)).any())


def _hand_made(n=10, d=16, b=7):
    # N = 10, b = 7: ceil(N/b) = 2 entities per Q row, 5 Q rows used.
    emb = CompositionalEmbedding(n, d, b, threshold_init=-100.)
    with torch.no_grad():
        emb.P.zero_()
        emb.Q.fill_(7.)  # The 2 unused Q rows must not be stored.
        emb.P[0, :3] = torch.tensor([1., -2., 3.])  # 3 non-zeros
        emb.P[4] = 0.5  # 16 non-zeros
        emb.Q[:5].zero_()
        emb.Q[2, 15] = -1.  # 1 non-zero
    return emb


def test_nbytes_equals_hand_count():
    emb = _hand_made()
    # P: 7 rows, 19 nnz; Q: 5 used rows, 1 nnz; d = 16 (uint8 column ids,
    # 2-byte bitmaps per row).
    expected = {
        ('csr', torch.float32): (19 * 5 + 4 * 8) + (1 * 5 + 4 * 6),
        ('bitmap', torch.float32): (19 * 4 + 7 * 2) + (1 * 4 + 5 * 2),
        ('csr', torch.float16): (19 * 3 + 4 * 8) + (1 * 3 + 4 * 6),
        ('bitmap', torch.float16): (19 * 2 + 7 * 2) + (1 * 2 + 5 * 2),
        ('csr', torch.int8): (19 * 2 + 4 * 8 + 4 * 7) + (1 * 2 + 4 * 6 +
                                                         4 * 5),
        ('bitmap', torch.int8): (19 + 7 * 2 + 4 * 7) + (1 + 5 * 2 + 4 * 5),
    }
    for (layout, dtype), nbytes in expected.items():
        compact = emb.to_compact(dtype, layout)
        assert compact.nnz == 20
        assert compact.nbytes == nbytes, (layout, dtype)
        assert compact.P.nbytes == layout_nbytes(7, 16, 19, layout, dtype)
        # The counter is the real storage: the bytes of the saved buffers.
        assert compact.nbytes == sum(
            t.numel() * t.element_size() for t in compact.state_dict().values()
            if torch.is_tensor(t))
        # Cached mode adds the two dense float32 tables (7 + 5 rows).
        cached = compact.resident_nbytes
        lookup = compact.set_decode('lookup').resident_nbytes
        assert cached - lookup == (7 + 5) * 16 * 4
        derived = 4 * (8 + 6) if layout == 'bitmap' else 0
        assert lookup == nbytes + derived
        assert torch.equal(compact.weight, emb.weight.detach()) or \
            dtype != torch.float32


def test_auto_layout_picks_the_smaller_table_each():
    emb = _hand_made(n=40, d=64, b=20)
    with torch.no_grad():
        emb.P.normal_()  # dense P -> bitmap (8 B/row vs 1 B/nnz).
        emb.Q.zero_()
        emb.Q[3, 5] = 1.  # nearly empty Q -> CSR (4 B/row ptr).
    compact = emb.to_compact(layout='auto')
    assert compact.P.layout == 'bitmap' and compact.Q.layout == 'csr'
    for table in (compact.P, compact.Q):
        assert table.nbytes == min(
            layout_nbytes(table.num_rows, 64, table.nnz, lay)
            for lay in ('csr', 'bitmap'))
    assert 'layout=(P: bitmap, Q: csr)' in repr(compact)


@pytest.mark.parametrize('layout', ['csr', 'bitmap'])
@pytest.mark.parametrize('dtype', ['float32', 'float16', 'int8', 'int4'])
def test_save_load_round_trip(tmp_path, layout, dtype):
    emb = make(threshold_init=-2.)
    compact = emb.to_compact(dtype, layout)
    path = tmp_path / 'emb.pt'
    compact.save(path)
    # The file is the payload plus a constant container overhead (zip
    # records of ~0.7 kB per tensor, 8 tensors at most).
    assert compact.nbytes < os.path.getsize(path) < compact.nbytes + 6000
    for decode in DECODES:
        loaded = CompactEmbedding.load(path, decode=decode)
        assert loaded.decode == decode
        assert torch.equal(loaded.weight, compact.weight)
        assert loaded.nbytes == compact.nbytes
        assert loaded.P.layout == layout and loaded.dtype_name == dtype
    raw = torch.load(path, weights_only=True)
    assert raw['format'] == 'pyg_cerp.CompactEmbedding'
    assert raw['version'] == 2
    # The payload is the state dict, restored into any module holding one.
    assert set(raw['content']) == set(compact.state_dict())
    model = torch.nn.Module()
    model.embedding = CompactEmbedding(1, 1, 1)
    model.load_state_dict({'embedding.' + k: v for k, v in
                           raw['content'].items()})
    assert torch.equal(model.embedding.weight, compact.weight)


def test_corrupted_and_truncated_files(tmp_path):
    path = tmp_path / 'emb.pt'
    make().to_compact().save(path)
    data = path.read_bytes()

    truncated = tmp_path / 'truncated.pt'
    for size in (0, 10, len(data) // 2, len(data) - 100, len(data) - 1):
        truncated.write_bytes(data[:size])
        with pytest.raises(FormatError, match='truncated.pt'):
            CompactEmbedding.load(truncated)

    corrupted = tmp_path / 'corrupted.pt'
    mid = len(data) // 3
    corrupted.write_bytes(data[:mid] + bytes(64) + data[mid + 64:])
    with pytest.raises(ValueError, match='corrupted.pt'):
        CompactEmbedding.load(corrupted)
    # A flipped byte anywhere either raises a clear error or (in container
    # padding/metadata that carries no content) loads the exact original.
    original = CompactEmbedding.load(path).weight
    detected = 0
    for pos in range(0, len(data), 29):
        flipped = bytearray(data)
        flipped[pos] ^= 0xFF
        corrupted.write_bytes(bytes(flipped))
        try:
            loaded = CompactEmbedding.load(corrupted)
        except ValueError as e:
            assert 'corrupted.pt' in str(e)
            detected += 1
        else:
            assert torch.equal(loaded.weight, original)
    assert detected > 0.5 * len(range(0, len(data), 29))

    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'not a zip file at all' * 10)
    with pytest.raises(ValueError, match='garbage.pt'):
        CompactEmbedding.load(garbage)

    with pytest.raises(FileNotFoundError, match='missing.pt'):
        CompactEmbedding.load(tmp_path / 'missing.pt')


def rewrite(path, change, **header):
    # Changes a saved file and recomputes its checksum.
    raw = torch.load(path, weights_only=True)
    change(raw['content'])
    raw.update(header, sha256=content_digest(raw['content']))
    torch.save(raw, path)


def test_wrong_version_or_format(tmp_path):
    path = tmp_path / 'v2.pt'
    make().to_compact().save(path)
    rewrite(path, lambda c: None, version=3)
    with pytest.raises(FormatError, match='version 3.*reads version 2.*'
                       'upgrade'):
        CompactEmbedding.load(path)
    rewrite(path, lambda c: None, format='something.else')
    with pytest.raises(FormatError, match="format 'something.else'"):
        CompactEmbedding.load(path)
    torch.save({'state_dict': {}}, path)
    with pytest.raises(FormatError, match='not a pyg_cerp.CompactEmbedding'):
        CompactEmbedding.load(path)
    torch.save(make().to_compact().state_dict(), path)  # no checksum
    with pytest.raises(FormatError, match='no checksum'):
        CompactEmbedding.load(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned', ))


def test_code_in_file_is_refused(tmp_path):
    path = tmp_path / 'evil.pt'
    torch.save({'format': _Evil()}, path)
    with pytest.raises(FormatError, match='evil.pt'):
        CompactEmbedding.load(path)


@pytest.mark.parametrize('layout,field,tamper,match', [
    ('csr', 'col', lambda t: t.fill_(200), 'col_indices < ncols'),
    ('csr', 'crow', lambda t: t.__setitem__(1, 10**6), 'crow_indices'),
    ('csr', 'crow', lambda t: t.__setitem__(2, 0), 'crow_indices'),
    ('csr', 'col', lambda t: t.zero_(), 'sorted and distinct'),
    ('bitmap', 'bitmap', lambda t: t.__setitem__(0, 255), 'marks'),
    ('bitmap', 'values', lambda t: t.__setitem__(0, float('nan')), 'NaN'),
])
def test_tampered_tables_are_rejected(tmp_path, layout, field, tamper, match):
    # The checksum is recomputed: validation must catch the tampering.
    path = tmp_path / 'tampered.pt'
    make(threshold_init=-2.).to_compact(layout=layout).save(path)
    rewrite(path, lambda c: tamper(c[f'P.{field}']))
    with pytest.raises(FormatError, match=match) as info:
        CompactEmbedding.load(path)
    assert 'tampered.pt' in str(info.value)


def _set(key, value):
    return lambda c: c.__setitem__(key, value)


@pytest.mark.parametrize('change,match', [
    (lambda c: c.__setitem__('P.values', c['P.values'].double()), 'dtype'),
    (_set('P.values', 'abc'), 'must be a tensor'),
    (lambda c: c['_extra_state'].__setitem__('bucket_size', 14), 'shape'),
    (lambda c: c['_extra_state'].__setitem__('num_embeddings', -1),
     'positive int'),
    (lambda c: c.pop('P.crow'), 'unknown layout'),
    (_set('P.scale', torch.ones(15)), 'scale'),
    (_set('P.extra', torch.ones(15)), 'unknown layout'),
])
def test_inconsistent_headers_are_rejected(tmp_path, change, match):
    path = tmp_path / 'bad.pt'
    make().to_compact(layout='csr').save(path)
    rewrite(path, change)
    with pytest.raises(FormatError, match=match):
        CompactEmbedding.load(path)


def test_int8_tampered_scale_and_range(tmp_path):
    path = tmp_path / 'bad.pt'
    make().to_compact('int8').save(path)
    rewrite(path, lambda c: c['P.scale'].__setitem__(0, -1.))
    with pytest.raises(FormatError, match='scale'):
        CompactEmbedding.load(path)
    make().to_compact('int8').save(path)
    rewrite(path, lambda c: c['P.values'].__setitem__(0, -128))
    with pytest.raises(FormatError, match=r'\[-127, 127\]'):
        CompactEmbedding.load(path)


def _low_to_zero(v):  # Level -8 in the first value.
    v = v.clone()
    v[0] &= 0xF0
    return v


def _pad_set(v):  # A non-zero padding half byte.
    v = v.clone()
    v[-1] |= 0x80
    return v


@pytest.mark.parametrize('layout', ['csr', 'bitmap'])
def test_int4_tampered_values(tmp_path, layout):
    path = tmp_path / 'bad.pt'
    compact = make(threshold_init=-2.).to_compact('int4', layout)
    nnz = compact.P.nnz
    assert compact.P.values.numel() == (nnz + 1) // 2
    compact.save(path)
    loaded = CompactEmbedding.load(path)
    assert torch.equal(loaded.weight, compact.weight)
    changes = [(_low_to_zero, r'\[-7, 7\]'), (lambda v: v[:-1], 'pack into')]
    if nnz % 2:
        changes.append((_pad_set, 'padding'))
    for change, match in changes:
        compact.save(path)
        rewrite(path, lambda c: c.__setitem__('P.values',
                                              change(c['P.values'])))
        with pytest.raises(FormatError, match=match):
            CompactEmbedding.load(path)


def test_bad_arguments_and_ids():
    emb = make()
    with pytest.raises(ValueError, match='dtype'):
        emb.to_compact(torch.bfloat16)
    with pytest.raises(ValueError, match='layout'):
        emb.to_compact(layout='coo')
    with pytest.raises(ValueError, match='decode'):
        emb.to_compact(decode='lazy')
    compact = emb.to_compact()
    with pytest.raises(IndexError, match='out of range'):
        compact(torch.tensor([200]))
    with pytest.raises(TypeError, match='integer'):
        compact(torch.tensor([1.]))
    assert compact(torch.empty(0, dtype=torch.long)).shape == (0, 16)


def test_empty_tables_and_repr():
    emb = make(threshold_init=100.)  # everything pruned
    for layout in ('csr', 'bitmap'):
        compact = emb.to_compact(layout=layout, decode='lookup')
        assert compact.nnz == 0
        assert torch.equal(compact.weight, torch.zeros(200, 16))
    text = repr(emb.to_compact('int8'))
    assert text.startswith('CompactEmbedding(')
    assert '200, 16, bucket_size=15, dtype=int8, layout=' in text
    assert 'CompressedTable(' in text


def test_load_bad_decode_blames_the_argument(tmp_path):
    emb = CompositionalEmbedding(60, 4, 10, threshold_init=-3.)
    path = tmp_path / 'c.pt'
    emb.to_compact().save(path)
    with pytest.raises(ValueError, match="'decode' must be one of") as info:
        CompactEmbedding.load(path, decode='x')
    assert not isinstance(info.value, FormatError)
    assert CompactEmbedding.load(path, decode='lookup').decode == 'lookup'
