r"""Honest memory accounting: the bytes of the *stored* form of an embedding.

What counts is what has to be kept to serve the embeddings after training:

* a dense table of :math:`r \times d` :obj:`float32` values takes
  :math:`4rd` bytes;
* a pruned table is stored in the cheaper of two sparse row formats (chosen
  per table, ties going to the bitmap, see :func:`table_nbytes`), the
  formats of :class:`pyg_cerp.nn.compact.CompressedTable` with
  :obj:`float32` values:

  - **CSR**: the :math:`z` non-zero values (:obj:`float32`, 4 bytes each),
    their column indices in the smallest unsigned integer type that holds
    :math:`d - 1` (:obj:`uint8` for :math:`d \leq 256`, :obj:`int16` for
    :math:`d \leq 32768`, else :obj:`int32`) and :math:`r + 1` row pointers
    (:obj:`int32`, or :obj:`int64` once :math:`z \geq 2^{31}`):
    :math:`4z + z \cdot \mathrm{idx} + 4 (r + 1)` bytes,
  - **bitmap**: one bit per entry (each row padded to whole bytes,
    :math:`r \lceil d / 8 \rceil` bytes) plus the :math:`z` values:
    :math:`4z + r \lceil d/8 \rceil` bytes (the row pointers are prefix
    sums of the popcounts, recomputed at load, not stored);

* only rows that some entity reads are stored: for
  :class:`~pyg_cerp.nn.CompositionalEmbedding`, the
  :math:`\lceil N / \lceil N/b \rceil \rceil` used rows of
  :math:`\hat{\mathbf{Q}}` (see :func:`pyg_cerp.diagnostics.hash_balance`);
* hash functions computed on the fly (:math:`k \bmod b`,
  :math:`\lfloor k / m \rfloor`, a universal hash with two stored integers)
  take no table; their few constants are ignored;
* training-only state (threshold logits, masks while retraining, optimiser
  state) is **not** counted: after training, the pruned values and their
  non-zero pattern are all that is needed.

Where the module offers :meth:`to_compact` (the serving form of
:mod:`pyg_cerp.nn.compact`) and that form reports :obj:`nbytes`, that number
is used instead, so that the benchmark and the serving code agree.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
from torch import Tensor
from torch.nn import Module

#: The size of one stored value (:obj:`float32`).
VALUE_BYTES = 4


def _index_bytes(max_value: int) -> int:
    r"""The bytes of the smallest integer type holding :obj:`max_value`
    (:obj:`uint8`, :obj:`int16`, :obj:`int32` or :obj:`int64`)."""
    if max_value < 2**8:
        return 1
    if max_value < 2**15:
        return 2
    if max_value < 2**31:
        return 4
    return 8


@dataclass(frozen=True)
class TableBytes:
    r"""The stored size of one table.

    Args:
        rows (int): The number of rows :math:`r`.
        cols (int): The number of columns :math:`d`.
        nonzero (int): The number of non-zero values :math:`z`.
        format (str): :obj:`'dense'`, :obj:`'csr'` or :obj:`'bitmap'`.
        nbytes (int): The bytes of that format.
    """
    rows: int
    cols: int
    nonzero: int
    format: str
    nbytes: int


def dense_nbytes(rows: int, cols: int) -> int:
    r"""The bytes :math:`4rd` of a dense :obj:`float32` table."""
    return VALUE_BYTES * rows * cols


def csr_nbytes(rows: int, cols: int, nonzero: int) -> int:
    r"""The bytes of a CSR table: :obj:`float32` values, column indices in
    the smallest integer type holding :math:`d - 1`, :math:`r + 1` row
    pointers in the smallest of :obj:`int32`/:obj:`int64` holding
    :math:`z`."""
    ptr = 4 if nonzero < 2**31 else 8
    return (nonzero * (VALUE_BYTES + _index_bytes(max(cols - 1, 0))) +
            (rows + 1) * ptr)


def bitmap_nbytes(rows: int, cols: int, nonzero: int) -> int:
    r"""The bytes of a per-row bitmap table: :math:`r \lceil d/8 \rceil`
    bytes of bits plus the :math:`z` :obj:`float32` values."""
    return rows * math.ceil(cols / 8) + VALUE_BYTES * nonzero


def table_nbytes(table: Tensor, pruned: bool = True) -> TableBytes:
    r"""The stored size of a 2-D table: for :obj:`pruned=True`, the cheaper
    of CSR and bitmap (ties: bitmap; see the module docstring); otherwise
    dense.

    Args:
        table (torch.Tensor): The :math:`r \times d` table (its exact zeros
            are the pruned entries).
        pruned (bool, optional): Whether zeros may be left out.
            (default: :obj:`True`)
    """
    if table.dim() != 2:
        raise ValueError(f"'table' must be 2-D (got shape "
                         f"{tuple(table.shape)})")
    rows, cols = table.shape
    nonzero = int(table.count_nonzero())
    dense = dense_nbytes(rows, cols)
    if not pruned:
        return TableBytes(rows, cols, nonzero, 'dense', dense)
    csr = csr_nbytes(rows, cols, nonzero)
    bitmap = bitmap_nbytes(rows, cols, nonzero)
    if csr < bitmap:
        return TableBytes(rows, cols, nonzero, 'csr', csr)
    return TableBytes(rows, cols, nonzero, 'bitmap', bitmap)


@dataclass
class MemoryReport:
    r"""The stored size of an embedding module.

    Args:
        tables (Dict[str, TableBytes]): Per stored table.
        source (str): How the number was obtained: :obj:`'tables'` (this
            module's formats) or :obj:`'to_compact'` (the module's own
            compact serving form).
        compact_nbytes (int, optional): The compact form's :obj:`nbytes`
            where available.
    """
    tables: Dict[str, TableBytes] = field(default_factory=dict)
    source: str = 'tables'
    compact_nbytes: int = -1

    @property
    def nbytes(self) -> int:
        r"""The total bytes (the compact form's where available)."""
        if self.compact_nbytes >= 0:
            return self.compact_nbytes
        return sum(t.nbytes for t in self.tables.values())

    @property
    def nonzero(self) -> int:
        r"""The total number of stored non-zero values."""
        return sum(t.nonzero for t in self.tables.values())

    def formats(self) -> str:
        r"""A short description, *e.g.* :obj:`'P:csr,Q:bitmap'`."""
        return ','.join(f'{k}:{v.format}' for k, v in self.tables.items())


def stored_tables(module: Module) -> List[Tuple[str, Tensor, bool]]:
    r"""The tables :obj:`module` has to store, as
    :obj:`(name, table, pruned)` triples.

    Supports :class:`torch.nn.Embedding` (one dense table),
    :class:`~pyg_cerp.nn.CompositionalEmbedding` (the two pruned meta tables,
    the used rows of :math:`\hat{\mathbf{Q}}` only)
    and any module with a :meth:`stored_tables` method (the baselines in
    :mod:`pyg_cerp.nn.baselines`).
    """
    if hasattr(module, 'stored_tables'):
        return list(module.stored_tables())
    if hasattr(module, 'pruned_tables'):  # CompositionalEmbedding
        p_hat, q_hat = module.pruned_tables()
        q_used = q_hat[:module.num_q_rows_used]
        return [('P', p_hat.detach(), True), ('Q', q_used.detach(), True)]
    if isinstance(module, torch.nn.Embedding):
        return [('weight', module.weight.detach(), False)]
    raise TypeError(f"Cannot count the stored bytes of "
                    f"{type(module).__name__}: expected torch.nn.Embedding, "
                    f"CompositionalEmbedding or a module with "
                    f"'stored_tables()'")


@torch.no_grad()
def memory_report(module: Module, use_compact: bool = True) -> MemoryReport:
    r"""The stored size of an embedding module (see the module docstring for
    the formats).

    Args:
        module (torch.nn.Module): The embedding module.
        use_compact (bool, optional): If :obj:`True` and the module offers
            :meth:`to_compact` whose result has an :obj:`nbytes`, that number
            is the total. (default: :obj:`True`)
    """
    report = MemoryReport({
        name: table_nbytes(table, pruned)
        for name, table, pruned in stored_tables(module)
    })
    if use_compact and hasattr(module, 'to_compact'):
        try:
            compact = module.to_compact()
        except (NotImplementedError, TypeError):
            compact = None
        nbytes = getattr(compact, 'nbytes', None)
        if callable(nbytes):
            nbytes = nbytes()
        if isinstance(nbytes, int):
            report.compact_nbytes = nbytes
            report.source = 'to_compact'
    return report


def stored_nbytes(module: Module, use_compact: bool = True) -> int:
    r"""The bytes of the stored form of an embedding module (shortcut for
    :obj:`memory_report(module).nbytes`)."""
    return memory_report(module, use_compact).nbytes
