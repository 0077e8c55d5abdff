r"""Compact, inference-only export of a trained
:class:`~pyg_cerp.nn.CompositionalEmbedding`: the memory savings made real.

During training, :class:`~pyg_cerp.nn.CompositionalEmbedding` holds its two
meta tables *densely* (plus as many threshold logits), so pruning saves no
memory by itself. :class:`CompactEmbedding` holds only what inference needs:
the surviving (non-zero) values of :math:`\hat{\mathbf{P}}` and of the *used*
rows of :math:`\hat{\mathbf{Q}}`, each table in a sparse row layout
(:class:`CompressedTable`), optionally in reduced precision.
"""
import math
import os
import pickle
import zipfile
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Module

from pyg_cerp.utils.io import atomic_save, content_digest
from pyg_cerp.utils.validation import check_index

PathLike = Union[str, os.PathLike]

#: Value precisions a compact table can be stored in.
DTYPES: Dict[str, torch.dtype] = {
    'float32': torch.float32,
    'float16': torch.float16,
    'int8': torch.int8,
}
#: Sparse row layouts (:obj:`'auto'` picks the smaller one per table).
LAYOUTS = ('csr', 'bitmap')
#: How lookups decode the compressed tables.
DECODES = ('cache', 'lookup')

FORMAT_NAME = 'pyg_cerp.CompactEmbedding'
FORMAT_VERSION = 1


def _dtype_name(dtype: Union[str, torch.dtype]) -> str:
    if isinstance(dtype, str):
        name = dtype
    else:
        name = {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype))
    if name not in DTYPES:
        raise ValueError(f"'dtype' must be one of {list(DTYPES)} or the "
                         f"matching torch.dtype (got {dtype!r})")
    return name


def _index_dtype(num_cols: int) -> torch.dtype:
    r"""The smallest integer type holding column ids in :math:`[0, d)`."""
    if num_cols <= 256:
        return torch.uint8
    if num_cols <= 2**15:
        return torch.int16
    return torch.int32


def _nbytes(*tensors: Optional[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _unpack_bits(bitmap: Tensor, num_cols: int) -> Tensor:
    r"""Unpacks a :obj:`[*, ceil(d/8)]` :obj:`uint8` bitmap (bit :math:`j` of
    byte :math:`i` is column :math:`8i+j`) into a :obj:`[*, d]` bool mask."""
    shifts = torch.arange(8, dtype=torch.uint8, device=bitmap.device)
    bits = (bitmap.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*bitmap.shape[:-1], -1)[..., :num_cols].bool()


def _pack_bits(mask: Tensor) -> Tensor:
    r"""The inverse of :func:`_unpack_bits`."""
    rows, cols = mask.shape
    nb = (cols + 7) // 8
    padded = torch.zeros(rows, nb * 8, dtype=torch.uint8, device=mask.device)
    padded[:, :cols] = mask.to(torch.uint8)
    shifts = torch.arange(8, dtype=torch.uint8, device=mask.device)
    return (padded.view(rows, nb, 8) << shifts).sum(-1).to(torch.uint8)


class FormatError(ValueError):
    r"""Raised when a compact file is unreadable, of a foreign format or
    version, or fails validation."""


class CompressedTable(Module):
    r"""A read-only :math:`R \times d` matrix that stores only its non-zero
    entries, row by row, in one of two layouts:

    * :obj:`'csr'`: the non-zero values in row-major order, their column ids
      (:obj:`uint8` for :math:`d \leq 256`, :obj:`int16` for
      :math:`d \leq 2^{15}`) and :math:`R+1` :obj:`int32` row pointers:

      .. math::
          \textrm{bytes} = \textrm{nnz} \cdot (s_v + s_c) + 4 (R + 1),

    * :obj:`'bitmap'`: a :math:`\lceil d/8 \rceil`-byte bitmap per row marking
      the non-zero positions, plus the packed values. The row pointers are the
      prefix sums of the bitmaps' popcounts, recomputed at load and not stored:

      .. math::
          \textrm{bytes} = \textrm{nnz} \cdot s_v + R \lceil d/8 \rceil,

    where :math:`s_v` is the size of a value. The bitmap wins once the row
    density exceeds :math:`\approx \lceil d/8 \rceil / (d \, s_c)` (6.25% for
    :math:`d = 64` with :obj:`uint8` column ids), so :obj:`layout='auto'`
    computes both sizes exactly and keeps the smaller one.

    Values are stored as :obj:`float32`, :obj:`float16` or :obj:`int8`. For
    :obj:`int8`, each row :math:`r` gets a symmetric absmax scale (one
    :obj:`float32` per row),

    .. math::
        s_r = \max_j |v_{rj}| / 127, \qquad
        q_{rj} = \mathrm{round}(v_{rj} / s_r), \qquad
        \tilde{v}_{rj} = s_r \, q_{rj},

    so the absolute rounding error of any entry is at most :math:`s_r/2`.
    Decoding always yields :obj:`float32`.

    Use :meth:`from_dense` to build one; the constructor takes the raw,
    already validated storage.

    Args:
        num_rows (int): :math:`R`.
        num_cols (int): :math:`d`.
        layout (str): :obj:`'csr'` or :obj:`'bitmap'`.
        values (torch.Tensor): The packed non-zero values, 1-D.
        scale (torch.Tensor, optional): The :obj:`float32` per-row scales
            (:obj:`int8` values only).
        col (torch.Tensor, optional): The column ids (:obj:`'csr'`).
        crow (torch.Tensor, optional): The row pointers (:obj:`'csr'`).
        bitmap (torch.Tensor, optional): The :obj:`uint8` row bitmaps
            (:obj:`'bitmap'`).
    """
    def __init__(self, num_rows: int, num_cols: int, layout: str,
                 values: Tensor, scale: Optional[Tensor] = None,
                 col: Optional[Tensor] = None, crow: Optional[Tensor] = None,
                 bitmap: Optional[Tensor] = None) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"'layout' must be one of {LAYOUTS} "
                             f"(got {layout!r})")
        self.num_rows = num_rows
        self.num_cols = num_cols
        self.layout = layout
        self.dtype_name = _dtype_name(values.dtype)
        self.register_buffer('values', values)
        self.register_buffer('scale', scale)
        self.register_buffer('col', col)
        self.register_buffer('crow', crow)
        self.register_buffer('bitmap', bitmap)
        # Row pointers of the packed values: CSR stores them, the bitmap
        # layout derives them (int32) from the popcounts, not stored.
        if layout == 'csr':
            self._ptr_derived = False
        else:
            counts = _unpack_bits(bitmap, num_cols).sum(-1)
            ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
            self.register_buffer('_ptr_bitmap', ptr.to(torch.int32),
                                 persistent=False)
            self._ptr_derived = True

    @property
    def _ptr(self) -> Tensor:
        return self._ptr_bitmap if self._ptr_derived else self.crow

    # Construction ############################################################

    @staticmethod
    def nbytes_of(num_rows: int, num_cols: int, nnz: int, layout: str,
                  dtype: Union[str, torch.dtype] = torch.float32) -> int:
        r"""The exact stored size :attr:`nbytes` of a table with :obj:`nnz`
        non-zeros in :obj:`layout` and precision :obj:`dtype`, without
        building it."""
        name = _dtype_name(dtype)
        value_size = DTYPES[name].itemsize
        out = nnz * value_size + (4 * num_rows if name == 'int8' else 0)
        if layout == 'csr':
            return out + nnz * _index_dtype(num_cols).itemsize + \
                4 * (num_rows + 1)
        if layout == 'bitmap':
            return out + num_rows * ((num_cols + 7) // 8)
        raise ValueError(f"'layout' must be one of {LAYOUTS} (got {layout!r})")

    @classmethod
    def from_dense(cls, dense: Tensor, layout: str = 'auto',
                   dtype: Union[str, torch.dtype] = torch.float32
                   ) -> 'CompressedTable':
        r"""Compresses the non-zero entries of a dense :math:`R \times d`
        matrix.

        Args:
            dense (torch.Tensor): The matrix (any floating point type).
            layout (str, optional): :obj:`'csr'`, :obj:`'bitmap'`, or
                :obj:`'auto'` for the one with fewer bytes (ties go to
                :obj:`'bitmap'`). (default: :obj:`'auto'`)
            dtype (str or torch.dtype, optional): The value precision:
                :obj:`float32`, :obj:`float16` or :obj:`int8`.
                (default: :obj:`torch.float32`)
        """
        if dense.dim() != 2 or not dense.is_floating_point():
            raise ValueError(f"'dense' must be a 2-D floating point tensor "
                             f"(got shape {tuple(dense.shape)}, dtype "
                             f"{dense.dtype})")
        name = _dtype_name(dtype)
        dense = dense.detach().float()
        if not bool(torch.isfinite(dense).all()):
            raise ValueError("Cannot compress a table holding NaN or inf")
        num_rows, num_cols = dense.shape
        mask = dense != 0
        nnz = int(mask.sum())
        if layout == 'auto':
            layout = min(
                reversed(LAYOUTS), key=lambda lay: cls.nbytes_of(
                    num_rows, num_cols, nnz, lay, name))
        elif layout not in LAYOUTS:
            raise ValueError(f"'layout' must be 'auto' or one of {LAYOUTS} "
                             f"(got {layout!r})")

        values = dense[mask]  # row-major order
        scale = None
        if name == 'int8':
            scale = dense.abs().amax(dim=1) / 127.
            row = mask.nonzero()[:, 0]
            denom = scale[row]
            q = torch.where(denom > 0, values / denom.clamp_min(1e-38),
                            torch.zeros_like(values))
            values = q.round().clamp(-127, 127).to(torch.int8)
        else:
            values = values.to(DTYPES[name])

        col = crow = bitmap = None
        if layout == 'csr':
            col = mask.nonzero()[:, 1].to(_index_dtype(num_cols))
            crow = torch.cat([torch.zeros(1, dtype=torch.long),
                              mask.sum(1).cumsum(0)]).to(torch.int32)
        else:
            bitmap = _pack_bits(mask)
        return cls(num_rows, num_cols, layout, values.contiguous(), scale,
                   col, crow, bitmap)

    # Decoding ################################################################

    @property
    def nnz(self) -> int:
        r"""The number of stored values."""
        return self.values.numel()

    def to_dense(self) -> Tensor:
        r"""Decodes the whole table into a dense :obj:`float32`
        :math:`R \times d` matrix."""
        return self.rows(torch.arange(self.num_rows, device=self.values.device))

    def rows(self, row: Tensor) -> Tensor:
        r"""Decodes only the rows :obj:`row` (any shape, ids in
        :math:`[0, R)`, not checked), touching only their stored values.

        Returns:
            A :obj:`float32` tensor of shape :obj:`[*row.shape, d]`.
        """
        shape = row.shape
        row = row.reshape(-1).long()
        out = torch.zeros(row.numel(), self.num_cols,
                          device=self.values.device)
        if self.nnz == 0 or row.numel() == 0:
            return out.view(*shape, self.num_cols)
        vals = self.values
        if self.layout == 'csr':
            start = self._ptr[row].long()
            length = self._ptr[row + 1].long() - start
            total = int(length.sum())
            seg = torch.repeat_interleave(
                torch.arange(row.numel(), device=row.device), length,
                output_size=total)
            offset = torch.cumsum(length, 0) - length
            src = (torch.arange(total, device=row.device) - offset[seg] +
                   start[seg])
            v = vals[src].float()
            if self.scale is not None:
                v = v * self.scale[row][seg]
            out[seg, self.col[src].long()] = v
        else:
            bits = _unpack_bits(self.bitmap[row], self.num_cols)
            pos = self._ptr[row].long().unsqueeze(-1) + bits.cumsum(-1) - 1
            v = vals[pos.clamp_(0, self.nnz - 1)].float()
            if self.scale is not None:
                v = v * self.scale[row].unsqueeze(-1)
            out = torch.where(bits, v, out)
        return out.view(*shape, self.num_cols)

    @property
    def nbytes(self) -> int:
        r"""The bytes of the stored representation: values, scales, column
        ids / bitmaps and row pointers (equals :meth:`nbytes_of`)."""
        return _nbytes(self.values, self.scale, self.col, self.crow,
                       self.bitmap)

    @property
    def resident_nbytes(self) -> int:
        r""":attr:`nbytes` plus, for the bitmap layout, the :obj:`int32` row
        pointers derived at load for decoding."""
        return self.nbytes + (_nbytes(self._ptr) if self._ptr_derived else 0)

    # Serialisation ###########################################################

    def to_dict(self) -> Dict[str, Any]:
        r"""The storage as a dict of plain tensors and python scalars."""
        out: Dict[str, Any] = {
            'num_rows': self.num_rows,
            'num_cols': self.num_cols,
            'layout': self.layout,
            'dtype': self.dtype_name,
            'values': self.values,
        }
        for name in ('scale', 'col', 'crow', 'bitmap'):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = 'table') -> 'CompressedTable':
        r"""Rebuilds a table from :meth:`to_dict`'s output, validating every
        field so that a tampered input cannot cause an out-of-bounds read.

        Args:
            data (dict): The stored fields.
            where (str, optional): A name for error messages.

        Raises:
            FormatError: If any field is missing, of the wrong type, shape or
                range.
        """
        def fail(msg: str) -> None:
            raise FormatError(f"Invalid compact table '{where}': {msg}")

        if not isinstance(data, dict):
            fail(f"expected a dict (got {type(data).__name__})")
        for key in ('num_rows', 'num_cols'):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or \
                    value < (1 if key == 'num_cols' else 0):
                fail(f"'{key}' must be a non-negative int (got {value!r})")
        rows, cols = data['num_rows'], data['num_cols']
        layout, name = data.get('layout'), data.get('dtype')
        if layout not in LAYOUTS:
            fail(f"unknown layout {layout!r}")
        if name not in DTYPES:
            fail(f"unknown dtype {name!r}")

        def tensor(key: str, dtypes: Tuple[torch.dtype, ...],
                   shape: Tuple[Optional[int], ...]) -> Tensor:
            value = data.get(key)
            if not isinstance(value, Tensor):
                fail(f"'{key}' must be a tensor (got {type(value).__name__})")
            if value.dtype not in dtypes:
                fail(f"'{key}' has dtype {value.dtype}, expected one of "
                     f"{[str(d) for d in dtypes]}")
            if value.dim() != len(shape) or any(
                    s is not None and s != t
                    for s, t in zip(shape, value.shape)):
                fail(f"'{key}' has shape {tuple(value.shape)}, expected "
                     f"{tuple('*' if s is None else s for s in shape)}")
            return value.contiguous()

        values = tensor('values', (DTYPES[name], ), (None, ))
        nnz = values.numel()
        if name != 'int8' and not bool(torch.isfinite(values).all()):
            fail("'values' holds NaN or inf")
        scale = None
        if name == 'int8':
            scale = tensor('scale', (torch.float32, ), (rows, ))
            if not bool((torch.isfinite(scale) & (scale >= 0)).all()):
                fail("'scale' must be finite and non-negative")
            if bool((values == -128).any()):
                fail("int8 'values' must lie in [-127, 127]")
        elif 'scale' in data:
            fail(f"unexpected 'scale' for dtype {name}")

        col = crow = bitmap = None
        if layout == 'csr':
            crow = tensor('crow', (torch.int32, ), (rows + 1, ))
            col = tensor('col', (_index_dtype(cols), ), (nnz, ))
            c = crow.long()
            if int(c[0]) != 0 or int(c[-1]) != nnz:
                fail(f"row pointers must start at 0 and end at nnz={nnz} "
                     f"(got {int(c[0])} and {int(c[-1])})")
            if bool((c[1:] < c[:-1]).any()):
                fail("row pointers are not monotone")
            if bool((c[1:] - c[:-1] > cols).any()):
                fail(f"a row holds more than num_cols={cols} values")
            ci = col.long()
            if nnz and (int(ci.min()) < 0 or int(ci.max()) >= cols):
                fail(f"column ids must lie in [0, {cols})")
            # Column ids strictly increasing within each row (no duplicates).
            if nnz > 1:
                row_start = torch.zeros(nnz, dtype=torch.bool)
                starts = c[:-1][c[:-1] < nnz]
                row_start[starts] = True
                if bool(((ci[1:] <= ci[:-1]) & ~row_start[1:]).any()):
                    fail("column ids must be strictly increasing in each row")
            for key in ('bitmap', ):
                if key in data:
                    fail(f"unexpected '{key}' for layout 'csr'")
        else:
            bitmap = tensor('bitmap', (torch.uint8, ), (rows, (cols + 7) // 8))
            bits = _unpack_bits(bitmap, 8 * bitmap.size(1))
            if bool(bits[:, cols:].any()):
                fail("padding bits of the bitmap must be zero")
            count = int(bits.sum())
            if count != nnz:
                fail(f"the bitmap marks {count} non-zeros, but {nnz} values "
                     f"are stored")
            for key in ('col', 'crow'):
                if key in data:
                    fail(f"unexpected '{key}' for layout 'bitmap'")
        return cls(rows, cols, layout, values, scale, col, crow, bitmap)

    def extra_repr(self) -> str:
        return (f'{self.num_rows}, {self.num_cols}, layout={self.layout}, '
                f'dtype={self.dtype_name}, nnz={self.nnz}, '
                f'nbytes={self.nbytes}')


class DenseTable(Module):
    r"""A read-only dense :math:`R \times d` matrix stored in :obj:`float32`,
    :obj:`float16` or :obj:`int8` with symmetric per-row absmax scales
    (:math:`s_r = \max_j |v_{rj}| / 127`, one :obj:`float32` per row), as
    used for *non-sparse* serving tables such as LightGCN's propagated
    embeddings:

    .. math::
        \textrm{bytes} = R d \, s_v + 4 R \, [\textrm{int8}].

    Decoding always yields :obj:`float32`. Build one with :meth:`from_dense`.

    Args:
        values (torch.Tensor): The :math:`R \times d` stored values.
        scale (torch.Tensor, optional): The per-row scales (:obj:`int8`
            only).
    """
    def __init__(self, values: Tensor, scale: Optional[Tensor] = None) -> None:
        super().__init__()
        self.dtype_name = _dtype_name(values.dtype)
        self.num_rows, self.num_cols = values.shape
        self.register_buffer('values', values)
        self.register_buffer('scale', scale)

    @classmethod
    def from_dense(cls, dense: Tensor,
                   dtype: Union[str, torch.dtype] = torch.float32
                   ) -> 'DenseTable':
        r"""Stores :obj:`dense` (2-D, finite) in precision :obj:`dtype`."""
        if dense.dim() != 2 or not dense.is_floating_point():
            raise ValueError(f"'dense' must be a 2-D floating point tensor "
                             f"(got shape {tuple(dense.shape)})")
        name = _dtype_name(dtype)
        dense = dense.detach().float().cpu()
        if not bool(torch.isfinite(dense).all()):
            raise ValueError("Cannot store a table holding NaN or inf")
        if name != 'int8':
            return cls(dense.to(DTYPES[name]).contiguous())
        scale = dense.abs().amax(dim=1) / 127.
        q = dense / scale.clamp_min(1e-38).unsqueeze(1)
        q = q.round().clamp(-127, 127).to(torch.int8)
        return cls(q.contiguous(), scale)

    def rows(self, row: Tensor) -> Tensor:
        r"""Decodes rows :obj:`row` (any shape) to :obj:`float32`."""
        out = self.values[row].float()
        if self.scale is not None:
            out = out * self.scale[row].unsqueeze(-1)
        return out

    def to_dense(self) -> Tensor:
        r"""Decodes the whole table to :obj:`float32`."""
        out = self.values.float()
        if self.scale is not None:
            out = out * self.scale.unsqueeze(-1)
        return out

    @property
    def nbytes(self) -> int:
        r"""The bytes of the stored values and scales."""
        return _nbytes(self.values, self.scale)

    def to_dict(self) -> Dict[str, Any]:
        r"""The storage as a dict of plain tensors and strings."""
        out: Dict[str, Any] = {'dtype': self.dtype_name, 'values': self.values}
        if self.scale is not None:
            out['scale'] = self.scale
        return out

    @classmethod
    def from_dict(cls, data: Any, shape: Tuple[int, int],
                  where: str = 'table') -> 'DenseTable':
        r"""Rebuilds a table of the expected :obj:`shape` from
        :meth:`to_dict`'s output, validating every field.

        Raises:
            FormatError: On any mismatch.
        """
        if not isinstance(data, dict) or data.get('dtype') not in DTYPES:
            raise FormatError(f"Invalid dense table '{where}': expected a "
                              f"dict with a known 'dtype'")
        name = data['dtype']
        values = data.get('values')
        if not isinstance(values, Tensor) or values.dtype != DTYPES[name] or \
                tuple(values.shape) != tuple(shape):
            raise FormatError(
                f"Invalid dense table '{where}': 'values' must be a {name} "
                f"tensor of shape {tuple(shape)}")
        scale = None
        if name == 'int8':
            scale = data.get('scale')
            if not isinstance(scale, Tensor) or \
                    scale.dtype != torch.float32 or \
                    tuple(scale.shape) != (shape[0], ) or \
                    not bool((torch.isfinite(scale) & (scale >= 0)).all()):
                raise FormatError(
                    f"Invalid dense table '{where}': 'scale' must be a finite, "
                    f"non-negative float32 tensor of shape ({shape[0]},)")
        elif not bool(torch.isfinite(values).all()):
            raise FormatError(f"Invalid dense table '{where}': 'values' "
                              f"holds NaN or inf")
        return cls(values.contiguous(), scale)

    def extra_repr(self) -> str:
        return (f'{self.num_rows}, {self.num_cols}, dtype={self.dtype_name}, '
                f'nbytes={self.nbytes}')


class CompactEmbedding(Module):
    r"""The inference-only, compressed form of a trained
    :class:`~pyg_cerp.nn.CompositionalEmbedding`, as returned by
    :meth:`CompositionalEmbedding.to_compact`.

    It computes the same embeddings,

    .. math::
        \mathbf{e}_k = \hat{\mathbf{P}}_{k \bmod b} +
        \hat{\mathbf{Q}}_{\lfloor k / \lceil N/b \rceil \rfloor},

    with the same :meth:`forward` and :attr:`weight`, but stores only the
    non-zero entries of :math:`\hat{\mathbf{P}}` (:math:`b \times d`) and of
    the :math:`\lceil N / \lceil N/b \rceil \rceil` rows of
    :math:`\hat{\mathbf{Q}}` that any entity uses, each as a
    :class:`CompressedTable` (CSR or bitmap + packed values, chosen per table
    by size with :obj:`layout='auto'`; :obj:`float32`, :obj:`float16` or
    :obj:`int8` with per-row absmax scales). No thresholds, masks or optimiser
    state are kept.

    **Decoding.** With :obj:`decode='cache'` (the default), both tables are
    decoded once, at construction/load, into dense :obj:`float32` tables, and
    a lookup is two row gathers and an add; this keeps
    :math:`4 d (b + \lceil N/\lceil N/b \rceil \rceil)` extra bytes resident
    (2.5 MB for Gowalla, :math:`N = 70{,}839, b = 5000, d = 64`, still
    :math:`\approx 7` times smaller than the full 18.1 MB table). With
    :obj:`decode='lookup'`, only the compressed form is resident and the
    requested rows are decoded on every call. Measured on Gowalla
    (:obj:`benchmarks/compact_export.py`, 1,000 random ids, one thread):
    0.2 to 0.5 ms per lookup cached vs 1.5 to 7 ms decoded per call (4 to 30
    times slower), and at the 1% budget 2.75 MB vs 0.27 MB resident, so the
    cache is the default; choose :obj:`'lookup'` when memory, not latency,
    is the constraint. :attr:`nbytes` is the stored size;
    :attr:`resident_nbytes` is what is held in memory in the current mode.

    Args:
        num_embeddings (int): The number of entities :math:`N`.
        embedding_dim (int): The embedding size :math:`d`.
        bucket_size (int): The number of rows :math:`b` of :math:`\mathbf{P}`.
        P (CompressedTable): :math:`\hat{\mathbf{P}}`, :math:`b \times d`.
        Q (CompressedTable): The used rows of :math:`\hat{\mathbf{Q}}`.
        decode (str, optional): :obj:`'cache'` or :obj:`'lookup'`.
            (default: :obj:`'cache'`)
        check_index (bool, optional): If set to :obj:`False`, does not check
            the ids in :meth:`forward`. (default: :obj:`True`)
    """
    def __init__(self, num_embeddings: int, embedding_dim: int,
                 bucket_size: int, P: CompressedTable, Q: CompressedTable,
                 decode: str = 'cache', check_index: bool = True) -> None:
        super().__init__()
        if not 1 <= bucket_size <= num_embeddings or embedding_dim < 1:
            raise ValueError(
                f"Invalid sizes: num_embeddings={num_embeddings}, "
                f"embedding_dim={embedding_dim}, bucket_size={bucket_size}")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.bucket_size = bucket_size
        self.rows_per_q = math.ceil(num_embeddings / bucket_size)
        self.num_q_rows_used = math.ceil(num_embeddings / self.rows_per_q)
        for name, table, rows in (('P', P, bucket_size),
                                  ('Q', Q, self.num_q_rows_used)):
            if (table.num_rows, table.num_cols) != (rows, embedding_dim):
                raise ValueError(
                    f"Table '{name}' has shape "
                    f"({table.num_rows}, {table.num_cols}), expected "
                    f"({rows}, {embedding_dim})")
        if P.dtype_name != Q.dtype_name:
            raise ValueError(f"'P' and 'Q' have different precisions "
                             f"({P.dtype_name} and {Q.dtype_name})")
        self.P = P
        self.Q = Q
        self.check_index = check_index
        self.register_buffer('_P_dense', None, persistent=False)
        self.register_buffer('_Q_dense', None, persistent=False)
        self.decode = 'lookup'
        self.set_decode(decode)

    # Construction ############################################################

    @classmethod
    @torch.no_grad()
    def from_compositional(cls, embedding: Module,
                           dtype: Union[str, torch.dtype] = torch.float32,
                           layout: str = 'auto', decode: str = 'cache',
                           ) -> 'CompactEmbedding':
        r"""Compresses a (trained) :class:`CompositionalEmbedding`.

        Args:
            embedding (CompositionalEmbedding): The training module, in
                pruning or retrain mode.
            dtype (str or torch.dtype, optional): The value precision,
                :obj:`float32`, :obj:`float16` or :obj:`int8`.
                (default: :obj:`torch.float32`)
            layout (str, optional): :obj:`'csr'`, :obj:`'bitmap'` or
                :obj:`'auto'` (the smaller one, per table).
                (default: :obj:`'auto'`)
            decode (str, optional): :obj:`'cache'` or :obj:`'lookup'`.
                (default: :obj:`'cache'`)
        """
        p_hat, q_hat = embedding.pruned_tables()
        q_hat = q_hat[:embedding.num_q_rows_used]
        return cls(embedding.num_embeddings, embedding.embedding_dim,
                   embedding.bucket_size,
                   CompressedTable.from_dense(p_hat.cpu(), layout, dtype),
                   CompressedTable.from_dense(q_hat.cpu(), layout, dtype),
                   decode=decode, check_index=embedding.check_index)

    def set_decode(self, decode: str) -> 'CompactEmbedding':
        r"""Switches between :obj:`'cache'` (decode both tables to dense once,
        now) and :obj:`'lookup'` (drop the dense tables, decode per call)."""
        if decode not in DECODES:
            raise ValueError(f"'decode' must be one of {DECODES} "
                             f"(got {decode!r})")
        self.decode = decode
        if decode == 'cache':
            self._P_dense = self.P.to_dense()
            self._Q_dense = self.Q.to_dense()
        else:
            self._P_dense = self._Q_dense = None
        return self

    # Lookups #################################################################

    @property
    def dtype_name(self) -> str:
        r"""The value precision (:obj:`'float32'`, :obj:`'float16'` or
        :obj:`'int8'`)."""
        return self.P.dtype_name

    def hash_index(self, index: Tensor) -> Tuple[Tensor, Tensor]:
        r"""Returns the meta-table rows :math:`(k \bmod b,
        \lfloor k / \lceil N/b \rceil \rfloor)` of the ids :obj:`index`."""
        return index % self.bucket_size, index // self.rows_per_q

    def forward(self, index: Tensor) -> Tensor:
        r"""Looks up the embeddings of :obj:`index`.

        Args:
            index (torch.Tensor): Integer entity ids in :math:`[0, N)` of any
                shape.

        Returns:
            A :obj:`float32` tensor of shape :obj:`[*index.shape, d]`.
        """
        if self.check_index:
            check_index(index, self.num_embeddings, 'index')
        p_row, q_row = self.hash_index(index)
        if self._P_dense is not None:
            return self._P_dense[p_row] + self._Q_dense[q_row]
        return self.P.rows(p_row) + self.Q.rows(q_row)

    @property
    def weight(self) -> Tensor:
        r"""The full :obj:`float32` :math:`N \times d` embedding matrix
        (computed on every access; not stored)."""
        if self._P_dense is None:
            return self(torch.arange(self.num_embeddings,
                                     device=self.P.values.device))
        n, b, m, d = (self.num_embeddings, self.bucket_size, self.rows_per_q,
                      self.embedding_dim)
        nq = self.num_q_rows_used
        p_part = self._P_dense.unsqueeze(0).expand(m, b, d).reshape(-1, d)[:n]
        q_part = self._Q_dense.unsqueeze(1).expand(nq, m, d).reshape(-1,
                                                                     d)[:n]
        return p_part + q_part

    # Counting ################################################################

    @property
    def nnz(self) -> int:
        r"""The number of stored values in both tables."""
        return self.P.nnz + self.Q.nnz

    @property
    def nbytes(self) -> int:
        r"""The bytes of everything stored: values, per-row scales, column
        ids or bitmaps and row pointers of both tables (the file adds only a
        small container overhead)."""
        return self.P.nbytes + self.Q.nbytes

    @property
    def resident_nbytes(self) -> int:
        r"""The bytes held in memory in the current decode mode:
        :attr:`nbytes`, the derived row pointers and, with
        :obj:`decode='cache'`, the dense :obj:`float32` tables."""
        return (self.P.resident_nbytes + self.Q.resident_nbytes +
                _nbytes(self._P_dense, self._Q_dense))

    def full_table_nbytes(self) -> int:
        r"""The bytes :math:`4Nd` of the full :obj:`float32` table it
        replaces."""
        return 4 * self.num_embeddings * self.embedding_dim

    # Serialisation ###########################################################

    def to_dict(self) -> Dict[str, Any]:
        r"""The file content: a dict of plain tensors and python scalars,
        loadable with :obj:`torch.load(..., weights_only=True)`."""
        return {
            'format': FORMAT_NAME,
            'version': FORMAT_VERSION,
            'num_embeddings': self.num_embeddings,
            'embedding_dim': self.embedding_dim,
            'bucket_size': self.bucket_size,
            'P': self.P.to_dict(),
            'Q': self.Q.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any, decode: str = 'cache',
                  where: str = 'CompactEmbedding') -> 'CompactEmbedding':
        r"""Rebuilds the module from :meth:`to_dict`'s output, validating the
        format name, version, sizes and both tables.

        Raises:
            FormatError: On any mismatch.
        """
        check_header(data, FORMAT_NAME, FORMAT_VERSION, where)
        sizes = []
        for key in ('num_embeddings', 'embedding_dim', 'bucket_size'):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or \
                    value < 1:
                raise FormatError(f"{where}: '{key}' must be a positive int "
                                  f"(got {value!r})")
            sizes.append(value)
        tables = [CompressedTable.from_dict(data.get(name), f'{where}.{name}')
                  for name in ('P', 'Q')]
        try:
            return cls(*sizes, *tables, decode=decode)
        except ValueError as e:
            raise FormatError(f'{where}: {e}') from e

    def save(self, path: PathLike) -> None:
        r"""Writes the module to one file, atomically (a crash never leaves a
        partial file). Read it back with :meth:`load`."""
        write_file(self.to_dict(), path)

    @classmethod
    def load(cls, path: PathLike, decode: str = 'cache') -> 'CompactEmbedding':
        r"""Reads a file written by :meth:`save` (with
        :obj:`weights_only=True`: no code is executed).

        Args:
            path (str or os.PathLike): The file.
            decode (str, optional): :obj:`'cache'` or :obj:`'lookup'`.
                (default: :obj:`'cache'`)

        Raises:
            FileNotFoundError: If the file does not exist.
            FormatError: (a :class:`ValueError`) If the file is corrupted,
                truncated, not a compact embedding, of an unsupported version
                or fails validation; the message names the file.
            ValueError: If :obj:`decode` is not a valid mode (checked before
                the file is read, so the file is not blamed).
        """
        if decode not in DECODES:
            raise ValueError(f"'decode' must be one of {DECODES} "
                             f"(got {decode!r})")
        data = read_file(path)
        return cls.from_dict(data, decode=decode, where=f"'{path}'")

    def extra_repr(self) -> str:
        return (f'{self.num_embeddings}, {self.embedding_dim}, '
                f'bucket_size={self.bucket_size}, dtype={self.dtype_name}, '
                f'layout=(P: {self.P.layout}, Q: {self.Q.layout}), '
                f'nnz={self.nnz}, nbytes={self.nbytes}, '
                f'decode={self.decode}')


# One digest for compact files and checkpoints (see pyg_cerp.utils.io).
_digest = content_digest


def write_file(data: Dict[str, Any], path: PathLike) -> None:
    r"""Writes a compact-file dict atomically with
    :func:`~pyg_cerp.utils.io.atomic_save`, adding a SHA-256 checksum of its
    content under :obj:`'sha256'` (verified by :func:`read_file`: the zip
    container of :func:`torch.save` does not detect flipped bytes inside a
    tensor record)."""
    data = {k: v for k, v in data.items() if k != 'sha256'}
    data['sha256'] = _digest(data)
    atomic_save(data, path)


def read_file(path: PathLike) -> Any:
    r"""Loads a compact file with :obj:`torch.load(weights_only=True)`,
    turning every low-level failure (truncated or corrupted zip container,
    unpickling errors, disallowed objects) into a :class:`FormatError` that
    names the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No compact file at '{path}'")
    try:
        data = torch.load(path, map_location='cpu', weights_only=True)
    except PermissionError:
        raise
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError,
            zipfile.BadZipFile, ValueError, KeyError, IndexError, TypeError,
            AttributeError, UnicodeDecodeError, OverflowError,
            MemoryError) as e:
        raise FormatError(
            f"Cannot read '{path}': the file is corrupted, truncated or not "
            f"a pyg_cerp compact file ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})") from e
    if isinstance(data, dict) and 'format' in data:
        stored = data.pop('sha256', None)
        if not isinstance(stored, str):
            raise FormatError(f"'{path}' has no checksum: it was not written "
                              f"by pyg_cerp's save()")
        if _digest(data) != stored:
            raise FormatError(f"'{path}' is corrupted: its content does not "
                              f"match the stored SHA-256 checksum")
    return data


def check_header(data: Any, name: str, version: int, where: str) -> None:
    r"""Checks the :obj:`'format'` and :obj:`'version'` entries of a loaded
    file dict, raising a :class:`FormatError` with a clear message."""
    if not isinstance(data, dict) or 'format' not in data:
        raise FormatError(f"{where} is not a pyg_cerp compact file (no "
                          f"'format' entry)")
    if data['format'] != name:
        raise FormatError(f"{where} holds format {data['format']!r}, "
                          f"expected {name!r}")
    found = data.get('version')
    if found != version:
        hint = (' (written by a newer pyg_cerp: upgrade to read it)'
                if isinstance(found, int) and found > version else '')
        raise FormatError(f"{where} has {name} format version {found!r}, but "
                          f"this pyg_cerp reads version {version} only{hint}")
