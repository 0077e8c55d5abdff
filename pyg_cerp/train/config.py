r"""The hyper-parameters of the CERP procedure (:class:`CERPConfig`)."""
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional, Tuple

from pyg_cerp.memory import DTYPES, VALUE_BITS
from pyg_cerp.utils.validation import check_ks
from pyg_cerp.utils.validation import check_float, check_int

OFFICIAL_GROUPS = 10
r"""(user, positive) groups per batch of the official code
(``CERP/utils/util.py`` line 50)."""
OFFICIAL_WEIGHT_DECAY = 1e-5
r"""The official Adam L2, on values and threshold logits."""
OFFICIAL_EPS = 1e-8
FAITHFUL_GAMMA = 0.3
r"""The :obj:`'faithful'` :math:`\gamma_0` (official unit): the lowest
overlap at 5% of 0.03, 0.3, 1 and 3 on Gowalla
(``benchmarks/cerp_mechanism.py``)."""
PRUNE_BATCH_SIZE = 8192
r"""The largest default batch of phase 1 (:meth:`CERPConfig.prune_schedule`)."""
PRUNE_LR = 5e-3
r"""The largest default lr of phase 1 (:meth:`CERPConfig.prune_schedule`)."""

_PRESETS: Dict[str, Dict[str, Any]] = dict(
    faithful=dict(bucket_size=None, threshold_init=-100., prune_epochs=8,
                  threshold_lr=None, threshold_weight_decay=None,
                  threshold_eps=None, threshold_drive=0.,
                  gamma_init=FAITHFUL_GAMMA, gamma_unit='official',
                  prune_start=2, onset_quantile=0.02, exact_snapshots=True,
                  gamma_at_onset=True, pace_epochs=4.),
    official=dict(bucket_size=None, threshold_weight_decay=None,
                  threshold_eps=None, threshold_drive=0.,
                  threshold_init=-100., prune_start=0, onset_quantile=None,
                  lr=1e-3, threshold_lr=1e-3, weight_decay=None,
                  gamma_init=1., gamma_unit='official',
                  exact_snapshots=False, prune_epochs=50, batch_size=8192),
    legacy=dict(baseline_epochs=3, retrain_epochs=3, batch_size=8192,
                lr=5e-3, l2_reg=0.),
    # The field defaults: a constant threshold drive (one global magnitude
    # cut); the main job's default until 2026-12-04.
    drive=dict(),
)


@dataclass
class CERPConfig:
    r"""Hyper-parameters of :class:`~pyg_cerp.train.CERPRunner`.

    The field defaults prune like the :obj:`'legacy'` preset (constant
    threshold drive) and train with the fast schedule of issue 10; the
    :obj:`'faithful'` preset (:meth:`preset`) is the official CERP loss and
    optimiser (github.com/xurong-liang/CERP @ ed5222b, see
    ``docs/training.md``) converted to this batch shape. Officially, BPR
    weighs a (positive, negative) pair :math:`1/G` (:math:`G = 10` groups
    per step) and the regulariser :math:`-\gamma_t \sum_e \|\tanh(K
    \mathbf{e}_e)\|^2` weighs an entity :math:`\gamma_t`; here BPR is the
    mean over the :math:`Bn` pairs of a batch, so keeping every ratio to a
    pair's weight gives (:meth:`derived`)

    .. math::
        c_\gamma = \frac{G}{Bn}, \qquad
        \lambda_S = 10^{-5} \frac{G}{Bn}, \qquad
        \epsilon_S = 10^{-8} \frac{G}{Bn}.

    Not official (at :math:`B \gg G` an epoch has 100 steps instead of
    :math:`\approx 81\,000`): thresholds frozen for :obj:`prune_start`
    epochs, then set to the :obj:`onset_quantile` of the values, and a
    threshold lr of :obj:`prune_speed` logits per *epoch*.

    Args:
        dim (int): Embedding size :math:`d`. (default: :obj:`64`)
        bucket_size (int, optional): Meta-table rows :math:`b` (:obj:`None`:
            :math:`\lceil \rho N / 2 \rceil`, see :obj:`meta_ratio`).
            (default: :obj:`5000`)
        meta_ratio (float, optional): :math:`\rho`, the share of the full
            table the meta tables hold (:obj:`None`: twice the largest
            target). (default: :obj:`None`)
        threshold_init (float): Initial threshold logit :math:`S_0`.
            (default: :obj:`-6.`)
        targets (Tuple[float, ...]): Memory targets, sorted largest first.
            (default: :obj:`(0.10, 0.05, 0.01)`)
        target_unit (str): :obj:`'full'` (fraction of :math:`Nd`),
            :obj:`'meta'` (meta-table density) or :obj:`'bytes'` (fraction of
            the full table's :obj:`float32` bytes :math:`4Nd`, counted in the
            stored form at :obj:`precision`: values + index/mask + scales).
            (default: :obj:`'full'`)
        baseline_epochs (int): Epochs of the full-table baseline (:obj:`0`:
            none). (default: :obj:`40`)
        prune_epochs (int): Epoch budget of phase 1. (default: :obj:`5`)
        retrain_epochs (int): Epochs of phase 2 per target.
            (default: :obj:`40`)
        finetune_epochs (int): Epochs of the one-phase variant per target
            (:obj:`0`: none). (default: :obj:`0`)
        batch_size (int): Positive pairs per step. (default: :obj:`32768`)
        num_negatives (int): Negatives per positive. (default: :obj:`5`)
        lr (float): Adam lr of the values. (default: :obj:`2e-2`)
        prune_batch_size (int, optional): The batch of phase 1 (see
            :meth:`prune_schedule`). (default: :obj:`None`)
        prune_lr (float, optional): The lr of phase 1 (see
            :meth:`prune_schedule`). (default: :obj:`None`)
        weight_decay (float): Adam L2 of the values (:obj:`-1.`: the
            official one, converted). (default: :obj:`0.`)
        threshold_lr (float, optional): Adam lr of the thresholds
            (:obj:`None`: :obj:`prune_speed` / steps per epoch).
            (default: :obj:`6e-2`)
        prune_speed (float): See :obj:`threshold_lr`. (default: :obj:`2.`)
        threshold_weight_decay (float, optional): Adam L2 of the thresholds
            (:obj:`None`: :math:`\lambda_S`). (default: :obj:`0.`)
        threshold_eps (float, optional): Adam :math:`\epsilon` of the
            thresholds (:obj:`None`: :math:`\epsilon_S`).
            (default: :obj:`1e-8`)
        threshold_drive (float): A constant push :math:`-c \sum \mathbf{S}`
            (see :class:`~pyg_cerp.train.PruningScheduler`).
            (default: :obj:`1e-3`)
        gamma_init (float): :math:`\gamma_0`, in :obj:`gamma_unit`.
            (default: :obj:`1e-3`)
        gamma_unit (str): :obj:`'official'` (summed, times
            :math:`c_\gamma`) or :obj:`'mean'` (mean over the batch's
            entities). (default: :obj:`'mean'`)
        gamma_decay (float): The decay per period. (default: :obj:`0.5`)
        gamma_decay_every (int): The period, in epochs. (default: :obj:`1`)
        prune_start (int): Epochs before the thresholds move.
            (default: :obj:`0`)
        onset_quantile (float, optional): Threshold re-initialisation at the
            onset. (default: :obj:`None`)
        exact_snapshots (bool): Snapshots at the exact target density.
            (default: :obj:`False`)
        gamma_at_onset (bool): Count the :math:`\gamma` schedule from
            :obj:`prune_start`. (default: :obj:`False`)
        pace_epochs (float, optional): Epochs of the geometric density plan
            (:obj:`None`: no plan). (default: :obj:`None`)
        regularize_thresholds_only (bool): The regulariser's gradient on
            the threshold logits only (values detached in
            :math:`\mathcal{L}_{\textrm{prune}}`, see
            :meth:`~pyg_cerp.nn.CompositionalEmbedding.pruning_loss`, through
            :class:`PruningScheduler`'s :obj:`thresholds_only`); not
            official. (default: :obj:`False`)
        check_every (int): Measure the density every this many steps.
            (default: :obj:`1`)
        clip_grad_norm (float): Gradient-norm clipping. (default: :obj:`100.`)
        l2_reg (float): Weight of LightGCN's L2 penalty on the batch's ego
            embeddings. (default: :obj:`1e-4`)
        seed (int): The seed of everything. (default: :obj:`0`)
        ks (Tuple[int, ...]): Evaluation cut-offs.
            (default: :obj:`(5, 10, 20, 50)`)
        eval_users (int, optional): Evaluate a seeded sample of this many
            users (:obj:`None`: all). (default: :obj:`None`)
        precision (str): Value precision of CERP's meta tables, simulated in
            training (fake quantisation, straight-through gradient) and
            stored at export: :obj:`'float32'`, :obj:`'float16'` or
            :obj:`'int8'` or :obj:`'int4'` (per-row scales).
            (default: :obj:`'float32'`)
    """
    dim: int = 64
    bucket_size: Optional[int] = 5000
    meta_ratio: Optional[float] = None
    threshold_init: float = -6.
    targets: Tuple[float, ...] = (0.10, 0.05, 0.01)
    target_unit: str = 'full'
    baseline_epochs: int = 40
    prune_epochs: int = 5
    retrain_epochs: int = 40
    finetune_epochs: int = 0
    batch_size: int = 32768
    num_negatives: int = 5
    lr: float = 2e-2
    prune_batch_size: Optional[int] = None
    prune_lr: Optional[float] = None
    weight_decay: float = 0.
    threshold_lr: Optional[float] = 6e-2
    prune_speed: float = 2.
    threshold_weight_decay: Optional[float] = 0.
    threshold_eps: Optional[float] = OFFICIAL_EPS
    threshold_drive: float = 1e-3
    gamma_init: float = 1e-3
    gamma_unit: str = 'mean'
    gamma_decay: float = 0.5
    gamma_decay_every: int = 1
    prune_start: int = 0
    onset_quantile: Optional[float] = None
    exact_snapshots: bool = False
    gamma_at_onset: bool = False
    pace_epochs: Optional[float] = None
    regularize_thresholds_only: bool = False
    check_every: int = 1
    clip_grad_norm: float = 100.
    l2_reg: float = 1e-4
    seed: int = 0
    ks: Tuple[int, ...] = (5, 10, 20, 50)
    eval_users: Optional[int] = None
    precision: str = 'float32'

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> 'CERPConfig':
        r"""A named configuration: :obj:`'faithful'` (the official loss and
        optimiser converted to the batch shape, a pruning schedule in
        epochs), :obj:`'official'` (the official values as such: at
        :math:`B \gg 10` it prunes nothing for :math:`\approx 10^5` steps),
        :obj:`'legacy'` (the committed quick-profile numbers) or
        :obj:`'drive'` (the field defaults: a constant threshold drive, in
        effect one global magnitude cut; the main job's default until
        2026-12-04, ``examples/results/lightgcn_cerp-gowalla-drive.*``).

        Args:
            name (str): The preset.
            **overrides: Fields to change.
        """
        if name not in _PRESETS:
            raise ValueError(f"Unknown preset {name!r} (choose from "
                             f"{sorted(_PRESETS)})")
        values = dict(_PRESETS[name], **overrides)
        if values.get('weight_decay', 0.) is None:  # Official, converted.
            values['weight_decay'] = -1.
        return cls(**values)

    def __post_init__(self) -> None:
        # Every value is checked before any training.
        targets = self.targets
        if isinstance(targets, (int, float)):
            targets = (targets, )
        if len(targets) == 0:
            raise ValueError("'targets' must not be empty")
        for t in targets:
            check_float('targets', t, 0., 1., low_open=True, high_open=True)
        self.targets = tuple(sorted((float(t) for t in targets),
                                    reverse=True))
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"'targets' holds duplicates (got "
                             f"{list(targets)})")
        for name, choices in (('target_unit', ('full', 'meta', 'bytes')),
                              ('gamma_unit', ('official', 'mean')),
                              ('precision', tuple(DTYPES))):
            if getattr(self, name) not in choices:
                raise ValueError(f"'{name}' must be one of {choices} (got "
                                 f"{getattr(self, name)!r})")
        self.ks = tuple(check_ks(self.ks))
        for name, low in (('baseline_epochs', 0), ('prune_epochs', 0),
                          ('retrain_epochs', 0), ('finetune_epochs', 0),
                          ('dim', 1), ('batch_size', 1), ('num_negatives', 1),
                          ('gamma_decay_every', 1), ('check_every', 1),
                          ('prune_start', 0), ('seed', None)):
            check_int(name, getattr(self, name), minimum=low)
        for name in ('bucket_size', 'eval_users', 'prune_batch_size'):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=1)
        for name, low, high, low_open in (
                ('lr', 0., None, True), ('prune_speed', 0., None, False),
                ('threshold_drive', 0., None, False),
                ('threshold_init', None, None, False),
                ('gamma_init', 0., None, False), ('gamma_decay', 0., 1., False),
                ('clip_grad_norm', 0., None, True),
                ('l2_reg', 0., None, False)):
            check_float(name, getattr(self, name), low, high,
                        low_open=low_open)
        for name, low_open in (('pace_epochs', True), ('threshold_lr', False),
                               ('threshold_weight_decay', False),
                               ('threshold_eps', True), ('prune_lr', True)):
            if getattr(self, name) is not None:
                check_float(name, getattr(self, name), 0., low_open=low_open)
        if self.weight_decay != -1.:  # -1: the official value, converted.
            check_float('weight_decay', self.weight_decay, 0.)

    def prune_schedule(self) -> Tuple[int, float]:
        r"""The batch size and lr of phase 1: :obj:`prune_batch_size` and
        :obj:`prune_lr` where given, else :obj:`batch_size` and :obj:`lr`
        capped at 8192 and :math:`5 \cdot 10^{-3}` (the pace the default
        threshold schedule is tuned for)."""
        batch = (self.prune_batch_size if self.prune_batch_size is not None
                 else min(self.batch_size, PRUNE_BATCH_SIZE))
        lr = self.prune_lr if self.prune_lr is not None else min(
            self.lr, PRUNE_LR)
        return int(batch), float(lr)

    def derived(self, num_entities: int, num_pairs: int) -> Dict[str, Any]:
        r"""The values that depend on the data and on the batch shape of
        phase 1: :obj:`bucket_size`, :obj:`steps_per_epoch`
        (:math:`\lceil E / B \rceil`), :obj:`pair_scale` (:math:`G/(Bn)`),
        :obj:`gamma_scale`, :obj:`reduction`, :obj:`weight_decay`,
        :obj:`threshold_lr`, :obj:`threshold_weight_decay` and
        :obj:`threshold_eps`.

        Args:
            num_entities (int): :math:`N = N_U + N_I`.
            num_pairs (int): Training pairs :math:`E`.
        """
        N = int(num_entities)
        b = self.bucket_size
        if b is None:
            ratio = (self.meta_ratio if self.meta_ratio is not None else
                     2. * max(self.targets))
            if self.target_unit == 'meta':
                ratio = self.meta_ratio or 0.2
            elif self.target_unit == 'bytes' and self.meta_ratio is None:
                # A byte fraction f holds about 32f / (value bits) of the
                # values (int8: 4x as many as float32).
                ratio *= 32. / VALUE_BITS[self.precision]
            b = max(1, min(N, int(math.ceil(ratio * N / 2.))))
        batch = self.prune_schedule()[0]
        steps = max(1, int(math.ceil(int(num_pairs) / batch)))
        pair_scale = OFFICIAL_GROUPS / (batch * self.num_negatives)
        official = self.gamma_unit == 'official'
        thr_lr = (self.threshold_lr if self.threshold_lr is not None else
                  self.prune_speed / steps)
        wd = (OFFICIAL_WEIGHT_DECAY * pair_scale if self.weight_decay < 0
              else self.weight_decay)
        return dict(
            bucket_size=int(b), steps_per_epoch=steps, pair_scale=pair_scale,
            gamma_scale=pair_scale if official else 1.,
            reduction='sum' if official else 'mean', weight_decay=wd,
            threshold_lr=float(thr_lr),
            threshold_weight_decay=(
                self.threshold_weight_decay if self.threshold_weight_decay
                is not None else OFFICIAL_WEIGHT_DECAY * pair_scale),
            threshold_eps=(self.threshold_eps if self.threshold_eps is not
                           None else OFFICIAL_EPS * pair_scale))

    def to_dict(self) -> Dict[str, Any]:
        r"""Plain python values (lists for tuples)."""
        out = asdict(self)
        out['targets'] = list(self.targets)
        out['ks'] = list(self.ks)
        return out

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'CERPConfig':
        r"""The inverse of :meth:`to_dict` (unknown keys are ignored, missing
        ones take their defaults)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
