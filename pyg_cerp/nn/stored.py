r"""What the baselines of :mod:`pyg_cerp.nn.baselines` and
:mod:`pyg_cerp.nn.pep` store: their tables (:meth:`stored_tables`, counted
by :mod:`pyg_cerp.memory` at the :obj:`precision`) and the rows a budget
buys."""
import math
from typing import Dict, List, Optional, Tuple

from torch import Tensor
from torch.nn import Module

from pyg_cerp.nn.compositional import _check_sizes, _Counts
from pyg_cerp.nn.quant import check_precision, fake_quantize
from pyg_cerp.utils.validation import check_int

StoredTables = List[Tuple[str, Tensor, bool]]


def budget_rows(num_embeddings: int, fraction: float) -> int:
    r"""The :math:`\lfloor f N \rfloor` rows that a budget of :obj:`fraction`
    :math:`f \in (0, 1]` of :math:`N` rows buys.

    Args:
        num_embeddings (int): :math:`N`.
        fraction (float): :math:`f`.
    """
    check_int('num_embeddings', num_embeddings)
    if not 0. < float(fraction) <= 1.:
        raise ValueError(f"'fraction' must be in (0, 1] (got {fraction})")
    # The epsilon protects against 0.1 * 100 = 10.000000000000002.
    return int(math.floor(fraction * num_embeddings + 1e-9))


def nbytes_rows(embedding_dim: int, nbytes: int,
                precision: str = 'float32') -> int:
    r"""The rows of dense :math:`d`-wide tables that :obj:`nbytes` stored
    bytes buy at :obj:`precision` (:math:`d` values a row, plus a
    :obj:`float32` scale for :obj:`'int8'` and :obj:`'int4'`;
    :mod:`pyg_cerp.memory`).

    Args:
        embedding_dim (int): :math:`d`.
        nbytes (int): The byte budget.
        precision (str, optional): The value precision.
            (default: :obj:`'float32'`)
    """
    from pyg_cerp.memory import layout_nbytes
    check_int('embedding_dim', embedding_dim)
    check_int('nbytes', nbytes, minimum=0)
    return nbytes // layout_nbytes(1, embedding_dim, embedding_dim, 'dense',
                                   check_precision(precision))


class _Stored(_Counts):
    r"""The stored form of a baseline (its parameters named in
    :obj:`_stored`, dense unless a subclass says otherwise) at its
    :obj:`precision` (a mixin)."""
    precision: str = 'float32'

    def _set_sizes(self, num_embeddings: int, embedding_dim: int,
                   rows_name: str, rows: int, check_index: bool,
                   precision: str) -> None:
        # The checked arguments that the baselines' constructors share.
        self.precision = check_precision(precision)
        _check_sizes(num_embeddings, embedding_dim, rows_name, rows)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        setattr(self, rows_name, rows)
        self.check_index = check_index

    def stored_tables(self) -> StoredTables:
        r"""The stored tables as :obj:`(name, table, pruned)` triples (the
        unquantised values; :mod:`pyg_cerp.memory` counts them at
        :obj:`precision`)."""
        return [(name, self._parameters[name].detach(), False)
                for name in self._stored]

    def _quantize(self, value: Tensor) -> Tensor:
        return fake_quantize(value, self.precision)

    def compressed_tables(self, dtype: Optional[str] = None,
                          layout: str = 'auto') -> Dict[str, Module]:
        r"""The stored tables as
        :class:`~pyg_cerp.nn.compact.CompressedTable` by name (sparse
        layouts; :obj:`dtype=None`: the :obj:`precision`), whose
        :meth:`to_dense` is what :attr:`weight` is composed from.

        Args:
            dtype (str, optional): The value precision. (default: :obj:`None`)
            layout (str, optional): :obj:`'csr'`, :obj:`'bitmap'` or
                :obj:`'auto'`. (default: :obj:`'auto'`)
        """
        from pyg_cerp.nn.compact import CompressedTable
        dtype = self.precision if dtype is None else dtype
        return {name: CompressedTable.from_dense(table, layout, dtype)
                for name, table, _ in self.stored_tables()}

    def _precision_repr(self) -> str:
        return ('' if self.precision == 'float32' else
                f', precision={self.precision}')

    def num_nonzero(self) -> int:
        r"""The number of stored values (dense: zeros included)."""
        return sum(t.numel() for _, t, _ in self.stored_tables())

    def nbytes(self) -> int:
        r"""The bytes of the stored form (see :mod:`pyg_cerp.memory`)."""
        from pyg_cerp.memory import stored_nbytes
        return stored_nbytes(self)
