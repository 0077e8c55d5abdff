r"""Byte targets of :class:`~pyg_cerp.train.PruningScheduler`
(:obj:`target_unit='bytes'`): the stored bytes of the embedding's tables at a
value precision (:mod:`pyg_cerp.memory`), the target's floor, and the
densities and fills that land on a byte budget."""
import math
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module

from pyg_cerp.memory import (density_for_nbytes, fixed_nbytes,
                             module_precision, module_table_shapes,
                             stored_nbytes, tables_nbytes)
from pyg_cerp.nn.quant import check_precision
from pyg_cerp.train.snapshots import Masks


class ByteTargets:
    r"""The byte counting of :class:`~pyg_cerp.train.PruningScheduler`
    (a mixin; it uses the scheduler's :obj:`embedding`, :obj:`target_unit`,
    :obj:`denominator`, :meth:`density` and the pace plan's
    :meth:`~pyg_cerp.train.pace.PacePlan._shift_to`)."""
    precision: Optional[str] = None
    # The pruned tables' shapes (one per mask) and the bytes of the rest
    # (unpruned tables, index structures such as a hybrid's id set).
    _shapes: Optional[List[Tuple[int, int, int]]] = None
    _fixed: int = 0

    def _init_bytes(self, embedding: Module, targets: List[float],
                    precision: Optional[Union[str, torch.dtype]]) -> None:
        try:
            shapes = module_table_shapes(embedding)
        except TypeError:
            raise ValueError(
                f"target_unit='bytes' needs an embedding whose stored tables "
                f"pyg_cerp.memory counts ('pruned_tables()' or "
                f"'stored_tables()'), which '{type(embedding).__name__}' "
                f"lacks; use target_unit='full'") from None
        self.precision = (module_precision(embedding) if precision is None
                          else check_precision(precision))
        self._shapes = [s for s in shapes if s[2]]
        self._fixed = fixed_nbytes(embedding, self.precision)
        floor = self._tables_nbytes([0] * len(self._shapes)) / (
                                  4 * int(embedding.num_full_params))
        low = [t for t in targets if t <= floor]
        if low:
            raise ValueError(
                f"Byte target(s) {low} cannot be reached at precision "
                f"{self.precision!r}: with every value pruned, the sparse "
                f"index (and the int8 scales) still take {floor:.4g} of the "
                f"full table's float32 bytes; choose targets above it or a "
                f"smaller bucket size")

    def nbytes(self, masks: Optional[Masks] = None) -> int:
        r"""The stored bytes of the embedding at :obj:`precision` (for
        :obj:`target_unit='bytes'`), or of tables with the non-zero patterns
        :obj:`masks`."""
        if self.target_unit != 'bytes':
            raise RuntimeError("'nbytes()' needs target_unit='bytes'")
        if masks is None:
            return stored_nbytes(self.embedding, self.precision)
        masks = [masks] if isinstance(masks, Tensor) else list(masks)
        nnz = [int(m[:rows].sum()) for m, (rows, _, _) in zip(masks,
                                                              self._shapes)]
        return self._tables_nbytes(nnz)

    def _tables_nbytes(self, nnz: List[int]) -> int:
        # The stored bytes with `nnz` non-zeros in the pruned tables.
        return tables_nbytes(self._shapes, nnz, self.precision) + self._fixed

    def _pace_bytes(self, pairs: List[Tuple[Tensor, Tensor]], plan: float,
                    density: float) -> float:
        # The uniform density whose stored bytes fit the plan; the tables'
        # unused rows (Q's) can leave it a little above, so a few refits.
        budget = math.floor(plan * self.denominator)  # Whole bytes.
        # The share is of the rows each table stores (as in the byte count).
        rows = ([r for r, _, _ in self._shapes]
                if len(self._shapes) == len(pairs) else None)
        for _ in range(4):
            fraction = density_for_nbytes(self._shapes, budget - self._fixed,
                                          self.precision)
            if fraction is None:  # Below the empty tables' bytes.
                break
            self._shift_to(pairs, fraction, rows)
            density = self.density()
            if density <= plan:
                break
            budget -= max(1, math.ceil((density - plan) * self.denominator))
        return density

    def _fill_count(self, nbytes: int, order: Tensor,
                    masks: List[Tensor]) -> int:
        r"""The most candidates :obj:`order` (flat positions over
        :obj:`masks`, best first) that can join :obj:`masks` within
        :obj:`nbytes` stored bytes."""
        assert self._shapes is not None
        # Per table, how many of the first k candidates are stored entries.
        gained, start = [], 0
        base = []
        for m, (rows, cols, _) in zip(masks, self._shapes):
            local = order - start
            used = (local >= 0) & (local < rows * cols)
            gained.append(F.pad(used.long().cumsum(0), (1, 0)).tolist())
            base.append(int(m[:rows].sum()))
            start += m.numel()

        def fits(k: int) -> bool:
            nnz = [b + g[k] for b, g in zip(base, gained)]
            return self._tables_nbytes(nnz) <= nbytes

        lo, hi = 0, order.numel()  # Bytes grow with k: the largest fit.
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        return lo
