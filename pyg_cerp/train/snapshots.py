r"""What phase 1 records: mask snapshots at memory targets (taken exactly at
the target with :obj:`exact_snapshots`) and its outcome."""
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

Masks = Union[Tensor, Sequence[Tensor]]


class TargetNotReachedWarning(UserWarning):
    r"""Raised (as a warning) when phase 1 ends before a memory target was
    reached."""


class TargetNotReachedError(RuntimeError):
    r"""Raised by :meth:`PruningScheduler.check_complete` with
    :obj:`strict=True` when a memory target was not reached."""


@dataclass
class MaskSnapshot:
    r"""The non-zero pattern of the embedding the first time a memory target
    was reached.

    Args:
        target (float): The target, in the scheduler's unit.
        masks (torch.Tensor or Sequence[torch.Tensor]): What
            :meth:`embedding.masks()` returned.
        step (int): The number of optimisation steps taken when it was taken.
        epoch (int): The (0-based) epoch it was taken in.
        density (float): The density (in the scheduler's unit) at that point,
            :math:`\leq` :obj:`target`.
        full_fraction (float): The non-zeros over :math:`Nd` at that point.
        nbytes (int, optional): For byte targets, the stored bytes of the
            tables with these masks (:mod:`pyg_cerp.memory`).
            (default: :obj:`None`)
    """
    target: float
    masks: Masks
    step: int
    epoch: int
    density: float
    full_fraction: float
    nbytes: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        masks = (self.masks if isinstance(self.masks, Tensor) else list(
            self.masks))
        out = dict(target=self.target, masks=masks, step=self.step,
                   epoch=self.epoch, density=self.density,
                   full_fraction=self.full_fraction)
        if self.nbytes is not None:
            out['nbytes'] = self.nbytes
        return out

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'MaskSnapshot':
        masks = d['masks']
        masks = masks if isinstance(masks, Tensor) else tuple(masks)
        nbytes = d.get('nbytes')
        return cls(float(d['target']), masks, int(d['step']), int(d['epoch']),
                   float(d['density']), float(d['full_fraction']),
                   None if nbytes is None else int(nbytes))


@dataclass
class PruningOutcome:
    r"""What phase 1 achieved (see :meth:`PruningScheduler.outcome`).

    Args:
        reached (List[float]): The targets with a snapshot.
        missing (List[float]): The targets never reached.
        density (float): The current density (scheduler unit).
        min_density (float): The lowest density seen.
        steps (int): Optimisation steps taken.
        epochs (int): Epochs completed.
        message (str): A human-readable summary with advice for missing
            targets.
    """
    reached: List[float]
    missing: List[float]
    density: float
    min_density: float
    steps: int
    epochs: int
    message: str = field(default='')

    @property
    def complete(self) -> bool:
        r"""Whether every target was reached."""
        return not self.missing


class ExactSnapshots:
    r"""The exact snapshots of :class:`~pyg_cerp.train.PruningScheduler`
    (:obj:`exact_snapshots=True`; a mixin): the magnitudes of the pruned
    tables at each check, and a snapshot that overshot its target refilled
    from them (it uses the scheduler's :obj:`embedding`,
    :obj:`target_unit`, :obj:`denominator`, :meth:`density` and, for byte
    targets, :meth:`nbytes` and :meth:`_fill_count`)."""
    def _remember_tables(self) -> None:
        r"""Keeps the magnitudes of the pruned tables for :meth:`_fill_to`
        at the next check."""
        tables = self._tables()
        self._prev_tables = (None if tables is None else
                             [x.detach().abs().clone() for x in tables])

    def _tables(self) -> Optional[List[Tensor]]:
        for name, wrap in (('pruned_tables', list), ('pruned_table',
                                                     lambda t: [t])):
            fn = getattr(self.embedding, name, None)
            if callable(fn):
                return wrap(fn())
        return None

    def _fill_to(self, target: float, masks: Masks) -> Tuple[Masks, float]:
        r"""The current masks plus the entries pruned since the previous
        check with the largest previous magnitudes, so that the density is
        :obj:`target` (rounded down to whole entries)."""
        cur = [masks] if isinstance(masks, Tensor) else list(masks)
        prev = self._prev_tables
        assert prev is not None
        if len(prev) != len(cur) or any(p.shape != m.shape
                                        for p, m in zip(prev, cur)):
            return masks, self.density()
        want = int(math.floor(target * self.denominator))
        have = sum(int(m.sum()) for m in cur)
        # Candidates: non-zero at the previous check, zero now.
        scores = torch.cat([
            torch.where((p != 0) & ~m.bool(), p, torch.zeros_like(p)).flatten()
            for p, m in zip(prev, cur)
        ])
        flat = torch.cat([m.bool().flatten() for m in cur])
        if self.target_unit == 'bytes':
            order = torch.topk(scores, int((scores > 0).sum())).indices
            order = order[:self._fill_count(want, order, cur)]
            flat[order] = True
        else:
            k = min(max(want - have, 0), int((scores > 0).sum()))
            if k > 0:
                flat[torch.topk(scores, k).indices] = True
        out, offset = [], 0
        for m in cur:
            out.append(flat[offset:offset + m.numel()].view_as(m).clone())
            offset += m.numel()
        res: Masks = out[0] if isinstance(masks, Tensor) else tuple(out)
        if self.target_unit == 'bytes':
            return res, self.nbytes(res) / self.denominator
        return res, (have + k) / self.denominator
