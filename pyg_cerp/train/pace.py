r"""The pace plan of :class:`~pyg_cerp.train.PruningScheduler`
(:obj:`pace_epochs`): the geometric density plan from the onset to the
smallest target, and the least common threshold offset per table that brings
a table down to it."""
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

VALUE_BOUND = 1. - 1e-4
r"""Under a pace plan the pruned tables' values are kept in
:math:`[-\beta, \beta]`, :math:`\beta = \sigma(9.2)`, where the
threshold :math:`\sigma(S)` can still reach them."""


class PacePlan:
    r"""The pace plan of :class:`~pyg_cerp.train.PruningScheduler` (a
    mixin; it uses the scheduler's :obj:`embedding`, :obj:`targets`,
    :obj:`target_unit`, :obj:`pace_epochs`, :obj:`steps_per_epoch`,
    :obj:`num_steps`, :obj:`onset_step`, :obj:`onset_density`,
    :obj:`pace_offset`, :obj:`denominator`, :meth:`density` and, for byte
    targets, :meth:`_pace_bytes`)."""
    def planned_density(self, ahead: int = 0) -> Optional[float]:
        r"""The density :math:`\hat{\delta}(\tau)` of the pace plan now,
        or :obj:`ahead` steps from now (:obj:`None` without
        :obj:`pace_epochs` or before the onset)."""
        if (self.pace_epochs is None or self.onset_step is None
                or self.onset_density is None):
            return None
        if self.steps_per_epoch is None:
            return self.onset_density
        tau = (self.num_steps + ahead - self.onset_step) / \
            self.steps_per_epoch
        final = min(self.targets)
        frac = min(1., max(0., tau / self.pace_epochs))
        return self.onset_density * (final / self.onset_density)**frac

    def _pairs(self) -> List[Tuple[Tensor, Tensor]]:
        r"""(values, threshold logits) of each pruned table."""
        raw = [getattr(self.embedding, n, None) for n in ('P', 'Q')]
        if raw[0] is None:  # PEP's values are 'V'.
            raw = [getattr(self.embedding, 'V', getattr(self.embedding,
                                                         'weight', None))]
        if len(raw) != len(self._thresholds) or any(
                not isinstance(r, Tensor) for r in raw):
            raise TypeError(f"'pace_epochs' needs the tables 'P', 'Q' (or "
                            f"'weight') of '{type(self.embedding).__name__}'"
                            f" paired with its threshold logits")
        return list(zip(raw, self._thresholds))

    @torch.no_grad()
    def _pace(self, density: float) -> float:
        r"""Raises the threshold logits of each table by the least common
        offset that brings that table down to the plan; returns the new
        density."""
        if self.pace_epochs is None or self.onset_step is None:
            return density
        if self.onset_density is None:
            self.onset_density = density
            return density
        plan = self.planned_density()
        if plan is None or density <= plan:
            return density
        # An offset per table (with one, a table absorbs all the pruning),
        # values kept within reach of a sigmoid threshold (the regulariser
        # grows the entries it defends; measured: the plan stalls beyond 1).
        pairs = self._pairs()
        for value, _ in pairs:
            value.clamp_(-VALUE_BOUND, VALUE_BOUND)
        if self.target_unit == 'bytes':
            return self._pace_bytes(pairs, plan, density)
        fraction = plan * self.denominator / sum(v.numel() for v, _ in pairs)
        self._shift_to(pairs, fraction)
        return self.density()

    def _shift_to(self, pairs: List[Tuple[Tensor, Tensor]],
                  fraction: float,
                  rows: Optional[List[int]] = None) -> None:
        # Prunes each table to `fraction` of its entries, counted over its
        # first `rows[i]` rows when given (the rows its stored form keeps:
        # CERP's Q has rows no entity uses, which must not count).
        shifts = []
        for i, (value, thr) in enumerate(pairs):
            v = value.detach().abs().float()
            m = torch.logit(v.clamp(max=VALUE_BOUND)) - thr.detach().float()
            m = m.expand_as(v) if m.shape != v.shape else m
            if rows is not None:
                v, m = v[:rows[i]], m[:rows[i]]
            nonzero = int((m > 0).sum())
            margins = m[(m > 0) & torch.isfinite(m)]
            excess = nonzero - int(math.floor(fraction * v.numel()))
            if excess <= 0 or margins.numel() == 0:
                shifts.append(0.)
                continue
            shift = float(torch.kthvalue(margins, min(
                excess, margins.numel())).values) * (1. + 1e-6) + 1e-12
            thr.add_(shift)
            shifts.append(shift)
        self.pace_offset += sum(shifts) / max(len(shifts), 1)
