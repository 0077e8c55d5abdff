r"""The inference-only, compressed form of a trained
:class:`~pyg_cerp.nn.CompositionalEmbedding`: the memory savings made real.

All state lives in registered buffers, so :meth:`~torch.nn.Module.state_dict`
*is* the stored form: it loads back with :obj:`weights_only=True`, moves with
:meth:`~torch.nn.Module.to` and plugs into any backbone that takes an
:class:`torch.nn.Embedding` (PyG's :class:`LightGCN`,
:class:`~pyg_cerp.nn.MLPScorer`).
"""
import os
import warnings
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module

from pyg_cerp.memory import (DTYPES, INT_LEVELS, best_layout, dtype_name,
                             index_dtype, layout_nbytes, ptr_dtype)
from pyg_cerp.nn.compose import check_operation, compose
from pyg_cerp.nn.quant import quantize
from pyg_cerp.utils.io import FormatError, load_module, save_module
from pyg_cerp.utils.validation import check_index

__all__ = ['CompressedTable', 'CompactEmbedding', 'FormatError']

#: Sparse row layouts (:obj:`'auto'` picks the smaller one per table).
LAYOUTS = ('csr', 'bitmap')
#: How lookups decode the compressed tables.
DECODES = ('cache', 'lookup')
#: The precision of each dtype of stored values (int4: packed two a byte).
_PRECISION_OF = {**{t: n for n, t in DTYPES.items() if n != 'int4'},
                 torch.uint8: 'int4'}


def _unpack_bits(bitmap: Tensor, num_cols: int) -> Tensor:
    # [*, ceil(d/8)] uint8 (bit j of byte i is column 8i+j) -> [*, d] bool.
    shifts = torch.arange(8, dtype=torch.uint8, device=bitmap.device)
    bits = (bitmap.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*bitmap.shape[:-1], -1)[..., :num_cols].bool()


def _pack_bits(mask: Tensor) -> Tensor:
    rows, cols = mask.shape
    padded = F.pad(mask.to(torch.uint8), (0, (-cols) % 8))
    shifts = torch.arange(8, dtype=torch.uint8, device=mask.device)
    padded = padded.view(rows, (cols + 7) // 8, 8)
    return (padded << shifts).sum(-1).to(torch.uint8)


def _pack_nibbles(level: Tensor) -> Tensor:
    # int4 levels in [-7, 7] -> uint8, value 2i in the low nibble of byte i
    # and 2i+1 in the high one, each stored as level + 8 (padding: 0).
    nib = F.pad((level + 8).to(torch.uint8), (0, level.numel() % 2))
    nib = nib.view(-1, 2)
    return (nib[:, 0] | (nib[:, 1] << 4)).to(torch.uint8)


def _unpack_nibbles(packed: Tensor, index: Tensor) -> Tensor:
    # The int4 levels of the values at positions `index`, as float32.
    byte = packed[index // 2].long()
    return ((byte >> (4 * (index % 2))) & 15).float() - 8.


class CompressedTable(Module):
    r"""A read-only :math:`R \times d` matrix that stores only its non-zero
    entries, row by row, as CSR (values, column ids, row pointers) or as a
    bitmap (:math:`\lceil d/8 \rceil` bytes per row) plus the packed values;
    see :mod:`pyg_cerp.memory` for the exact bytes (:attr:`nbytes`).

    Values are :obj:`float32`, :obj:`float16`, or :obj:`int8` or
    :obj:`int4` with one symmetric absmax scale per row
    (:mod:`pyg_cerp.nn.quant`, :math:`L` = 127 or 7),

    .. math::
        s_r = \max_j |v_{rj}| / L, \qquad
        q_{rj} = \mathrm{round}(v_{rj} / s_r),

    so an entry is off by at most :math:`s_r / 2`; :obj:`int4` values are
    packed two a byte (:obj:`values` of dtype :obj:`uint8`, :math:`q + 8` in
    each half, the low half first). Decoding yields
    :obj:`float32`. Build one with :meth:`from_dense`; the constructor gives
    an empty (all-zero) table, filled by :meth:`load_state_dict`, which
    validates every stored tensor.

    Args:
        num_rows (int): :math:`R`.
        num_cols (int): :math:`d`.
    """
    def __init__(self, num_rows: int, num_cols: int) -> None:
        super().__init__()
        self.num_rows, self.num_cols = num_rows, num_cols
        self._set(torch.zeros(0), bitmap=torch.zeros(
            num_rows, (num_cols + 7) // 8, dtype=torch.uint8))

    def _set(self, values: Tensor, scale: Optional[Tensor] = None,
             col: Optional[Tensor] = None, crow: Optional[Tensor] = None,
             bitmap: Optional[Tensor] = None) -> None:
        self.layout = 'csr' if crow is not None else 'bitmap'
        for name, t in (('values', values), ('scale', scale), ('col', col),
                        ('crow', crow), ('bitmap', bitmap)):
            self.register_buffer(name, t)
        ptr = None
        if bitmap is not None:  # Row pointers: popcount prefix sums.
            count = _unpack_bits(bitmap, self.num_cols).sum(-1)
            ptr = F.pad(count.cumsum(0), (1, 0))
            ptr = ptr.to(ptr_dtype(int(ptr[-1])))
        self.register_buffer('_bitmap_ptr', ptr, persistent=False)

    @classmethod
    def from_dense(cls, dense: Tensor, layout: str = 'auto',
                   dtype: Union[str, torch.dtype] = torch.float32
                   ) -> 'CompressedTable':
        r"""Compresses the non-zero entries of a dense matrix.

        Args:
            dense (torch.Tensor): The finite 2-D floating point matrix.
            layout (str, optional): :obj:`'csr'`, :obj:`'bitmap'` or
                :obj:`'auto'` (fewer bytes, ties to :obj:`'bitmap'`).
                (default: :obj:`'auto'`)
            dtype (str or torch.dtype, optional): :obj:`float32`,
                :obj:`float16`, :obj:`int8` or :obj:`int4`.
                (default: :obj:`torch.float32`)
        """
        name = dtype_name(dtype)
        if dense.dim() != 2 or not dense.is_floating_point():
            raise ValueError(f"'dense' must be a 2-D floating point tensor "
                             f"(got shape {tuple(dense.shape)}, dtype "
                             f"{dense.dtype})")
        dense = dense.detach().float()
        if not bool(torch.isfinite(dense).all()):
            raise ValueError("Cannot compress a table holding NaN or inf")
        (rows, cols), mask = dense.shape, dense != 0
        nnz = int(mask.sum())
        if layout == 'auto':
            layout = best_layout(rows, cols, nnz, name)
        elif layout not in LAYOUTS:
            raise ValueError(f"'layout' must be 'auto' or one of {LAYOUTS} "
                             f"(got {layout!r})")
        col = mask.nonzero()[:, 1]
        values, scale = quantize(dense, name, mask)
        if name == 'int4':
            values = _pack_nibbles(values)
        out = cls(rows, cols)
        if layout == 'csr':
            crow = F.pad(mask.sum(1).cumsum(0), (1, 0)).to(ptr_dtype(nnz))
            out._set(values, scale, col=col.to(index_dtype(cols)), crow=crow)
        else:
            out._set(values, scale, bitmap=_pack_bits(mask))
        return out

    @property
    def dtype_name(self) -> str:
        r"""The value precision."""
        return _PRECISION_OF[self.values.dtype]

    @property
    def nnz(self) -> int:
        r"""The number of stored values."""
        ptr = self.crow if self.layout == 'csr' else self._bitmap_ptr
        return int(ptr[-1])

    @property
    def nbytes(self) -> int:
        r"""The stored bytes (:func:`pyg_cerp.memory.layout_nbytes`)."""
        return layout_nbytes(self.num_rows, self.num_cols, self.nnz,
                             self.layout, self.dtype_name)

    def rows(self, row: Tensor) -> Tensor:
        r"""Decodes the rows :obj:`row` (any shape, ids in :math:`[0, R)`,
        not checked) into a :obj:`float32` :obj:`[*row.shape, d]` tensor,
        touching only their stored values."""
        shape, row = row.shape, row.reshape(-1).long()
        if self.layout == 'csr':
            start = self.crow[row].long()
            count = self.crow[row + 1].long() - start
            seg = torch.repeat_interleave(
                torch.arange(row.numel(), device=row.device), count)
            src = (torch.arange(seg.numel(), device=row.device) -
                   (count.cumsum(0) - count)[seg] + start[seg])
            col = self.col[src].long()
        else:
            mask = _unpack_bits(self.bitmap[row], self.num_cols)
            seg, col = mask.nonzero().unbind(1)
            src = (self._bitmap_ptr[row][seg].long() +
                   mask.cumsum(1)[seg, col] - 1)
        if self.dtype_name == 'int4':
            value = _unpack_nibbles(self.values, src)
        else:
            value = self.values[src].float()
        if self.scale is not None:
            value = value * self.scale[row[seg]]
        out = torch.zeros(row.numel(), self.num_cols,
                          device=self.values.device)
        out[seg, col] = value
        return out.view(*shape, self.num_cols)

    def to_dense(self) -> Tensor:
        r"""Decodes the whole table into a :obj:`float32` matrix."""
        return self.rows(torch.arange(self.num_rows,
                                      device=self.values.device))

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str,
                              local_metadata: Any, strict: bool,
                              missing_keys: Any, unexpected_keys: Any,
                              error_msgs: Any) -> None:
        # Adopts the stored tensors (their sizes depend on the data).
        found = {k[len(prefix):]: v for k, v in state_dict.items()
                 if k.startswith(prefix)}
        try:
            self._set(**self._validate(found))
        except FormatError as e:
            error_msgs.append(f"Invalid table '{prefix[:-1]}': {e}")

    def _validate(self, t: Dict[str, Any]) -> Dict[str, Tensor]:
        # A tampered file must not cause an out-of-bounds read.
        rows, cols = self.num_rows, self.num_cols
        keys = set(t) - {'scale'}
        if keys not in ({'values', 'col', 'crow'}, {'values', 'bitmap'}):
            raise FormatError(f"unknown layout: expected the tensors values, "
                              f"col, crow (CSR) or values, bitmap (plus "
                              f"scale for int8 and int4) (got {sorted(t)})")
        for key, value in t.items():
            if not isinstance(value, Tensor):
                raise FormatError(f"'{key}' must be a tensor (got "
                                  f"{type(value).__name__})")
        values = t['values']
        if values.dtype not in _PRECISION_OF or values.dim() != 1:
            raise FormatError(f"'values' must be a 1-D tensor of dtype "
                              f"{list(_PRECISION_OF)} (uint8: packed int4) "
                              f"(got dtype {values.dtype}, shape "
                              f"{tuple(values.shape)})")
        name = _PRECISION_OF[values.dtype]
        nnz = values.numel()
        if name == 'int4':  # The count the index holds, (nnz + 1) // 2 bytes.
            if 'crow' in t:
                nnz = int(t['crow'][-1]) if t['crow'].numel() else 0
            else:
                nnz = int(_unpack_bits(t['bitmap'],
                                       8 * t['bitmap'].size(-1)).sum())
            if values.numel() != (nnz + 1) // 2:
                raise FormatError(f"{nnz} int4 values pack into "
                                  f"{(nnz + 1) // 2} bytes, but "
                                  f"{values.numel()} are stored")
        is_int = name in INT_LEVELS

        def expect(key: str, dtype: torch.dtype, shape: Tuple[int, ...]):
            if t[key].dtype != dtype or tuple(t[key].shape) != shape:
                raise FormatError(
                    f"'{key}' must have dtype {dtype} and shape {shape} (got "
                    f"{t[key].dtype} and {tuple(t[key].shape)})")

        if ('scale' in t) != is_int:
            raise FormatError("'scale' must be stored for int8 and int4 "
                              "values only")
        if is_int:
            expect('scale', torch.float32, (rows, ))
            if not bool((torch.isfinite(t['scale']) &
                         (t['scale'] >= 0)).all()):
                raise FormatError("'scale' must be finite and non-negative")
        if name == 'int8' and bool((values == -128).any()):
            raise FormatError("int8 'values' must lie in [-127, 127]")
        if name == 'int4':
            nib = torch.stack([values & 15, values >> 4], 1).view(-1)
            if bool((nib[:nnz] == 0).any()) or bool((nib[nnz:] != 0).any()):
                raise FormatError("int4 'values' must lie in [-7, 7] and the "
                                  "padding half byte must be zero")
        elif not is_int and not bool(torch.isfinite(values).all()):
            raise FormatError("'values' holds NaN or inf")
        if 'crow' in t:
            expect('crow', ptr_dtype(nnz), (rows + 1, ))
            expect('col', index_dtype(cols), (nnz, ))
            try:
                with warnings.catch_warnings():  # "beta" notes on CSR
                    warnings.simplefilter('ignore')
                    torch.sparse_csr_tensor(
                        t['crow'].long(), t['col'].long(),
                        torch.zeros(nnz) if name == 'int4' else values,
                        (rows, cols), check_invariants=True)
            except RuntimeError as e:
                raise FormatError(f"invalid row pointers 'crow' or column "
                                  f"ids 'col': {e}") from None
        else:
            expect('bitmap', torch.uint8, (rows, (cols + 7) // 8))
            bits = _unpack_bits(t['bitmap'], 8 * t['bitmap'].size(1))
            if bool(bits[:, cols:].any()):
                raise FormatError("padding bits of the bitmap must be zero")
            if int(bits.sum()) != nnz:
                raise FormatError(f"the bitmap marks {int(bits.sum())} "
                                  f"non-zeros, but {nnz} values are stored")
        return {k: v.to(self.values.device).contiguous()
                for k, v in t.items()}

    def extra_repr(self) -> str:
        return (f'{self.num_rows}, {self.num_cols}, layout={self.layout}, '
                f'dtype={self.dtype_name}, nnz={self.nnz}, '
                f'nbytes={self.nbytes}')


class CompactEmbedding(Module):
    r"""The compressed, inference-only form of a trained
    :class:`~pyg_cerp.nn.CompositionalEmbedding`
    (:meth:`~pyg_cerp.nn.CompositionalEmbedding.to_compact`), computing the
    same embeddings

    .. math::
        \mathbf{e}_k = \hat{\mathbf{P}}_{k \bmod b} +
        \hat{\mathbf{Q}}_{\lfloor k / \lceil N/b \rceil \rfloor}

    (the product for :obj:`operation='mul'`) with the same :meth:`forward`
    and :attr:`weight`, from the non-zeros of
    :math:`\hat{\mathbf{P}}` and of the :math:`\lceil N / \lceil N/b \rceil
    \rceil` used rows of :math:`\hat{\mathbf{Q}}`, each a
    :class:`CompressedTable`. No thresholds, masks or optimiser state are
    kept.

    With :obj:`decode='cache'`, both tables are decoded once (at export,
    load or :meth:`set_decode`) to dense :obj:`float32`, and a lookup is two
    gathers and an add; :obj:`'lookup'` keeps only the compressed form
    resident and decodes the requested rows per call (on Gowalla, 4 to 30
    times slower, 2.75 vs 0.27 MB resident at the 1% budget; see
    :obj:`benchmarks/compact_export.py`). :attr:`nbytes` is the stored size,
    :attr:`resident_nbytes` what is held in memory.

    The constructor gives an empty (all-pruned) embedding; :meth:`load` or
    :meth:`load_state_dict` fill it and restore :math:`N`, :math:`d`,
    :math:`b` from the state (key :obj:`'_extra_state'`), so a model holding
    one loads with :obj:`model.load_state_dict(torch.load(path,
    weights_only=True))`.

    Args:
        num_embeddings (int): The number of entities :math:`N`.
        embedding_dim (int): The embedding size :math:`d`.
        bucket_size (int): The number of rows :math:`b` of :math:`\mathbf{P}`.
        decode (str, optional): :obj:`'cache'` or :obj:`'lookup'`.
            (default: :obj:`'cache'`)
        check_index (bool, optional): If set to :obj:`False`, does not check
            the ids in :meth:`forward`. (default: :obj:`True`)
        operation (str, optional): :obj:`'add'` or :obj:`'mul'`, as in
            :class:`~pyg_cerp.nn.CompositionalEmbedding`.
            (default: :obj:`'add'`)
    """
    #: The version of the file format of :meth:`save`.
    VERSION = 2

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 bucket_size: int, decode: str = 'cache',
                 check_index: bool = True, operation: str = 'add') -> None:
        super().__init__()
        if decode not in DECODES:
            raise ValueError(f"'decode' must be one of {DECODES} "
                             f"(got {decode!r})")
        self.decode, self.check_index = decode, check_index
        self.set_extra_state(dict(num_embeddings=num_embeddings,
                                  embedding_dim=embedding_dim,
                                  bucket_size=bucket_size,
                                  operation=operation))
        self.register_load_state_dict_post_hook(self._decode_on_load)

    def reset_parameters(self) -> None:
        r"""Does nothing: the module holds no parameters (it is the export of
        trained ones), so backbones that reset their embedding at
        construction, such as :class:`~pyg_cerp.nn.MLPScorer`, keep it."""

    @classmethod
    @torch.no_grad()
    def from_compositional(cls, embedding: Module,
                           dtype: Union[str, torch.dtype] = torch.float32,
                           layout: str = 'auto', decode: str = 'cache',
                           ) -> 'CompactEmbedding':
        r"""Compresses a (trained) :class:`CompositionalEmbedding`.

        Args:
            embedding (CompositionalEmbedding): The module, in pruning or
                retrain mode.
            dtype (str or torch.dtype, optional): :obj:`float32`,
                :obj:`float16`, :obj:`int8` or :obj:`int4`.
                (default: :obj:`torch.float32`)
            layout (str, optional): :obj:`'csr'`, :obj:`'bitmap'` or
                :obj:`'auto'` (the smaller one, per table).
                (default: :obj:`'auto'`)
            decode (str, optional): :obj:`'cache'` or :obj:`'lookup'`.
                (default: :obj:`'cache'`)
        """
        out = cls(embedding.num_embeddings, embedding.embedding_dim,
                  embedding.bucket_size, decode, embedding.check_index,
                  embedding.operation)
        p_hat, q_hat = embedding.pruned_tables()
        out.P = CompressedTable.from_dense(p_hat, layout, dtype)
        out.Q = CompressedTable.from_dense(
            q_hat[:embedding.num_q_rows_used], layout, dtype)
        return out.set_decode(decode)

    def set_decode(self, decode: str) -> 'CompactEmbedding':
        r"""Switches to :obj:`'cache'` (decode both tables now) or
        :obj:`'lookup'` (drop the dense tables, decode per call)."""
        if decode not in DECODES:
            raise ValueError(f"'decode' must be one of {DECODES} "
                             f"(got {decode!r})")
        self.decode = decode
        cache = decode == 'cache'
        self._P_dense = self.P.to_dense() if cache else None
        self._Q_dense = self.Q.to_dense() if cache else None
        return self

    @staticmethod
    def _decode_on_load(module: 'CompactEmbedding', *args: Any) -> None:
        module.set_decode(module.decode)

    def get_extra_state(self) -> Dict[str, Any]:
        return dict(num_embeddings=self.num_embeddings,
                    embedding_dim=self.embedding_dim,
                    bucket_size=self.bucket_size, operation=self.operation)

    def set_extra_state(self, state: Any) -> None:
        r"""Sets :math:`N, d, b` and the :obj:`operation` (absent:
        :obj:`'add'`) and empties both tables (before
        :meth:`load_state_dict` fills them)."""
        keys = ('num_embeddings', 'embedding_dim', 'bucket_size')
        sizes = [state.get(k) if isinstance(state, dict) else None
                 for k in keys]
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1
               for s in sizes) or sizes[2] > sizes[0]:
            raise ValueError(f"The sizes {keys} must be positive ints with "
                             f"bucket_size <= num_embeddings (got {state!r})")
        self.operation = check_operation(state.get('operation', 'add'))
        self.num_embeddings, self.embedding_dim, self.bucket_size = sizes
        self.rows_per_q = -(-sizes[0] // sizes[2])
        self.num_q_rows_used = -(-sizes[0] // self.rows_per_q)
        self.P = CompressedTable(sizes[2], sizes[1])
        self.Q = CompressedTable(self.num_q_rows_used, sizes[1])
        self.register_buffer('_P_dense', None, persistent=False)
        self.register_buffer('_Q_dense', None, persistent=False)

    @property
    def dtype_name(self) -> str:
        r"""The value precision."""
        return self.P.dtype_name

    def hash_index(self, index: Tensor) -> Tuple[Tensor, Tensor]:
        r"""The meta-table rows :math:`(k \bmod b, \lfloor k / \lceil N/b
        \rceil \rfloor)` of the ids :obj:`index`."""
        return index % self.bucket_size, index // self.rows_per_q

    def forward(self, index: Tensor) -> Tensor:
        r"""Looks up the :obj:`float32` embeddings
        :obj:`[*index.shape, d]` of the ids :obj:`index` in
        :math:`[0, N)`."""
        if self.check_index:
            check_index(index, self.num_embeddings, 'index')
        p_row, q_row = self.hash_index(index)
        if self._P_dense is not None:
            return compose(self._P_dense, self._Q_dense, index,
                           self.rows_per_q, self.operation)
        p, q = self.P.rows(p_row), self.Q.rows(q_row)
        return p * q if self.operation == 'mul' else p + q

    @property
    def weight(self) -> Tensor:
        r"""The :obj:`float32` :math:`N \times d` embedding matrix (computed
        on access)."""
        p, q = ((self._P_dense, self._Q_dense) if self._P_dense is not None
                else (self.P.to_dense(), self.Q.to_dense()))
        return compose(p, q, self.num_embeddings, self.rows_per_q,
                       self.operation)

    @property
    def nnz(self) -> int:
        r"""The number of stored values of both tables."""
        return self.P.nnz + self.Q.nnz

    @property
    def nbytes(self) -> int:
        r"""The stored bytes of both tables (:mod:`pyg_cerp.memory`)."""
        return self.P.nbytes + self.Q.nbytes

    @property
    def resident_nbytes(self) -> int:
        r"""The bytes of all buffers held in memory: :attr:`nbytes`, the
        bitmaps' derived row pointers and, when cached, the dense tables."""
        return sum(t.numel() * t.element_size() for t in self.buffers())

    def save(self, path: Union[str, os.PathLike]) -> None:
        r"""Writes :meth:`state_dict` atomically with a SHA-256 of its
        content (:func:`pyg_cerp.utils.io.save_module`)."""
        save_module(self, path, self.VERSION)

    @classmethod
    def load(cls, path: Union[str, os.PathLike],
             decode: str = 'cache') -> 'CompactEmbedding':
        r"""Reads a file of :meth:`save` with :obj:`weights_only=True`.

        Args:
            path (str or os.PathLike): The file.
            decode (str, optional): :obj:`'cache'` or :obj:`'lookup'`.
                (default: :obj:`'cache'`)

        Raises:
            FileNotFoundError: If the file does not exist.
            FormatError: If it is corrupted, truncated, of another format or
                version, or fails validation; the message names the file.
        """
        return load_module(cls(1, 1, 1, decode), path, cls.VERSION)

    def extra_repr(self) -> str:
        op = '' if self.operation == 'add' else f'operation={self.operation}, '
        return (f'{self.num_embeddings}, {self.embedding_dim}, '
                f'bucket_size={self.bucket_size}, {op}'
                f'dtype={self.dtype_name}, '
                f'layout=(P: {self.P.layout}, Q: {self.Q.layout}), '
                f'nnz={self.nnz}, nbytes={self.nbytes}, '
                f'decode={self.decode}')

