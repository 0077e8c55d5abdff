r"""The pruning schedule of CERP: the regulariser weight :math:`\gamma` and
mask snapshots at memory targets."""
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Module

Masks = Union[Tensor, Sequence[Tensor]]

VALUE_BOUND = 1. - 1e-4
r"""Under a pace plan the pruned tables' values are kept in
:math:`[-\beta, \beta]`, :math:`\beta = \sigma(9.2)`, where the
threshold :math:`\sigma(S)` can still reach them."""


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
    """
    target: float
    masks: Masks
    step: int
    epoch: int
    density: float
    full_fraction: float

    def to_dict(self) -> Dict[str, Any]:
        masks = (self.masks if isinstance(self.masks, Tensor) else list(
            self.masks))
        return dict(target=self.target, masks=masks, step=self.step,
                    epoch=self.epoch, density=self.density,
                    full_fraction=self.full_fraction)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'MaskSnapshot':
        masks = d['masks']
        masks = masks if isinstance(masks, Tensor) else tuple(masks)
        return cls(float(d['target']), masks, int(d['step']), int(d['epoch']),
                   float(d['density']), float(d['full_fraction']))


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


class PruningScheduler:
    r"""Drives the pruning phase (phase 1) of CERP for any *prunable*
    embedding.

    The training loop calls :meth:`on_train_start` once, :meth:`step` after
    every optimiser step and :meth:`on_epoch_end` after every epoch, and adds
    :meth:`regularizer` to its loss. The scheduler

    * weights the pruning regulariser with

      .. math::
          \gamma_t = \gamma_0 \cdot \rho^{\lfloor t / T \rfloor}

      for epoch :math:`t`, initial weight :math:`\gamma_0`
      (:obj:`gamma_init`), decay :math:`\rho` (:obj:`gamma_decay`,
      :obj:`1.0` for a constant weight) and period :math:`T`
      (:obj:`gamma_decay_every`);
    * measures the memory of the embedding every :obj:`check_every` steps (it
      falls *within* epochs) and, the first time it is at or below a target,
      snapshots the non-zero masks (:class:`MaskSnapshot`); the weights to
      rewind to in phase 2 (lottery ticket) are captured in
      :meth:`on_train_start`;
    * reports :attr:`done` once every target is reached, so that pruning can
      stop, and :meth:`outcome` / :meth:`check_complete` otherwise.

    The density is measured in :obj:`target_unit`:

    * :obj:`'full'`: non-zeros over :math:`Nd`, the size of the full
      embedding table (:obj:`0.1` means "10% of the memory of
      :class:`torch.nn.Embedding`");
    * :obj:`'meta'`: non-zeros over the prunable parameters (:math:`2bd` for
      CERP), *i.e.*, :math:`1 - \textrm{sparsity}` in the paper.

    A *prunable* embedding provides :meth:`num_nonzero`,
    :attr:`num_full_params`, :meth:`masks`, :meth:`freeze_masks` and
    :meth:`initial_state`, and optionally :attr:`num_meta_params` (needed for
    :obj:`target_unit='meta'`) and :meth:`pruning_loss` (without it,
    :meth:`regularizer` returns :obj:`None`), *e.g.*,
    :class:`~pyg_cerp.nn.CompositionalEmbedding`.

    Args:
        embedding (torch.nn.Module): The prunable embedding.
        targets (Sequence[float]): The memory targets in :math:`(0, 1)`, in
            any order (sorted from largest to smallest internally).
            (default: :obj:`(0.10, 0.05, 0.01)`)
        target_unit (str, optional): :obj:`'full'` or :obj:`'meta'`.
            (default: :obj:`'full'`)
        gamma_init (float, optional): :math:`\gamma_0`. (default: :obj:`1.0`)
        gamma_decay (float, optional): :math:`\rho \in [0, 1]`.
            (default: :obj:`0.5`)
        gamma_decay_every (int, optional): :math:`T`, in epochs.
            (default: :obj:`1`)
        check_every (int, optional): Measure the density every this many
            steps. (default: :obj:`1`)
        capture_initial_state (bool, optional): Capture the rewind weights at
            construction already (they are re-captured by
            :meth:`on_train_start` before the first step).
            (default: :obj:`True`)
        threshold_drive (float, optional): If positive, :meth:`regularizer`
            also adds :math:`-c \sum \mathbf{S}` over the embedding's
            threshold parameters (names containing :obj:`'threshold'`): a
            constant push that, under Adam, raises every threshold logit by
            about its learning rate per step *without* the saturation at
            :math:`\sigma(0) = 0.5` that weight decay on :math:`\mathbf{S}`
            has. (default: :obj:`0.`)
        gamma_scale (float, optional): A constant factor :math:`c` on the
            regulariser, :math:`c \gamma_t \mathcal{L}_{\textrm{prune}}`,
            *e.g.*, the batch-shape conversion of the official weight
            (see :meth:`~pyg_cerp.train.CERPConfig.derived`).
            (default: :obj:`1.`)
        reduction (str, optional): How :meth:`pruning_loss` reduces over the
            batch's entities, :obj:`'mean'` or :obj:`'sum'` (the official
            code sums). (default: :obj:`'mean'`)
        prune_start (int, optional): Epochs during which the thresholds are
            frozen (no gradient, no weight decay) so that the values train
            before anything is pruned; the regulariser acts from step 0 as in
            the official code. At the start of epoch :obj:`prune_start` the
            thresholds are switched on (and, with :obj:`onset_quantile`,
            re-initialised). (default: :obj:`0`)
        onset_quantile (float, optional): If set, at the pruning onset every
            threshold logit of a table is set to
            :math:`\sigma^{-1}(q)` of the :obj:`onset_quantile`-quantile
            :math:`q` of that table's current :math:`|\text{value}|`, so
            that pruning starts right away at the *trained* scale of the
            values (with the official :math:`S_0 = -100` it starts only
            after :math:`\approx 10^5` steps). Equal logits at the onset are
            what the official code has too (all :math:`S` rise in lockstep
            under the weight decay until then). (default: :obj:`None`)
        exact_snapshots (bool, optional): If a step takes the density past a
            target by more than :obj:`snapshot_tolerance` (relative), the
            snapshot is the current mask plus the entries that were non-zero
            at the previous check and have the largest magnitudes there,
            so that its density equals the target (needs
            :meth:`pruned_tables` or :meth:`pruned_table`).
            (default: :obj:`False`)
        snapshot_tolerance (float, optional): See :obj:`exact_snapshots`.
            (default: :obj:`0.02`)
        gamma_at_onset (bool, optional): Count the :math:`\gamma` schedule
            from the pruning onset: :math:`\gamma_t = 0` for :math:`t <`
            :obj:`prune_start` and :math:`\gamma_0 \rho^{\lfloor (t -
            t_0) / T \rfloor}` from :math:`t_0 =` :obj:`prune_start` on, so
            that the values train undisturbed and the regulariser is at its
            strongest while the thresholds move (officially it acts from step
            0). (default: :obj:`False`)
        pace_epochs (float, optional): If set, pruning follows a planned
            density from the onset (epoch :obj:`prune_start`, density
            :math:`\delta_0`) to the smallest target :math:`\delta_K` in
            :obj:`pace_epochs` epochs, geometrically,

            .. math::
                \hat{\delta}(\tau) = \delta_0 \left(\delta_K /
                \delta_0\right)^{\min(1, \tau / \tau_K)},

            :math:`\tau` the (fractional) epochs since the onset. Whenever
            a check finds the density above :math:`\hat{\delta}(\tau)`,
            every threshold logit is raised by the same
            :math:`\Delta s \geq 0`, the least that brings the density
            down to the plan: an entry :math:`v` is non-zero iff
            :math:`\sigma^{-1}(|v|) - S > \Delta s`, so :math:`\Delta s`
            is a quantile of these margins. This is the official dynamics
            with its clock replaced: there, the weight decay on
            :math:`\mathbf{S}` raises every logit by the learning rate per
            step (a common offset growing with the step count), and the
            task gradient and the regulariser move the logits apart; here
            the common offset follows the plan, and the logits are learned
            the same way (their spread is untouched by the offset). A drive
            or a weight decay strong enough to prune on time at
            :math:`B \gg 10` would instead dominate the task gradient and
            move the logits in lockstep. The plan counts epochs, not steps,
            so that the pace is the same on every dataset size; a density
            below the plan is left alone (pruned entries do not come
            back). (default: :obj:`None`)
        steps_per_epoch (int, optional): Optimiser steps per epoch, for
            :math:`\tau` (:obj:`None`: measured on the first epoch; the plan
            holds the onset density until then). (default: :obj:`None`)
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
    ) -> None:
        if reduction not in ('mean', 'sum'):
            raise ValueError(f"'reduction' must be 'mean' or 'sum' "
                             f"(got {reduction!r})")
        if gamma_scale < 0:
            raise ValueError(f"'gamma_scale' must be >= 0 (got {gamma_scale})")
        if int(prune_start) < 0:
            raise ValueError(f"'prune_start' must be >= 0 (got {prune_start})")
        if onset_quantile is not None and not 0. < onset_quantile < 1.:
            raise ValueError(f"'onset_quantile' must be in (0, 1) "
                             f"(got {onset_quantile})")
        if not 0. <= snapshot_tolerance < 1.:
            raise ValueError(f"'snapshot_tolerance' must be in [0, 1) "
                             f"(got {snapshot_tolerance})")
        for name in ('num_nonzero', 'masks', 'freeze_masks', 'initial_state'):
            if not callable(getattr(embedding, name, None)):
                raise TypeError(
                    f"'{type(embedding).__name__}' is not prunable: it lacks "
                    f"the method '{name}()'")
        if not hasattr(embedding, 'num_full_params'):
            raise TypeError(f"'{type(embedding).__name__}' is not prunable: "
                            f"it lacks 'num_full_params'")
        if target_unit not in ('full', 'meta'):
            raise ValueError(f"'target_unit' must be 'full' or 'meta' "
                             f"(got {target_unit!r})")
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
            if not (0. < t < 1.) or math.isnan(t):
                raise ValueError(
                    f"Memory target {t} is not in (0, 1): targets are "
                    f"fractions ({target_unit!r} unit), e.g. 0.1 for 10%")
        if len(set(targets)) != len(targets):
            raise ValueError(f"'targets' holds duplicates (got {targets})")
        if gamma_init < 0:
            raise ValueError(f"'gamma_init' must be >= 0 (got {gamma_init})")
        if not 0. <= gamma_decay <= 1.:
            raise ValueError(f"'gamma_decay' must be in [0, 1] "
                             f"(got {gamma_decay})")
        if int(gamma_decay_every) < 1:
            raise ValueError(f"'gamma_decay_every' must be >= 1 "
                             f"(got {gamma_decay_every})")
        if threshold_drive < 0:
            raise ValueError(f"'threshold_drive' must be >= 0 "
                             f"(got {threshold_drive})")
        if int(check_every) < 1:
            raise ValueError(f"'check_every' must be >= 1 "
                             f"(got {check_every})")
        if pace_epochs is not None and not float(pace_epochs) > 0.:
            raise ValueError(f"'pace_epochs' must be > 0 (got {pace_epochs})")
        if steps_per_epoch is not None and int(steps_per_epoch) < 1:
            raise ValueError(f"'steps_per_epoch' must be >= 1 "
                             f"(got {steps_per_epoch})")

        self.embedding = embedding
        self.targets: List[float] = sorted(targets, reverse=True)
        self.target_unit = target_unit
        self.gamma_init = float(gamma_init)
        self.gamma_decay = float(gamma_decay)
        self.gamma_decay_every = int(gamma_decay_every)
        self.check_every = int(check_every)
        self.threshold_drive = float(threshold_drive)
        self.gamma_scale = float(gamma_scale)
        self.reduction = reduction
        self.prune_start = int(prune_start)
        self.onset_quantile = (None if onset_quantile is None else
                               float(onset_quantile))
        self.exact_snapshots = bool(exact_snapshots)
        self.snapshot_tolerance = float(snapshot_tolerance)
        self.gamma_at_onset = bool(gamma_at_onset)
        self.pace_epochs = (None if pace_epochs is None else
                            float(pace_epochs))
        self.steps_per_epoch = (None if steps_per_epoch is None else
                                int(steps_per_epoch))
        # The plan's state: the onset it counts from, the offset so far.
        self.pace_offset = 0.
        self.onset_step: Optional[int] = 0 if int(prune_start) == 0 else None
        self.onset_density: Optional[float] = None
        self._epoch_start_step = 0
        self._prev_tables: Optional[List[Tensor]] = None
        self._thresholds = [
            p for n, p in embedding.named_parameters()
            if 'threshold' in n.split('.')[-1]
        ]

        self.num_steps = 0
        self.epoch = 0
        self.snapshots: Dict[float, MaskSnapshot] = {}
        self.initial_weights: Optional[Dict[str, Tensor]] = None
        self.start_density: Optional[float] = None
        self.min_density = float('inf')
        self.last_density = float('nan')
        if capture_initial_state:
            self.initial_weights = self._capture()

    # Measuring ###############################################################

    def _capture(self) -> Dict[str, Tensor]:
        return {k: v.detach().clone()
                for k, v in self.embedding.initial_state().items()}

    @property
    def denominator(self) -> int:
        r"""The number of values a density of :obj:`1.0` stands for."""
        if self.target_unit == 'meta':
            return int(self.embedding.num_meta_params)
        return int(self.embedding.num_full_params)

    def density(self) -> float:
        r"""The current non-zeros of the embedding in :obj:`target_unit`."""
        return int(self.embedding.num_nonzero()) / self.denominator

    def full_fraction(self) -> float:
        r"""The current non-zeros over the full-table size :math:`Nd`."""
        return int(self.embedding.num_nonzero()) / int(
            self.embedding.num_full_params)

    def to_full(self, density: float) -> float:
        r"""Converts a density in :obj:`target_unit` to a full-table
        fraction."""
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
        # Every table is brought down to the plan by an offset of its own,
        # so that no table absorbs all of the pruning (with one common
        # offset the regulariser drives one table to zero and the other
        # to values beyond the reach of a sigmoid threshold, measured).
        pairs = self._pairs()
        # Keep the values within reach of a sigmoid threshold: under a plan
        # the regulariser defends the entries it needs by growing them as
        # their threshold rises, and beyond |v| = 1 no threshold can prune
        # them (measured: the plan stalls, then the logits overflow).
        for value, _ in pairs:
            value.clamp_(-VALUE_BOUND, VALUE_BOUND)
        # The plan as a fraction of each table (the tables are the
        # prunable values; the plan is in 'target_unit').
        fraction = plan * self.denominator / sum(v.numel() for v, _ in pairs)
        shifts = []
        for value, thr in pairs:
            v = value.detach().abs().float()
            m = torch.logit(v.clamp(max=VALUE_BOUND)) - thr.detach().float()
            m = m.expand_as(v) if m.shape != v.shape else m
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
        return self.density()

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
        r"""Captures the rewind weights (unless resuming after some steps)
        and snapshots, with a warning, the targets the embedding already meets
        before training (*e.g.*, a 10% full-table target when the meta tables
        hold less than 10% of :math:`Nd` from the start).

        Returns:
            The targets reached at step 0.
        """
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
                snap_full = (full if snap_density == density else
                             self.to_full(snap_density))
                self.snapshots[t] = MaskSnapshot(t, snap_masks,
                                                 self.num_steps, self.epoch,
                                                 snap_density, snap_full)
        if self.exact_snapshots and not self.done:
            tables = self._tables()
            self._prev_tables = (None if tables is None else
                                 [x.detach().abs().clone() for x in tables])
        return new

    def _tables(self) -> Optional[List[Tensor]]:
        fn = getattr(self.embedding, 'pruned_tables', None)
        if callable(fn):
            return list(fn())
        fn = getattr(self.embedding, 'pruned_table', None)
        if callable(fn):
            return [fn()]
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
        k = min(max(want - have, 0), int((scores > 0).sum()))
        flat = torch.cat([m.bool().flatten() for m in cur])
        if k > 0:
            flat[torch.topk(scores, k).indices] = True
        out, offset = [], 0
        for m in cur:
            out.append(flat[offset:offset + m.numel()].view_as(m).clone())
            offset += m.numel()
        res: Masks = out[0] if isinstance(masks, Tensor) else tuple(out)
        return res, (have + k) / self.denominator

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
        r"""Call after every optimiser step of phase 1.

        Returns:
            The targets newly reached at this step (usually empty).
        """
        self.num_steps += 1
        if self.done or self.num_steps % self.check_every != 0:
            return []
        return self._check()

    def on_epoch_end(self) -> List[float]:
        r"""Call after every epoch of phase 1: checks the density (even if
        :obj:`check_every` does not divide the step count) and advances the
        :math:`\gamma` schedule.

        Returns:
            The targets newly reached.
        """
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
        r"""The weighted regulariser :math:`\gamma_t \cdot
        \mathcal{L}_{\textrm{prune}}` over the entities in :obj:`index`
        (plus the threshold drive, if any), or :obj:`None` if there is
        nothing to add (:math:`\gamma_t = 0` or no :meth:`pruning_loss`,
        and no drive) or every target is reached.

        Args:
            index (torch.Tensor, optional): Global entity ids of the batch.
        """
        if self.done:
            return None
        out = None
        gamma = self.gamma
        fn = getattr(self.embedding, 'pruning_loss', None)
        if gamma != 0. and self.gamma_scale != 0. and fn is not None:
            loss = (fn(index) if self.reduction == 'mean' else fn(
                index, reduction=self.reduction))
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
        r"""Summarises phase 1: which targets were reached (with any
        overshoot) and, for the missing ones, how far the density got and what
        to try."""
        reached = [t for t in self.targets if t in self.snapshots]
        missing = self.pending
        unit = 'of the full table' if self.target_unit == 'full' else \
            'meta-table density'
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
        r"""Returns :meth:`outcome` and warns
        (:class:`TargetNotReachedWarning`), or raises
        (:class:`TargetNotReachedError`) if :obj:`strict`, when a target is
        missing."""
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
        return dict(
            targets=list(self.targets),
            target_unit=self.target_unit,
            gamma_init=self.gamma_init,
            gamma_decay=self.gamma_decay,
            gamma_decay_every=self.gamma_decay_every,
            check_every=self.check_every,
            threshold_drive=self.threshold_drive,
            gamma_scale=self.gamma_scale,
            prune_start=self.prune_start,
            gamma_at_onset=self.gamma_at_onset,
            pace_epochs=self.pace_epochs,
            steps_per_epoch=self.steps_per_epoch,
            pace_offset=self.pace_offset,
            onset_step=self.onset_step,
            onset_density=self.onset_density,
            epoch_start_step=self._epoch_start_step,
            num_steps=self.num_steps,
            epoch=self.epoch,
            start_density=self.start_density,
            min_density=self.min_density,
            last_density=self.last_density,
            initial_weights=self.initial_weights,
            snapshots=[s.to_dict() for s in self.snapshots.values()],
        )

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        r"""Restores a :meth:`state_dict` (the targets and unit must match)."""
        targets = sorted((float(t) for t in state['targets']), reverse=True)
        if targets != self.targets or state['target_unit'] != \
                self.target_unit:
            raise ValueError(
                f"Cannot load a schedule for targets {targets} "
                f"({state['target_unit']!r}) into one for {self.targets} "
                f"({self.target_unit!r})")
        for key in ('gamma_init', 'gamma_decay', 'min_density',
                    'last_density', 'threshold_drive'):
            setattr(self, key, float(state[key]))
        for key in ('gamma_decay_every', 'check_every', 'num_steps', 'epoch'):
            setattr(self, key, int(state[key]))
        self.start_density = (None if state['start_density'] is None else
                              float(state['start_density']))
        self.pace_offset = float(state.get('pace_offset', 0.))
        for key in ('steps_per_epoch', 'onset_step'):
            if key in state:
                setattr(self, key, None if state[key] is None else
                        int(state[key]))
        if 'onset_density' in state:
            self.onset_density = (None if state['onset_density'] is None else
                                  float(state['onset_density']))
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
        return (f'{self.__class__.__name__}(targets={self.targets}, '
                f'unit={self.target_unit!r}, gamma={self.gamma:.4g}, '
                f'epoch={self.epoch}, steps={self.num_steps}, '
                f'reached={sorted(self.snapshots, reverse=True)})')
