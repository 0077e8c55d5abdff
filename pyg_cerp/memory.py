r"""The one byte counter of the *stored* form of an embedding: what has to be
kept to serve it after training.

A table of :math:`r \times d` values with :math:`z` non-zeros, stored with
values of :math:`s_v` bytes (4, 2, 1 or 1/2 for :obj:`float32`,
:obj:`float16`, :obj:`int8`, :obj:`int4`; the integer precisions add one
:obj:`float32` absmax scale per row, :math:`4r` bytes, and :obj:`int4`
packs two values a byte, :math:`\lceil z / 2 \rceil` bytes for :math:`z`
values), takes

* :obj:`'dense'`: :math:`r d s_v` bytes,
* :obj:`'csr'`: :math:`z (s_v + s_c) + s_p (r + 1)` bytes, with column ids of
  :math:`s_c` bytes (:obj:`uint8` for :math:`d \leq 256`, :obj:`int16` for
  :math:`d \leq 2^{15}`, else :obj:`int32`) and :obj:`int32` row pointers
  (:obj:`int64` once :math:`z \geq 2^{31}`),
* :obj:`'bitmap'`: :math:`z s_v + r \lceil d/8 \rceil` bytes (the row pointers
  are prefix sums of the popcounts, derived at load, not stored).

The bitmap wins above a row density of about :math:`\lceil d/8 \rceil /
(d s_c)` (6.25% for :math:`d = 64`). Only the rows some entity reads count
(the :math:`\lceil N / \lceil N/b \rceil \rceil` used rows of
:math:`\hat{\mathbf{Q}}`); hash functions and training-only state
(thresholds, masks, optimiser state) take nothing. These are the formats of
:class:`pyg_cerp.nn.compact.CompressedTable`, whose :attr:`nbytes` is this
count.

A module trained at a precision (the :obj:`precision` of
:class:`~pyg_cerp.nn.CompositionalEmbedding` and the baselines) is counted at
that precision unless a :obj:`dtype` is given. :func:`density_for_nbytes`
inverts the count: the density at which tables fit a byte budget (the byte
targets of :class:`~pyg_cerp.train.PruningScheduler`).
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Module

#: The value precisions of the stored form.
DTYPES: Dict[str, torch.dtype] = {
    'float32': torch.float32,
    'float16': torch.float16,
    'int8': torch.int8,
    'int4': torch.int4,
}
#: The bits of one stored value of each precision.
VALUE_BITS: Dict[str, int] = {'float32': 32, 'float16': 16, 'int8': 8,
                              'int4': 4}
#: The integer precisions (one :obj:`float32` absmax scale per row) and their
#: largest level :math:`L` (values in :math:`[-L, L]`).
INT_LEVELS: Dict[str, int] = {'int8': 127, 'int4': 7}
#: The stored layouts; :func:`best_layout` picks among the sparse ones.
LAYOUTS = ('dense', 'csr', 'bitmap')


def dtype_name(dtype: Union[str, torch.dtype]) -> str:
    r"""The name in :obj:`DTYPES` of a precision given by name or dtype."""
    name = dtype if isinstance(dtype, str) else str(dtype).split('.')[-1]
    if name not in DTYPES:
        raise ValueError(f"'dtype' must be one of {list(DTYPES)} or the "
                         f"matching torch.dtype (got {dtype!r})")
    return name


def index_dtype(num_cols: int) -> torch.dtype:
    r"""The smallest integer type holding column ids in :math:`[0, d)`."""
    if num_cols <= 2**8:
        return torch.uint8
    return torch.int16 if num_cols <= 2**15 else torch.int32


def ptr_dtype(nnz: int) -> torch.dtype:
    r"""The type of CSR row pointers up to :obj:`nnz`."""
    return torch.int32 if nnz < 2**31 else torch.int64


def values_nbytes(count: int, dtype: Union[str, torch.dtype]) -> int:
    r"""The bytes of :obj:`count` packed values of precision :obj:`dtype`
    (:obj:`int4`: :math:`\lceil count / 2 \rceil`), scales not included."""
    return (int(count) * VALUE_BITS[dtype_name(dtype)] + 7) // 8


def layout_nbytes(rows: int, cols: int, nnz: int, layout: str,
                  dtype: Union[str, torch.dtype] = torch.float32) -> int:
    r"""The bytes of an :math:`r \times d` table with :math:`z` non-zeros in
    :obj:`layout` and precision :obj:`dtype` (see the module docstring).

    Args:
        rows (int): :math:`r`.
        cols (int): :math:`d`.
        nnz (int): :math:`z`.
        layout (str): :obj:`'dense'`, :obj:`'csr'` or :obj:`'bitmap'`.
        dtype (str or torch.dtype, optional): The value precision.
            (default: :obj:`torch.float32`)
    """
    name = dtype_name(dtype)
    scale = 4 * rows if name in INT_LEVELS else 0
    if layout == 'dense':
        return values_nbytes(rows * cols, name) + scale
    if layout == 'csr':
        return (values_nbytes(nnz, name) + nnz * index_dtype(cols).itemsize +
                scale + ptr_dtype(nnz).itemsize * (rows + 1))
    if layout == 'bitmap':
        return values_nbytes(nnz, name) + scale + rows * ((cols + 7) // 8)
    raise ValueError(f"'layout' must be one of {LAYOUTS} (got {layout!r})")


def best_layout(rows: int, cols: int, nnz: int,
                dtype: Union[str, torch.dtype] = torch.float32) -> str:
    r"""The sparse layout with fewer bytes (ties go to :obj:`'bitmap'`)."""
    csr = layout_nbytes(rows, cols, nnz, 'csr', dtype)
    return 'csr' if csr < layout_nbytes(rows, cols, nnz, 'bitmap',
                                        dtype) else 'bitmap'


def best_nbytes(rows: int, cols: int, nnz: int,
                dtype: Union[str, torch.dtype] = torch.float32) -> int:
    r"""The bytes of the table in its :func:`best_layout`."""
    return layout_nbytes(rows, cols, nnz, best_layout(rows, cols, nnz, dtype),
                         dtype)


#: A stored table's shape for the inverse counts: :obj:`(rows, cols,
#: pruned)`.
TableShape = Tuple[int, int, bool]


def tables_nbytes(shapes: Sequence[TableShape], nnz: Sequence[int],
                  dtype: Union[str, torch.dtype] = torch.float32) -> int:
    r"""The stored bytes of tables of the given shapes (pruned ones in their
    :func:`best_layout` with :obj:`nnz` non-zeros, the others dense)."""
    return sum(best_nbytes(r, c, z, dtype) if pruned else
               layout_nbytes(r, c, r * c, 'dense', dtype)
               for (r, c, pruned), z in zip(shapes, nnz))


def density_for_nbytes(shapes: Sequence[TableShape], nbytes: float,
                       dtype: Union[str, torch.dtype] = torch.float32
                       ) -> Optional[float]:
    r"""The largest density :math:`\delta \in [0, 1]` such that the tables,
    each pruned one holding :math:`\lfloor \delta r d \rfloor` non-zeros,
    take at most :obj:`nbytes` (:func:`tables_nbytes`, non-decreasing in
    :math:`\delta`); :obj:`None` if even empty tables take more.

    Args:
        shapes (Sequence[Tuple[int, int, bool]]): :obj:`(rows, cols,
            pruned)` of each table (see :func:`module_table_shapes`).
        nbytes (float): The budget in bytes.
        dtype (str or torch.dtype, optional): The value precision.
            (default: :obj:`torch.float32`)
    """
    def count(density: float) -> int:
        return tables_nbytes(shapes, [math.floor(density * r * c)
                                      for r, c, _ in shapes], dtype)

    if count(0.) > nbytes:
        return None
    if count(1.) <= nbytes:
        return 1.
    lo, hi = 0., 1.
    for _ in range(60):  # Below one entry of the largest table.
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count(mid) <= nbytes else (lo, mid)
    return lo


@dataclass(frozen=True)
class TableBytes:
    r"""The stored size of one table: :obj:`rows`, :obj:`cols`,
    :obj:`nonzero`, its :obj:`format` (layout) and :obj:`nbytes`."""
    rows: int
    cols: int
    nonzero: int
    format: str
    nbytes: int


def table_nbytes(table: Tensor, pruned: bool = True,
                 dtype: Union[str, torch.dtype] = torch.float32
                 ) -> TableBytes:
    r"""The stored size of a 2-D table: its cheaper sparse layout if
    :obj:`pruned` (its exact zeros are left out), else dense.

    Args:
        table (torch.Tensor): The :math:`r \times d` table.
        pruned (bool, optional): Whether zeros may be left out.
            (default: :obj:`True`)
        dtype (str or torch.dtype, optional): The value precision.
            (default: :obj:`torch.float32`)
    """
    if table.dim() != 2:
        raise ValueError(f"'table' must be 2-D (got shape "
                         f"{tuple(table.shape)})")
    rows, cols = table.shape
    nnz = int(table.count_nonzero())
    layout = best_layout(rows, cols, nnz, dtype) if pruned else 'dense'
    return TableBytes(rows, cols, nnz, layout,
                      layout_nbytes(rows, cols, nnz, layout, dtype))


@dataclass
class MemoryReport:
    r"""The stored size of an embedding module, per table
    (:obj:`tables`); :obj:`source` names the counter (always
    :obj:`'tables'`, for the CSV column of ``benchmarks/memory_vs_ndcg``)."""
    tables: Dict[str, TableBytes] = field(default_factory=dict)
    source: str = 'tables'

    @property
    def nbytes(self) -> int:
        r"""The total bytes."""
        return sum(t.nbytes for t in self.tables.values())

    @property
    def nonzero(self) -> int:
        r"""The total number of stored non-zero values."""
        return sum(t.nonzero for t in self.tables.values())

    def formats(self) -> str:
        r"""A short description, *e.g.* :obj:`'P:csr,Q:bitmap'`."""
        return ','.join(f'{k}:{v.format}' for k, v in self.tables.items())


def stored_tables(module: Module) -> List[Tuple[str, Tensor, bool]]:
    r"""The :obj:`(name, table, pruned)` triples :obj:`module` stores:
    :class:`torch.nn.Embedding` (one dense table),
    :class:`~pyg_cerp.nn.CompositionalEmbedding` (the pruned
    :math:`\hat{\mathbf{P}}` and used rows of :math:`\hat{\mathbf{Q}}`) or
    any module with a :meth:`stored_tables` method (the baselines)."""
    if hasattr(module, 'stored_tables'):
        return list(module.stored_tables())
    if hasattr(module, 'pruned_tables'):
        p_hat, q_hat = module.pruned_tables()
        return [('P', p_hat.detach(), True),
                ('Q', q_hat.detach()[:module.num_q_rows_used], True)]
    if isinstance(module, torch.nn.Embedding):
        return [('weight', module.weight.detach(), False)]
    raise TypeError(f"Cannot count the stored bytes of "
                    f"{type(module).__name__}: expected torch.nn.Embedding, "
                    f"CompositionalEmbedding or a module with "
                    f"'stored_tables()'")


def module_precision(module: Module) -> str:
    r"""The value precision :obj:`module` is trained at (its
    :obj:`precision`, else :obj:`'float32'`)."""
    return dtype_name(getattr(module, 'precision', 'float32'))


@torch.no_grad()
def module_table_shapes(module: Module) -> List[TableShape]:
    r"""The :obj:`(rows, cols, pruned)` of the tables :obj:`module` stores
    (see :func:`stored_tables`)."""
    return [(t.size(0), t.size(1), pruned)
            for _, t, pruned in stored_tables(module)]


@torch.no_grad()
def memory_report(module: Module,
                  dtype: Optional[Union[str, torch.dtype]] = None
                  ) -> MemoryReport:
    r"""The stored size of an embedding module, per table, with values in
    precision :obj:`dtype` (:obj:`None`: :func:`module_precision`; equal to
    the :attr:`nbytes` of its :meth:`to_compact` export, where it has
    one)."""
    dtype = module_precision(module) if dtype is None else dtype
    tables = {name: table_nbytes(table, pruned, dtype)
              for name, table, pruned in stored_tables(module)}
    return MemoryReport(dict(tables, **index_tables(module)))


def index_tables(module: Module) -> Dict[str, TableBytes]:
    r"""The stored structures of :obj:`module` besides its value tables
    (its :meth:`index_tables`, *e.g.* the id set of
    :class:`~pyg_cerp.nn.HybridEmbedding`; none for other modules)."""
    fn = getattr(module, 'index_tables', None)
    return dict(fn()) if callable(fn) else {}


def fixed_nbytes(module: Module,
                 dtype: Optional[Union[str, torch.dtype]] = None) -> int:
    r"""The stored bytes of :obj:`module` that pruning cannot change: its
    unpruned tables and :func:`index_tables` (what a byte target adds to the
    pruned tables' :func:`tables_nbytes`)."""
    dtype = module_precision(module) if dtype is None else dtype
    return sum(table_nbytes(t, False, dtype).nbytes
               for _, t, pruned in stored_tables(module) if not pruned) + sum(
                   t.nbytes for t in index_tables(module).values())


def stored_nbytes(module: Module,
                  dtype: Optional[Union[str, torch.dtype]] = None) -> int:
    r"""Shortcut for :obj:`memory_report(module, dtype).nbytes`."""
    return memory_report(module, dtype).nbytes
