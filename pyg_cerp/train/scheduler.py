r"""The pruning schedule of CERP: the regulariser weight :math:`\gamma`, the
density plan and mask snapshots at memory targets."""
import math
import warnings
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.nn import Module

from pyg_cerp.train.byte_targets import ByteTargets
from pyg_cerp.train.pace import PacePlan
from pyg_cerp.train.snapshots import (ExactSnapshots,
                                      MaskSnapshot, PruningOutcome,
                                      TargetNotReachedError,
                                      TargetNotReachedWarning)
from pyg_cerp.utils.validation import check_float, check_int

#: The units of the memory targets.
TARGET_UNITS = ('full', 'meta', 'bytes')

# The configuration and the progress in a state dict, and how
# load_state_dict() casts what it restores.
_CONFIG_STATE = ('gamma_init', 'gamma_decay', 'gamma_decay_every',
                 'check_every', 'threshold_drive', 'gamma_scale',
                 'prune_start', 'gamma_at_onset', 'pace_epochs')
_STATE = ('steps_per_epoch', 'pace_offset', 'onset_step', 'onset_density',
          'num_steps', 'epoch', 'start_density', 'min_density',
          'last_density')
_LOADED = dict(gamma_init=float, gamma_decay=float, min_density=float,
               last_density=float, threshold_drive=float,
               gamma_decay_every=int, check_every=int, num_steps=int,
               epoch=int, start_density=float, steps_per_epoch=int,
               onset_step=int, onset_density=float)


def _opt(cast: Any, value: Any) -> Any:
    return None if value is None else cast(value)


class PruningScheduler(PacePlan, ExactSnapshots, ByteTargets):
    r"""Drives phase 1 of CERP for any *prunable* embedding (one with
    :meth:`num_nonzero`, :attr:`num_full_params`, :meth:`masks`,
    :meth:`freeze_masks`, :meth:`initial_state` and optionally
    :attr:`num_meta_params` and :meth:`pruning_loss`, *e.g.*
    :class:`~pyg_cerp.nn.CompositionalEmbedding`).

    The loop calls :meth:`on_train_start` once, :meth:`step` after every
    optimiser step and :meth:`on_epoch_end` after every epoch, and adds
    :meth:`regularizer` to its loss, weighted by

    .. math::
        \gamma_t = \gamma_0 \cdot \rho^{\lfloor t / T \rfloor}

    in epoch :math:`t`. Every :obj:`check_every` steps it measures the
    density (non-zeros over :math:`Nd` for :obj:`target_unit='full'`, over
    the prunable parameters for :obj:`'meta'`, the stored bytes over the
    :math:`4Nd` bytes of the full :obj:`float32` table for :obj:`'bytes'`)
    and, the first time it is at or below a target, snapshots the masks
    (:class:`MaskSnapshot`);
    :meth:`freeze` applies a snapshot, rewound to the weights captured by
    :meth:`on_train_start` (lottery ticket) or not.

    With :obj:`pace_epochs`, pruning follows the geometric plan

    .. math::
        \hat{\delta}(\tau) = \delta_0 \left(\delta_K /
        \delta_0\right)^{\min(1, \tau / \tau_K)}

    from the onset density :math:`\delta_0` to the smallest target
    :math:`\delta_K`, :math:`\tau` the epochs since the onset: when a
    check finds the density above the plan, the threshold logits of each
    table rise by the least common :math:`\Delta s \geq 0` that brings it
    down to the plan (a quantile of the margins :math:`\sigma^{-1}(|v|) -
    S`), the official clock (weight decay raising every :math:`S` by the lr
    per step) replaced by one in epochs; the learned spread of the logits
    is untouched.

    With :obj:`target_unit='bytes'` the targets are byte budgets: the stored
    bytes of the embedding's tables (:func:`pyg_cerp.memory.stored_nbytes`:
    values at :obj:`precision` plus the best sparse layout's index and the
    int8 scales, what its export stores) as a fraction of :math:`4Nd`; an
    absolute budget of :math:`B` bytes is the target :math:`B / (4Nd)`.
    The plan stays geometric in that unit; the pace converts a planned byte
    fraction to the uniform density of the tables that fits it
    (:func:`pyg_cerp.memory.density_for_nbytes`).

    Args:
        embedding (torch.nn.Module): The prunable embedding.
        targets (Sequence[float]): Memory targets in :math:`(0, 1)`.
            (default: :obj:`(0.10, 0.05, 0.01)`)
        target_unit (str, optional): :obj:`'full'`, :obj:`'meta'` or
            :obj:`'bytes'`. (default: :obj:`'full'`)
        gamma_init (float, optional): :math:`\gamma_0`. (default: :obj:`1.0`)
        gamma_decay (float, optional): :math:`\rho \in [0, 1]`.
            (default: :obj:`0.5`)
        gamma_decay_every (int, optional): :math:`T`, in epochs.
            (default: :obj:`1`)
        check_every (int, optional): Measure the density every this many
            steps. (default: :obj:`1`)
        capture_initial_state (bool, optional): Capture the rewind weights at
            construction too. (default: :obj:`True`)
        threshold_drive (float, optional): Adds :math:`-c \sum \mathbf{S}`
            over the threshold logits: under Adam it raises each by about its
            lr per step, without the saturation of weight decay.
            (default: :obj:`0.`)
        gamma_scale (float, optional): A factor :math:`c` on the
            regulariser (see :meth:`~pyg_cerp.train.CERPConfig.derived`).
            (default: :obj:`1.`)
        reduction (str, optional): :obj:`'mean'` or :obj:`'sum'` (official)
            over the batch's entities. (default: :obj:`'mean'`)
        prune_start (int, optional): Epochs with frozen thresholds; at epoch
            :obj:`prune_start` they start to learn (the onset).
            (default: :obj:`0`)
        onset_quantile (float, optional): At the onset, set each table's
            threshold logits to :math:`\sigma^{-1}` of this quantile of its
            :math:`|\text{value}|`. (default: :obj:`None`)
        exact_snapshots (bool, optional): When a step overshoots a target by
            more than :obj:`snapshot_tolerance` (relative), refill the
            snapshot with the largest entries of the previous check up to
            the target. (default: :obj:`False`)
        snapshot_tolerance (float, optional): See :obj:`exact_snapshots`.
            (default: :obj:`0.02`)
        gamma_at_onset (bool, optional): :math:`\gamma_t = 0` before
            :obj:`prune_start`, the schedule counted from there.
            (default: :obj:`False`)
        pace_epochs (float, optional): :math:`\tau_K` of the plan
            (:obj:`None`: no plan). (default: :obj:`None`)
        steps_per_epoch (int, optional): Steps per epoch for :math:`\tau`
            (:obj:`None`: measured on the first epoch). (default: :obj:`None`)
        precision (str, optional): For :obj:`target_unit='bytes'`, the value
            precision the bytes are counted at (:obj:`None`: the embedding's
            :obj:`precision`, else :obj:`'float32'`). (default: :obj:`None`)
        thresholds_only (bool, optional): Pass :obj:`thresholds_only=True`
            to the embedding's :meth:`pruning_loss`, so that the
            regulariser's gradient reaches the threshold logits only (not
            official). (default: :obj:`False`)
    """
    def __init__(
        self,
        embedding: Module,
        targets: Sequence[float] = (0.10, 0.05, 0.01),
        target_unit: str = 'full',
        gamma_init: float = 1.0,
        gamma_decay: float = 0.5,
        gamma_decay_every: int = 1,
        check_every: int = 1,
        capture_initial_state: bool = True,
        threshold_drive: float = 0.,
        gamma_scale: float = 1.,
        reduction: str = 'mean',
        prune_start: int = 0,
        onset_quantile: Optional[float] = None,
        exact_snapshots: bool = False,
        snapshot_tolerance: float = 0.02,
        gamma_at_onset: bool = False,
        pace_epochs: Optional[float] = None,
        steps_per_epoch: Optional[int] = None,
        precision: Optional[Union[str, torch.dtype]] = None,
        thresholds_only: bool = False,
    ) -> None:
        for name in ('num_nonzero', 'masks', 'freeze_masks', 'initial_state'):
            if not callable(getattr(embedding, name, None)):
                raise TypeError(
                    f"'{type(embedding).__name__}' is not prunable: it lacks "
                    f"the method '{name}()'")
        if not hasattr(embedding, 'num_full_params'):
            raise TypeError(f"'{type(embedding).__name__}' is not prunable: "
                            f"it lacks 'num_full_params'")
        for name, value, choices in (('target_unit', target_unit,
                                      TARGET_UNITS),
                                     ('reduction', reduction,
                                      ('mean', 'sum'))):
            if value not in choices:
                first = ', '.join(repr(c) for c in choices[:-1])
                raise ValueError(f"'{name}' must be {first} or "
                                 f"{choices[-1]!r} (got {value!r})")
        if target_unit == 'meta' and not hasattr(embedding, 'num_meta_params'):
            raise ValueError(
                f"target_unit='meta' needs 'num_meta_params', which "
                f"'{type(embedding).__name__}' lacks; use target_unit='full'")
        if isinstance(targets, (int, float)):
            targets = [targets]
        targets = [float(t) for t in targets]
        if len(targets) == 0:
            raise ValueError("'targets' must not be empty")
        for t in targets:
            if not 0. < t < 1.:  # Also nan.
                raise ValueError(
                    f"Memory target {t} is not in (0, 1): targets are "
                    f"fractions ({target_unit!r} unit), e.g. 0.1 for 10%")
        if len(set(targets)) != len(targets):
            raise ValueError(f"'targets' holds duplicates (got {targets})")
        self.precision: Optional[str] = None
        self._shapes: Optional[list] = None
        if target_unit == 'bytes':
            self._init_bytes(embedding, targets, precision)
        elif precision is not None:
            raise ValueError(f"'precision' counts bytes: it needs "
                             f"target_unit='bytes' (got {target_unit!r})")
        for name, value, high in (('gamma_init', gamma_init, None),
                                  ('gamma_decay', gamma_decay, 1.),
                                  ('gamma_scale', gamma_scale, None),
                                  ('threshold_drive', threshold_drive, None)):
            check_float(name, value, 0., high)
        check_float('snapshot_tolerance', snapshot_tolerance, 0., 1.,
                    high_open=True)
        if onset_quantile is not None:
            check_float('onset_quantile', onset_quantile, 0., 1.,
                        low_open=True, high_open=True)
        if pace_epochs is not None:
            check_float('pace_epochs', pace_epochs, 0., low_open=True)
        for name, value, low in (('gamma_decay_every', gamma_decay_every, 1),
                                 ('check_every', check_every, 1),
                                 ('prune_start', prune_start, 0),
                                 ('steps_per_epoch', steps_per_epoch, 1)):
            if value is not None:
                check_int(name, int(value), minimum=low)

        self.embedding = embedding
        self.targets: List[float] = sorted(targets, reverse=True)
        self.target_unit, self.reduction = target_unit, reduction
        self.thresholds_only = bool(thresholds_only)
        self.gamma_init, self.gamma_decay = float(gamma_init), float(
            gamma_decay)
        self.gamma_decay_every = int(gamma_decay_every)
        self.check_every = int(check_every)
        self.threshold_drive = float(threshold_drive)
        self.gamma_scale = float(gamma_scale)
        self.prune_start = int(prune_start)
        self.onset_quantile = _opt(float, onset_quantile)
        self.exact_snapshots = bool(exact_snapshots)
        self.snapshot_tolerance = float(snapshot_tolerance)
        self.gamma_at_onset = bool(gamma_at_onset)
        self.pace_epochs = _opt(float, pace_epochs)
        self.steps_per_epoch = _opt(int, steps_per_epoch)
        # The plan's state: the onset it counts from, the offset so far.
        self.pace_offset = 0.
        self.onset_step: Optional[int] = 0 if self.prune_start == 0 else None
        self.onset_density: Optional[float] = None
        self._epoch_start_step = 0
        self._prev_tables: Optional[List[Tensor]] = None
        self._thresholds = [p for n, p in embedding.named_parameters()
                            if 'threshold' in n.split('.')[-1]]
        self.num_steps = self.epoch = 0
        self.snapshots: Dict[float, MaskSnapshot] = {}
        self.initial_weights: Optional[Dict[str, Tensor]] = None
        self.start_density: Optional[float] = None
        self.min_density, self.last_density = float('inf'), float('nan')
        if capture_initial_state:
            self.initial_weights = self._capture()

    # Measuring ###############################################################

    def _capture(self) -> Dict[str, Tensor]:
        return {k: v.detach().clone()
                for k, v in self.embedding.initial_state().items()}

    @property
    def denominator(self) -> int:
        r"""The number of values (for :obj:`'bytes'`: bytes, :math:`4Nd`) a
        density of :obj:`1.0` stands for."""
        if self.target_unit == 'meta':
            return int(self.embedding.num_meta_params)
        if self.target_unit == 'bytes':
            return 4 * int(self.embedding.num_full_params)
        return int(self.embedding.num_full_params)

    def density(self) -> float:
        r"""The current non-zeros (for :obj:`'bytes'`: stored bytes) of the
        embedding in :obj:`target_unit`."""
        if self.target_unit == 'bytes':
            return self.nbytes() / self.denominator
        return int(self.embedding.num_nonzero()) / self.denominator

    def full_fraction(self) -> float:
        r"""The current non-zeros over the full-table size :math:`Nd`."""
        return int(self.embedding.num_nonzero()) / int(
            self.embedding.num_full_params)

    def to_full(self, density: float) -> float:
        r"""Converts a density in :obj:`target_unit` (not :obj:`'bytes'`,
        whose bytes are not linear in the non-zeros) to a full-table
        fraction."""
        if self.target_unit == 'bytes':
            raise ValueError("A byte density has no linear full-table "
                             "fraction: see 'MaskSnapshot.full_fraction'")
        return density * self.denominator / int(self.embedding.num_full_params)

    @property
    def gamma(self) -> float:
        r"""The regulariser weight :math:`\gamma` of the current epoch."""
        start = self.prune_start if self.gamma_at_onset else 0
        if self.epoch < start:
            return 0.
        if self.pace_epochs is not None and self.steps_per_epoch:
            # Under a pace plan the decay is continuous, like the plan: a
            # halving at an epoch boundary would jolt the values mid-plan.
            first = self.onset_step if (self.gamma_at_onset and
                                        self.onset_step is not None) else 0
            tau = (self.num_steps - first) / self.steps_per_epoch
            if not self.gamma_at_onset:
                tau = self.num_steps / self.steps_per_epoch
            return self.gamma_init * self.gamma_decay**(
                max(tau, 0.) / self.gamma_decay_every)
        return self.gamma_init * self.gamma_decay**(
            (self.epoch - start) // self.gamma_decay_every)

    @property
    def pending(self) -> List[float]:
        r"""The targets not reached yet, largest first."""
        return [t for t in self.targets if t not in self.snapshots]

    @property
    def done(self) -> bool:
        r"""Whether every target has a snapshot (pruning can stop)."""
        return not self.pending

    # Hooks ###################################################################

    def on_train_start(self) -> List[float]:
        r"""Captures the rewind weights (unless resuming) and returns the
        targets already met before training (snapshot, with a warning)."""
        self._apply_freeze()
        if self.num_steps == 0:
            self.initial_weights = self._capture()
            self.start_density = self.density()
            new = self._check()
            if new:
                warnings.warn(
                    f"Memory target(s) {new} ({self.target_unit!r} unit) are "
                    f"already met before training: the embedding starts at a "
                    f"density of {self.start_density:.4g}. They are "
                    f"snapshot at step 0 (the unpruned masks); choose "
                    f"targets below {self.start_density:.4g} or a larger "
                    f"bucket size to actually prune.", UserWarning,
                    stacklevel=2)
            return new
        return []

    @torch.no_grad()
    def _check(self) -> List[float]:
        density = self.density()
        self.last_density = density
        density = self._pace(density)
        self.last_density = density
        self.min_density = min(self.min_density, density)
        new = [t for t in self.pending if density <= t]
        if new:
            masks = self.embedding.masks()
            masks = (masks.clone() if isinstance(masks, Tensor) else tuple(
                m.clone() for m in masks))
            full = self.full_fraction()
            for t in new:
                snap_masks, snap_density = masks, density
                if (self.exact_snapshots and self._prev_tables is not None
                        and density < t * (1. - self.snapshot_tolerance)):
                    snap_masks, snap_density = self._fill_to(t, masks)
                nbytes = None
                if self.target_unit == 'bytes':
                    nbytes = self.nbytes(snap_masks)
                    snap_full = sum(int(m.sum()) for m in (
                        [snap_masks] if isinstance(snap_masks, Tensor) else
                        snap_masks)) / int(self.embedding.num_full_params)
                else:
                    snap_full = (full if snap_density == density else
                                 self.to_full(snap_density))
                self.snapshots[t] = MaskSnapshot(t, snap_masks,
                                                 self.num_steps, self.epoch,
                                                 snap_density, snap_full,
                                                 nbytes)
        if self.exact_snapshots and not self.done:
            self._remember_tables()
        return new

    def _apply_freeze(self) -> None:
        r"""Freezes the thresholds before :obj:`prune_start`."""
        if self.prune_start > 0 and self.epoch < self.prune_start:
            for p in self._thresholds:
                p.requires_grad_(False)

    @torch.no_grad()
    def _onset(self) -> None:
        for p in self._thresholds:
            p.requires_grad_(True)
        if self.onset_quantile is None:
            return
        try:
            pairs = self._pairs()
        except TypeError:
            return
        for value, thr in pairs:
            q = torch.quantile(value.detach().abs().flatten().float()[:2**24],
                               self.onset_quantile).clamp(1e-12, 0.5)
            thr.fill_(float(torch.logit(q)))

    def step(self) -> List[float]:
        r"""Call after every optimiser step; returns the targets newly
        reached."""
        self.num_steps += 1
        if self.done or self.num_steps % self.check_every != 0:
            return []
        return self._check()

    def on_epoch_end(self) -> List[float]:
        r"""Call after every epoch: checks the density and advances the
        epoch; returns the targets newly reached."""
        new = [] if self.done else self._check()
        self.epoch += 1
        if self.steps_per_epoch is None and self.num_steps > 0:
            self.steps_per_epoch = self.num_steps - self._epoch_start_step
        self._epoch_start_step = self.num_steps
        if self.prune_start > 0 and self.epoch == self.prune_start:
            self._onset()
            self.onset_step = self.num_steps
            self.onset_density = None  # The next check's density.
        return new

    def regularizer(self, index: Optional[Tensor] = None) -> Optional[Tensor]:
        r"""The weighted regulariser :math:`c \gamma_t
        \mathcal{L}_{\textrm{prune}}` over :obj:`index` plus the drive, or
        :obj:`None` if there is nothing to add or every target is reached.

        Args:
            index (torch.Tensor, optional): Global entity ids of the batch.
        """
        if self.done:
            return None
        out = None
        gamma = self.gamma
        fn = getattr(self.embedding, 'pruning_loss', None)
        if gamma != 0. and self.gamma_scale != 0. and fn is not None:
            kwargs: Dict[str, Any] = {}
            if self.reduction != 'mean':
                kwargs['reduction'] = self.reduction
            if self.thresholds_only:
                kwargs['thresholds_only'] = True
            loss = fn(index, **kwargs)
            out = (gamma * self.gamma_scale) * loss
        active = [p for p in self._thresholds if p.requires_grad]
        if self.threshold_drive > 0 and active:
            # Zero-valued (so that logged losses stay readable), gradient
            # -c for every threshold logit:
            drive = -self.threshold_drive * sum(
                (p - p.detach()).sum() for p in active)
            out = drive if out is None else out + drive
        return out

    # Results #################################################################

    def outcome(self) -> PruningOutcome:
        r"""Summarises phase 1: the targets reached and, for the missing
        ones, how far the density got and what to try."""
        reached = [t for t in self.targets if t in self.snapshots]
        missing = self.pending
        unit = {'full': 'of the full table', 'meta': 'meta-table density',
                'bytes': f"of the full table's float32 bytes, "
                         f"{self.precision} values"}[self.target_unit]
        lines = []
        for t in reached:
            s = self.snapshots[t]
            lines.append(f"target {t:.4g} ({unit}) reached at step {s.step} "
                         f"(epoch {s.epoch}) with density {s.density:.4g}")
        density = self.last_density
        if math.isnan(density):
            density = self.density()
        for t in missing:
            lines.append(
                f"target {t:.4g} ({unit}) NOT reached in {self.epoch} epochs"
                f" ({self.num_steps} steps): the density only fell to "
                f"{self.min_density:.4g} (now {density:.4g}). Try a larger "
                f"threshold learning rate, a less negative 'threshold_init' "
                f"or more pruning epochs.")
        return PruningOutcome(reached, missing, density, self.min_density,
                              self.num_steps, self.epoch, '\n'.join(lines))

    def check_complete(self, strict: bool = False) -> PruningOutcome:
        r"""Returns :meth:`outcome`; warns (raises if :obj:`strict`) when a
        target is missing."""
        out = self.outcome()
        if not out.complete:
            if strict:
                raise TargetNotReachedError(out.message)
            warnings.warn(out.message, TargetNotReachedWarning, stacklevel=2)
        return out

    def freeze(self, target: float, rewind: bool = True) -> None:
        r"""Freezes the embedding to the snapshot of :obj:`target`.

        Args:
            target (float): A reached target.
            rewind (bool, optional): Rewind the values to the initial weights
                (lottery ticket, two-phase CERP); otherwise keep the current
                values (one-phase variant). (default: :obj:`True`)
        """
        target = float(target)
        if target not in self.snapshots:
            raise KeyError(f"Target {target} has no snapshot (reached: "
                           f"{sorted(self.snapshots, reverse=True)})")
        rewind_to = self.initial_weights if rewind else None
        if rewind and rewind_to is None:
            raise RuntimeError("No initial weights were captured to rewind "
                               "to; call 'on_train_start()' first")
        self.embedding.freeze_masks(self.snapshots[target].masks,
                                    rewind_to=rewind_to)

    # Serialisation ###########################################################

    def state_dict(self) -> Dict[str, Any]:
        r"""The schedule state as plain numbers, strings, lists and tensors
        (loadable with :obj:`torch.load(..., weights_only=True)`)."""
        out: Dict[str, Any] = dict(targets=list(self.targets),
                                   target_unit=self.target_unit)
        out.update({k: getattr(self, k) for k in _CONFIG_STATE + _STATE})
        out.update(epoch_start_step=self._epoch_start_step,
                   initial_weights=self.initial_weights,
                   snapshots=[s.to_dict() for s in self.snapshots.values()])
        if self.target_unit == 'bytes':
            out['precision'] = self.precision
        return out

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        r"""Restores a :meth:`state_dict` (the targets and unit must match;
        the other configuration stays this scheduler's, except the
        :math:`\gamma` schedule, :obj:`check_every` and the drive)."""
        targets = sorted((float(t) for t in state['targets']), reverse=True)
        if targets != self.targets or state['target_unit'] != \
                self.target_unit:
            raise ValueError(
                f"Cannot load a schedule for targets {targets} "
                f"({state['target_unit']!r}) into one for {self.targets} "
                f"({self.target_unit!r})")
        if state.get('precision') != self.precision:
            raise ValueError(
                f"Cannot load a schedule of byte targets counted at "
                f"{state.get('precision')!r} into one counted at "
                f"{self.precision!r}")
        for key, cast in _LOADED.items():
            if key in state:  # Older states lack the later keys.
                value = state[key]
                setattr(self, key, _opt(cast, value))
        self.pace_offset = float(state.get('pace_offset', 0.))
        self._epoch_start_step = int(state.get('epoch_start_step',
                                               self.num_steps))
        self.initial_weights = state['initial_weights']
        self._prev_tables = None
        self._apply_freeze()
        self.snapshots = {}
        for d in state['snapshots']:
            s = MaskSnapshot.from_dict(d)
            self.snapshots[s.target] = s

    def __repr__(self) -> str:
        precision = ('' if self.precision is None else
                     f', precision={self.precision!r}')
        return (f'{self.__class__.__name__}(targets={self.targets}, '
                f'unit={self.target_unit!r}{precision}, '
                f'gamma={self.gamma:.4g}, '
                f'epoch={self.epoch}, steps={self.num_steps}, '
                f'reached={sorted(self.snapshots, reverse=True)})')
