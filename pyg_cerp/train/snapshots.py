r"""What phase 1 records: mask snapshots at memory targets and its
outcome."""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

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
