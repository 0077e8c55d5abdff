r"""The two-phase CERP procedure (prune, then retrain per memory target) with
resumable, atomic checkpoints."""
import copy
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Module

from pyg_cerp.distributed import DistContext, sync_scheduler_decisions
from pyg_cerp.metrics import _check_ks
from pyg_cerp.nn import CompositionalEmbedding
from pyg_cerp.train.loop import evaluate, make_optimizer, train_epoch
from pyg_cerp.train.recommender import Recommender
from pyg_cerp.train.scheduler import PruningScheduler
from pyg_cerp.utils.io import (CheckpointError, FolderLock, atomic_save,
                               content_digest, safe_load)
from pyg_cerp.utils.validation import (check_edge_ids, check_finite_loss,
                                       check_float, check_int)


class Interactions(NamedTuple):
    r"""A user-item split.

    Args:
        train (torch.Tensor): Training (user, item) pairs :obj:`[2, E]`.
        test (torch.Tensor): Test pairs :obj:`[2, E']`.
        num_users (int): :math:`N_U`.
        num_items (int): :math:`N_I`.
    """
    train: Tensor
    test: Tensor
    num_users: int
    num_items: int


OFFICIAL_GROUPS = 10
r"""(user, positive) groups per batch of the official code
(:obj:`batch_size_train_factor=10`, ``CERP/utils/util.py`` line 50)."""
OFFICIAL_WEIGHT_DECAY = 1e-5
r"""Adam's coupled L2 of the official code, on *every* parameter (values and
threshold logits; ``CERP/utils/util.py`` line 78, ``utils/train.py`` line
93)."""
OFFICIAL_EPS = 1e-8
FAITHFUL_GAMMA = 0.3
r"""The :obj:`'faithful'` preset's :math:`\gamma_0` (official unit): of
0.03, 0.3, 1 and 3 with the pace plan on Gowalla (5% of the full table,
``benchmarks/cerp_mechanism.py``, validation split), 0.3 gave the lowest
overlap at the target (0.76x chance; 1 and 3 overflowed without the value
bound, 0.03: 0.82x); the official value 1 stays in :obj:`'official'`."""
PRUNE_BATCH_SIZE = 8192
r"""The largest default batch of phase 1 (see :meth:`CERPConfig.prune_schedule`)."""
PRUNE_LR = 5e-3
r"""The largest default lr of phase 1 (see :meth:`CERPConfig.prune_schedule`)."""


@dataclass
class CERPConfig:
    r"""Hyper-parameters of :class:`CERPRunner` / :func:`run_cerp`.

    **The field defaults prune like the** :obj:`'legacy'` **preset** (global
    magnitude pruning with a constant threshold drive) and train the
    baseline and the retrained models with the fast schedule of issue 10
    (batch 32768, lr :math:`2 \cdot 10^{-2}`, L2 :math:`10^{-4}`, 40
    epochs); :meth:`preset` :obj:`'legacy'` is the whole configuration of
    the committed quick-profile numbers. Where an argument below names
    another default, it is that of :meth:`preset` :obj:`'faithful'`. The :obj:`'faithful'` preset is the
    official CERP loss and optimiser (github.com/xurong-liang/CERP @ ed5222b, see
    :obj:`docs/training.md`) converted to this batch shape, plus a pruning
    schedule in epochs. What the official code does:

    * BPR of one step: :math:`\frac{1}{G} \sum_{g=1}^{G} \sum_{j=1}^{5}
      \mathrm{softplus}(\hat{y}^-_{g,j} - \hat{y}^+_g)` over :math:`G = 10`
      (user, positive) groups (``models/factorizer.py`` lines 120-129): a
      weight of :math:`1/G` per (positive, negative) pair;
    * regulariser :math:`-\gamma_t \sum_{e \in \mathcal{E}} \|\tanh(K
      \mathbf{e}_e)\|_2^2`, *summed* over the composed, unpropagated
      embeddings of the unique users and every positive and negative item of
      the batch (``models/modules.py`` lines 294-298), :math:`K = 100`,
      :math:`\gamma_0 = 1`, halved after every epoch (``engine.py`` lines
      273-277): a weight of :math:`\gamma_t` per entity;
    * one Adam group (lr :math:`10^{-3}`, coupled L2 :math:`10^{-5}`,
      :math:`\epsilon = 10^{-8}`, gradient norm clipped at 100) over values
      *and* threshold logits :math:`\mathbf{S}` (element-wise, all
      :math:`-100` at the start): the L2 term :math:`10^{-5} S` is the only
      push that raises :math:`S`; under Adam it raises every :math:`S` by
      the learning rate per step while :math:`\sigma'(S) \approx 0`.

    Here BPR is the mean over the :math:`Bn` pairs of a batch
    (:func:`~pyg_cerp.train.bpr_loss`, a weight of :math:`1/(Bn)` per pair)
    and :obj:`gamma_init` is the *official* per-entity weight. Keeping the
    official ratio of every loss term to the BPR weight of one pair gives
    (:meth:`derived`):

    .. math::
        c_\gamma = \frac{G}{Bn}, \qquad
        \lambda_S = 10^{-5} \frac{G}{Bn}, \qquad
        \epsilon_S = 10^{-8} \frac{G}{Bn},

    *i.e.*, the regulariser is :math:`c_\gamma \gamma_t \sum_{e}
    \|\tanh(K \mathbf{e}_e)\|^2`. With a per-entity *mean*
    (:obj:`gamma_unit='mean'`) the same weight is :math:`\gamma' = \gamma G
    |\mathcal{E}| / (Bn)`, :math:`\approx 13.4 \gamma` for :math:`B = 8192`,
    :math:`n = 5` on Gowalla (:math:`|\mathcal{E}| \approx 55\,000`): the
    old default :math:`\gamma' = 10^{-3}` was :math:`\sim 10^4` times
    weaker. (The official L2 on the *values*, :math:`10^{-5} G/(Bn) \approx
    2 \cdot 10^{-9}` here, is negligible, hence :obj:`weight_decay=0`; the
    literal :math:`10^{-5}` on a batch-mean loss is 4096 times the official
    strength and pins LightGCN at a popularity ranking.)

    What is not official, because it does not fit :math:`B \gg G` steps
    (the official run takes :math:`\approx 81\,000` steps per Gowalla
    epoch, 100 here): the thresholds are frozen for :obj:`prune_start`
    epochs and then all set to the logit of the :obj:`onset_quantile` of the
    trained :math:`|\text{value}|` (officially, :math:`S_0=-100` delays the
    onset by :math:`\approx 10^5` steps, about 1-2 epochs on Gowalla, with
    equal logits until then); and the threshold learning rate is
    :obj:`prune_speed` logit units per *epoch* (officially
    :math:`10^{-3}` per step, :math:`\approx 81` per epoch).

    Args:
        dim (int): Embedding size :math:`d`. (default: :obj:`64`)
        bucket_size (int, optional): Meta-table rows :math:`b`
            (:obj:`None`: :math:`\lceil \rho N \rceil` with
            :obj:`meta_ratio`, see :meth:`derived`). (default: :obj:`None`)
        meta_ratio (float, optional): With :obj:`bucket_size=None`,
            :math:`b = \lceil \rho N / 2 \rceil`, so that the meta tables
            hold :math:`\rho` of the full table (:obj:`None`: :math:`2
            \max(\text{targets})`, the largest target at meta density 0.5).
            (default: :obj:`None`)
        threshold_init (float): Initial threshold logit :math:`S_0` (used
            as is when :obj:`onset_quantile` is :obj:`None`).
            (default: :obj:`-100.`, official)
        targets (Tuple[float, ...]): Memory targets.
            (default: :obj:`(0.10, 0.05, 0.01)`)
        target_unit (str): :obj:`'full'` (fraction of :math:`Nd`) or
            :obj:`'meta'` (meta-table density). (default: :obj:`'full'`)
        baseline_epochs (int): Epochs of the full-table baseline
            (:obj:`0`: skip it). (default: :obj:`40`, what the default
            main job affords in about 20 minutes on 2 CPU cores; validation
            Recall@20 still rises there, see
            :obj:`benchmarks/results/convergence.md`)
        prune_epochs (int): Epoch budget of phase 1 (it stops as soon as
            every target is reached). (default: :obj:`10`)
        retrain_epochs (int): Epochs of phase 2 per target (values rewound
            to the initial weights). (default: :obj:`40`)
        finetune_epochs (int): Epochs of the one-phase variant per target
            (masks frozen, values kept; :obj:`0`: skip).
            (default: :obj:`0`)
        batch_size (int): Positive pairs per step. (default: :obj:`32768`)
        num_negatives (int): Negatives per positive. (default: :obj:`5`)
        lr (float): Adam learning rate of the values. (default: :obj:`2e-2`)
            Batch, negatives, lr and :obj:`l2_reg` are the schedule that
            converged fastest in wall time on the Gowalla validation split
            (:obj:`benchmarks/convergence.py`): a step costs one full-graph
            propagation whatever its batch, so large batches with a large
            lr learn the most per second.
        prune_batch_size (int, optional): The batch of phase 1
            (:obj:`None`: :obj:`min(batch_size, 8192)`, see
            :meth:`prune_schedule`). Pruning is paced per step
            (:obj:`threshold_lr`), and the default pacing reaches 10%, 5%
            and 1% of the full table at batch 8192 and lr
            :math:`5 \cdot 10^{-3}`; at the training schedule's 25 steps per
            epoch and lr :math:`2 \cdot 10^{-2}` the values outgrow the
            thresholds and 1% is missed (measured: density stalls at 4.7%,
            or at 1.8-2.1% with :obj:`threshold_lr=0.15`).
            (default: :obj:`None`)
        prune_lr (float, optional): The lr of the values in phase 1
            (:obj:`None`: :obj:`min(lr, 5e-3)`). (default: :obj:`None`)
        weight_decay (float): Adam L2 penalty of the values.
            (default: :obj:`0.`)
        threshold_lr (float, optional): Adam learning rate of the thresholds
            (:obj:`None`: :obj:`prune_speed` / steps per epoch).
            (default: :obj:`None`)
        prune_speed (float): With :obj:`threshold_lr=None`, the rise of the
            threshold logits per epoch (while the weight decay dominates their
            gradient). (default: :obj:`2.`)
        threshold_weight_decay (float, optional): Adam L2 penalty of the
            thresholds, the push that raises them (:obj:`None`: the official
            :math:`10^{-5}` converted, :math:`10^{-5} G/(Bn)`).
            (default: :obj:`None`)
        threshold_eps (float, optional): Adam :math:`\epsilon` of the
            threshold group (:obj:`None`: :math:`10^{-8} G/(Bn)`).
            (default: :obj:`None`)
        threshold_drive (float): A constant push :math:`-c \sum \mathbf{S}`
            on the threshold logits (see :class:`PruningScheduler`; not in
            the official code; :obj:`1e-3` in the :obj:`'legacy'` preset,
            where it swamps every other threshold gradient).
            (default: :obj:`0.`)
        gamma_init (float): Initial regulariser weight :math:`\gamma_0`, in
            :obj:`gamma_unit`. (default: :obj:`1.`, official)
        gamma_unit (str): :obj:`'official'` (per entity, relative to an
            official BPR pair weight of :math:`1/G`; the regulariser is
            summed with the factor :math:`G/(Bn)`) or :obj:`'mean'` (mean
            over the batch's entities, no factor; the old unit).
            (default: :obj:`'official'`)
        gamma_decay (float): Its decay per period. (default: :obj:`0.5`)
        gamma_decay_every (int): The period, in epochs. (default: :obj:`1`)
        prune_start (int): Epochs before the thresholds move (see
            :class:`PruningScheduler`). (default: :obj:`1`)
        onset_quantile (float, optional): Threshold re-initialisation at the
            onset (see :class:`PruningScheduler`; :obj:`None`: keep
            :obj:`threshold_init`). (default: :obj:`0.02`)
        exact_snapshots (bool): Snapshots at the target density even when a
            step overshoots (see :class:`PruningScheduler`).
            (default: :obj:`True`)
        gamma_at_onset (bool): Count the :math:`\gamma` schedule from
            :obj:`prune_start` (no regulariser before; see
            :class:`PruningScheduler`). (default: :obj:`False`)
        pace_epochs (float, optional): Prune from the onset to the smallest
            target in this many epochs along a geometric density plan, by a
            common offset on the learned threshold logits (see
            :class:`PruningScheduler`; :obj:`None`: no plan).
            (default: :obj:`None`)
        check_every (int): Measure the density every this many steps.
            (default: :obj:`1`)
        clip_grad_norm (float): Gradient-norm clipping. (default: :obj:`100.`)
        l2_reg (float): Weight of LightGCN's L2 penalty on the batch's ego
            embeddings (:meth:`~pyg_cerp.train.Recommender.l2_penalty`), as
            in LightGCN-PyTorch. (default: :obj:`1e-4`)
        seed (int): The seed of everything. (default: :obj:`0`)
        ks (Tuple[int, ...]): Evaluation cut-offs.
            (default: :obj:`(5, 10, 20, 50)`)
        eval_users (int, optional): Evaluate a seeded sample of this many
            users (:obj:`None`: all). (default: :obj:`None`)
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
    check_every: int = 1
    clip_grad_norm: float = 100.
    l2_reg: float = 1e-4
    seed: int = 0
    ks: Tuple[int, ...] = (5, 10, 20, 50)
    eval_users: Optional[int] = None

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> 'CERPConfig':
        r"""A named configuration.

        * :obj:`'faithful'`: the defaults (official loss and optimiser
          converted to the batch shape, pruning schedule in epochs);
        * :obj:`'official'`: the official values as such where they do not
          depend on the batch shape (:math:`S_0 = -100`, no freeze, no
          re-initialisation, one lr :math:`10^{-3}` for values and
          thresholds, :math:`\gamma_0 = 1` halved per epoch, the L2
          :math:`10^{-5}` on the values converted like the thresholds',
          exact snapshots off, 50 pruning epochs); at :math:`B \gg 10` it
          prunes nothing for :math:`\approx 10^5` steps;
        * :obj:`'legacy'`: the configuration before issues 10 and 11 (global magnitude
          pruning: constant drive :math:`10^{-3}`, threshold lr
          :math:`6 \cdot 10^{-2}`, :math:`S_0 = -6`, mean regulariser
          :math:`\gamma' = 10^{-3}`, :math:`b = 5000`, 5 pruning epochs;
          3 epochs per model at batch 8192, lr :math:`5 \cdot 10^{-3}`, no
          L2), to reproduce the committed numbers.

        Args:
            name (str): :obj:`'faithful'`, :obj:`'official'` or
                :obj:`'legacy'`.
            **overrides: Fields to change.
        """
        presets: Dict[str, Dict[str, Any]] = dict(
            # The default training schedule; phase 1 at its own batch and
            # lr (prune_schedule(): 8192, 5e-3).
            faithful=dict(bucket_size=None, threshold_init=-100.,
                          prune_epochs=8, threshold_lr=None,
                          threshold_weight_decay=None, threshold_eps=None,
                          threshold_drive=0., gamma_init=FAITHFUL_GAMMA,
                          gamma_unit='official', prune_start=2,
                          onset_quantile=0.02, exact_snapshots=True,
                          gamma_at_onset=True, pace_epochs=4.),
            official=dict(bucket_size=None, threshold_weight_decay=None,
                          threshold_eps=None, threshold_drive=0.,
                          threshold_init=-100., prune_start=0,
                          onset_quantile=None, lr=1e-3, threshold_lr=1e-3,
                          weight_decay=None, gamma_init=1.,
                          gamma_unit='official', exact_snapshots=False,
                          prune_epochs=50, batch_size=8192),
            legacy=dict(baseline_epochs=3, retrain_epochs=3, batch_size=8192,
                        lr=5e-3, l2_reg=0.),
        )
        if name not in presets:
            raise ValueError(f"Unknown preset {name!r} (choose from "
                             f"{sorted(presets)})")
        values = dict(presets[name])
        values.update(overrides)
        if values.get('weight_decay', 0.) is None:  # Official, converted.
            values['weight_decay'] = -1.  # Resolved in derived().
        return cls(**values)

    def derived(self, num_entities: int, num_pairs: int) -> Dict[str, Any]:
        r"""The values that depend on the data and the batch shape of phase
        1 (:meth:`prune_schedule`).

        Args:
            num_entities (int): :math:`N = N_U + N_I`.
            num_pairs (int): Training (user, positive) pairs per epoch.

        Returns:
            A dictionary with :obj:`bucket_size`,
            :obj:`steps_per_epoch` (:math:`\lceil E / B \rceil`, :math:`B` the
            phase-1 batch),
            :obj:`pair_scale` (:math:`G/(Bn)`), :obj:`gamma_scale`,
            :obj:`reduction`, :obj:`weight_decay`, :obj:`threshold_lr`,
            :obj:`threshold_weight_decay` and :obj:`threshold_eps`.
        """
        N = int(num_entities)
        b = self.bucket_size
        if b is None:
            ratio = (self.meta_ratio if self.meta_ratio is not None else
                     2. * max(self.targets))
            if self.target_unit == 'meta':
                ratio = self.meta_ratio or 0.2
            b = max(1, min(N, int(math.ceil(ratio * N / 2.))))
        batch = self.prune_schedule()[0]  # Everything here is phase 1's.
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

    def __post_init__(self) -> None:
        # Every value is checked here, before any training, so that a bad
        # one never surfaces after the baseline has trained.
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
        if self.target_unit not in ('full', 'meta'):
            raise ValueError(f"'target_unit' must be 'full' or 'meta' "
                             f"(got {self.target_unit!r})")
        self.ks = tuple(_check_ks(self.ks))
        for name in ('baseline_epochs', 'prune_epochs', 'retrain_epochs',
                     'finetune_epochs'):
            check_int(name, getattr(self, name), minimum=0)
        for name in ('dim', 'batch_size', 'num_negatives',
                     'gamma_decay_every', 'check_every'):
            check_int(name, getattr(self, name), minimum=1)
        if self.bucket_size is not None:  # None: derived from the data.
            check_int('bucket_size', self.bucket_size, minimum=1)
        check_int('prune_start', self.prune_start, minimum=0)
        if self.pace_epochs is not None:
            check_float('pace_epochs', self.pace_epochs, 0., low_open=True)
        check_int('seed', self.seed, minimum=None)
        if self.eval_users is not None:
            check_int('eval_users', self.eval_users, minimum=1)
        if self.gamma_unit not in ('official', 'mean'):
            raise ValueError(f"'gamma_unit' must be 'official' or 'mean' "
                             f"(got {self.gamma_unit!r})")
        check_float('lr', self.lr, 0., low_open=True)
        if self.threshold_lr is not None:  # None: from 'prune_speed'.
            check_float('threshold_lr', self.threshold_lr, 0.)
        check_float('prune_speed', self.prune_speed, 0.)
        if self.weight_decay != -1.:  # -1: the official value, converted.
            check_float('weight_decay', self.weight_decay, 0.)
        if self.threshold_weight_decay is not None:
            check_float('threshold_weight_decay',
                        self.threshold_weight_decay, 0.)
        if self.threshold_eps is not None:
            check_float('threshold_eps', self.threshold_eps, 0.,
                        low_open=True)
        check_float('threshold_drive', self.threshold_drive, 0.)
        check_float('threshold_init', self.threshold_init)
        check_float('gamma_init', self.gamma_init, 0.)
        check_float('gamma_decay', self.gamma_decay, 0., 1.)
        check_float('clip_grad_norm', self.clip_grad_norm, 0., low_open=True)
        check_float('l2_reg', self.l2_reg, 0.)
        if self.prune_batch_size is not None:
            check_int('prune_batch_size', self.prune_batch_size, minimum=1)
        if self.prune_lr is not None:
            check_float('prune_lr', self.prune_lr, 0., low_open=True)

    def prune_schedule(self) -> Tuple[int, float]:
        r"""The batch size and the lr of phase 1: :obj:`prune_batch_size`
        and :obj:`prune_lr` where given, else at most 8192 and
        :math:`5 \cdot 10^{-3}` (:obj:`batch_size` and :obj:`lr` when
        these are smaller), the pace for which the default threshold
        schedule is tuned."""
        batch = (self.prune_batch_size if self.prune_batch_size is not None
                 else min(self.batch_size, PRUNE_BATCH_SIZE))
        lr = self.prune_lr if self.prune_lr is not None else min(
            self.lr, PRUNE_LR)
        return int(batch), float(lr)

    def to_dict(self) -> Dict[str, Any]:
        r"""Plain python values (lists for tuples)."""
        out = asdict(self)
        out['targets'] = list(self.targets)
        out['ks'] = list(self.ks)
        return out

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'CERPConfig':
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def target_key(target: float) -> str:
    r"""The stage-name suffix of a target, *e.g.* :obj:`'0.05'`."""
    return f'{target:g}'


def memory_stats(embedding: Module) -> Dict[str, Any]:
    r"""The non-zeros of :obj:`embedding` and their fraction of the full
    table (:obj:`1.0` for a :class:`torch.nn.Embedding`)."""
    if hasattr(embedding, 'num_nonzero'):
        nnz = int(embedding.num_nonzero())
        out = dict(nonzero=nnz,
                   full_fraction=nnz / int(embedding.num_full_params))
        if hasattr(embedding, 'num_meta_params'):
            out['meta_density'] = nnz / int(embedding.num_meta_params)
        return out
    weight = embedding.weight
    return dict(nonzero=int(weight.numel()), full_fraction=1.0,
                meta_density=None)


def data_identity(data: Interactions, **info: Any) -> Dict[str, Any]:
    r"""What identifies the data a model is trained on, as stored in
    checkpoints: the counts and a SHA-256 of the training and test pairs
    (:func:`~pyg_cerp.utils.io.content_digest`), plus descriptive
    :obj:`info` (*e.g.*, the dataset name and raw-file checksums).

    Args:
        data (Interactions): The split.
        **info: Extra entries (plain python values).
    """
    out: Dict[str, Any] = dict(
        num_users=int(data.num_users), num_items=int(data.num_items),
        num_train=int(data.train.size(1)), num_test=int(data.test.size(1)),
        train_sha256=content_digest(data.train.long()),
        test_sha256=content_digest(data.test.long()))
    out.update(info)
    return out


#: The :func:`data_identity` entries that must agree for a resume (the others
#: only describe the data and are reported in the error).
DATA_KEYS = ('num_users', 'num_items', 'num_train', 'num_test',
             'train_sha256', 'test_sha256')


def _check_data(data: Interactions) -> None:
    # The split the runner trains and evaluates on (before any training).
    for name in ('num_users', 'num_items'):
        check_int(name, getattr(data, name), minimum=1)
    for name, ei in (('train', data.train), ('test', data.test)):
        if not isinstance(ei, Tensor) or ei.dim() != 2 or ei.size(0) != 2:
            raise ValueError(f"'data.{name}' must be a [2, num_pairs] tensor")
        check_edge_ids(ei, data.num_users, data.num_items, f'data.{name}')
    if data.train.size(1) == 0:
        raise ValueError("'data.train' has no (user, item) pairs")
    if data.test.size(1) == 0:
        raise ValueError("'data.test' has no (user, item) pairs, so nothing "
                         "could be evaluated (metrics would all be 0)")


class ResumeError(ValueError):
    r"""Raised when a checkpoint cannot be resumed: another configuration or
    other data than the current run."""


class StopRequested(Exception):
    r"""Raised internally when :obj:`stop_after` epochs were run."""


class CERPRunner:
    r"""Runs the CERP procedure of the paper as resumable *stages*:

    1. :obj:`'full'`: the full-table baseline (:class:`torch.nn.Embedding`)
       for :obj:`baseline_epochs`;
    2. :obj:`'prune'` (phase 1): the compositional embedding trained on
       :math:`\mathcal{L}_{\textrm{BPR}} + \gamma_t
       \mathcal{L}_{\textrm{prune}}` while a :class:`PruningScheduler`
       snapshots the masks the first time each target is reached; it stops
       once every target is reached or after :obj:`prune_epochs`;
    3. :obj:`'retrain@t'` (phase 2) per reached target :math:`t`: masks
       frozen, every weight rewound to its initial value (lottery ticket),
       trained for :obj:`retrain_epochs`;
    4. :obj:`'finetune@t'` (one-phase variant, if :obj:`finetune_epochs >
       0`): masks frozen at the snapshot, training continued from the model
       at that step without rewinding.

    Every finished stage is evaluated (full ranking). After every epoch, a
    checkpoint with plain state dicts, python values and the RNG state is
    written atomically to :obj:`out_dir/checkpoint.pt`; :meth:`run` with
    :obj:`resume=True` continues from it to bit-identical results.

    Args:
        config (CERPConfig): The hyper-parameters.
        data (Interactions): The split.
        build_recommender (Callable[[torch.nn.Module], Recommender]): Builds
            the backbone around an embedding over :math:`N_U + N_I` entities
            (and resets its parameters).
        make_sampler (Callable[[int], Iterable]): Builds the training
            sampler from a seed; it must have :obj:`set_epoch`.
        embedding_factory (Callable[[str], torch.nn.Module], optional):
            Builds the embedding of kind :obj:`'full'` or :obj:`'cerp'`
            (*e.g.*, to benchmark PEP through the same harness).
            (default: :class:`torch.nn.Embedding` /
            :class:`~pyg_cerp.nn.CompositionalEmbedding`)
        out_dir (str, optional): Where checkpoints go (:obj:`None`: none).
        log (Callable[[str], None], optional): Where log lines go.
            (default: :obj:`print`)
        progress (bool, optional): Show :obj:`tqdm` progress bars.
        rank (int, optional): The process rank when :obj:`world` is not
            given; only rank 0 logs and writes checkpoints. (default: :obj:`0`)
        data_info (Dict[str, Any], optional): Describes the data (*e.g.*,
            :obj:`name` and raw-file :obj:`files` checksums), stored in the
            checkpoint with :func:`data_identity` and shown when a resume is
            refused because the data differ. (default: :obj:`None`)
        world (pyg_cerp.distributed.DistContext, optional): The ranks to
            train on (:obj:`None` or one process: single-process training).
            On :math:`W > 1` ranks, the sampler of :obj:`make_sampler` (the
            single-process one, whose batch size is the global batch) is
            sharded with its :meth:`shard`, every stage's model is
            :meth:`~Recommender.partition`-ed, the steps, the epoch losses
            and the evaluation go through the :obj:`world` arguments of
            :func:`~pyg_cerp.train.train_epoch` and
            :func:`~pyg_cerp.train.evaluate`, the scheduler's decisions are
            rank 0's, and rank 0 alone writes the checkpoint and reads it on
            resume (broadcast to every rank). (default: :obj:`None`)

    Checkpoints carry a SHA-256 of their content and the identity of the
    data; :meth:`load` refuses a corrupted file, another configuration or
    other data. While :meth:`run` writes to :obj:`out_dir`, the folder is
    locked (:class:`~pyg_cerp.utils.io.FolderLock`): a second run on the
    same folder fails at once.
    """
    CHECKPOINT = 'checkpoint.pt'

    def __init__(
        self,
        config: CERPConfig,
        data: Interactions,
        build_recommender: Callable[[Module], Recommender],
        make_sampler: Callable[[int], Any],
        embedding_factory: Optional[Callable[[str], Module]] = None,
        out_dir: Optional[str] = None,
        log: Callable[[str], None] = print,
        progress: bool = False,
        rank: int = 0,
        data_info: Optional[Dict[str, Any]] = None,
        world: Optional[DistContext] = None,
    ) -> None:
        if not isinstance(config, CERPConfig):
            raise TypeError(f"'config' must be a CERPConfig "
                            f"(got {type(config).__name__})")
        if world is not None and not isinstance(world, DistContext):
            raise TypeError(f"'world' must be a DistContext "
                            f"(got {type(world).__name__})")
        _check_data(data)
        self.config = config
        self.world = world if world is not None else DistContext()
        self.rank = int(rank) if world is None else world.rank
        self.data = data
        self.data_identity = data_identity(data, **(data_info or {}))
        self.build_recommender = build_recommender
        self.sampler = make_sampler(config.seed)
        if self.world.is_distributed:
            if not callable(getattr(self.sampler, 'shard', None)):
                raise TypeError(f"Training on several ranks needs a sampler "
                                f"with 'shard(rank, world_size)' (got "
                                f"'{type(self.sampler).__name__}')")
            self.sampler = self.sampler.shard(self.world.rank,
                                              self.world.world_size)
        self.embedding_factory = embedding_factory or self._default_embedding
        self.out_dir = out_dir
        self.log = log if self.rank == 0 else (lambda msg: None)
        self.progress = progress and self.rank == 0
        self.state: Dict[str, Any] = self._fresh_state()
        self.derived = config.derived(self.num_entities,
                                      int(data.train.size(1)))

    # Building ################################################################

    @property
    def num_entities(self) -> int:
        return self.data.num_users + self.data.num_items

    def _default_embedding(self, kind: str) -> Module:
        cfg = self.config
        if kind == 'full':
            return torch.nn.Embedding(self.num_entities, cfg.dim)
        if kind == 'cerp':
            return CompositionalEmbedding(self.num_entities, cfg.dim,
                                          self.derived['bucket_size'],
                                          threshold_init=cfg.threshold_init,
                                          check_index=False)
        raise ValueError(f"Unknown embedding kind {kind!r}")

    def _build(self, kind: str, stage_index: int) -> Recommender:
        torch.manual_seed(self.config.seed * 1000 + stage_index)
        model = self.build_recommender(self.embedding_factory(kind))
        return model.partition(self.world) if self.world.is_distributed \
            else model

    def _optimizer(self, model: Module,
                   stage: str = 'full') -> torch.optim.Optimizer:
        cfg = self.config
        der = self.derived
        lr = cfg.prune_schedule()[1] if stage == 'prune' else cfg.lr
        return make_optimizer(
            model, lr=lr, weight_decay=der['weight_decay'],
            threshold_lr=der['threshold_lr'],
            threshold_weight_decay=der['threshold_weight_decay'],
            threshold_eps=der['threshold_eps'])

    def _stage_sampler(self, stage: str) -> Any:
        r"""The sampler of a stage: phase 1 draws batches of
        :obj:`prune_batch_size` (a copy of the sampler with that batch
        size), the other stages of :obj:`batch_size`."""
        size = self.config.prune_schedule()[0]
        if stage != 'prune':
            return self.sampler
        if not hasattr(self.sampler, 'batch_size'):
            raise TypeError(f"'prune_batch_size' needs a sampler with a "
                            f"'batch_size' attribute (got "
                            f"'{type(self.sampler).__name__}'); pass "
                            f"prune_batch_size=None")
        if self.sampler.batch_size == size:
            return self.sampler
        sampler = copy.copy(self.sampler)
        sampler.batch_size = int(size)
        return sampler

    def _scheduler(self, model: Recommender) -> PruningScheduler:
        cfg = self.config
        return PruningScheduler(model.embedding, cfg.targets, cfg.target_unit,
                                cfg.gamma_init, cfg.gamma_decay,
                                cfg.gamma_decay_every, cfg.check_every,
                                threshold_drive=cfg.threshold_drive,
                                gamma_scale=self.derived['gamma_scale'],
                                reduction=self.derived['reduction'],
                                prune_start=cfg.prune_start,
                                onset_quantile=cfg.onset_quantile,
                                exact_snapshots=cfg.exact_snapshots,
                                gamma_at_onset=cfg.gamma_at_onset,
                                pace_epochs=cfg.pace_epochs)

    # Training and evaluation on the ranks of `world` ######################

    def _train_epoch(self, model: Recommender, *args: Any,
                     **kwargs: Any) -> Dict[str, Any]:
        return train_epoch(model, *args, world=self.world, **kwargs)

    def _evaluate(self, model: Recommender) -> Dict[str, float]:
        cfg = self.config
        return evaluate(model, self.data.train, self.data.test, cfg.ks,
                        max_users=cfg.eval_users, seed=cfg.seed,
                        world=self.world)

    # State ###################################################################

    def _fresh_state(self) -> Dict[str, Any]:
        return dict(version=2, config=self.config.to_dict(),
                    data=self.data_identity, results={}, history=[],
                    prune=None, current=None)

    @property
    def checkpoint_path(self) -> Optional[str]:
        if self.out_dir is None:
            return None
        return os.path.join(self.out_dir, self.CHECKPOINT)

    def save(self) -> None:
        r"""Writes the checkpoint atomically (no-op without :obj:`out_dir`)."""
        if self.checkpoint_path is not None and self.rank == 0:
            atomic_save(self.state, self.checkpoint_path, checksum=True)

    def load(self) -> bool:
        r"""Loads the checkpoint (with :obj:`weights_only=True`, verifying its
        SHA-256); returns whether one existed. The stored config and data
        identity must equal the current ones. On several ranks, rank 0 reads
        it and broadcasts it (an error on rank 0 is raised on every rank)."""
        if not self.world.is_distributed:
            return self._load()
        payload: Any = None
        if self.world.is_main:
            try:
                found = self._load()
                payload = ('ok', found, self.state if found else None)
            except Exception as e:  # raised on every rank below
                payload = ('error', type(e).__name__, str(e))
        payload = self.world.broadcast_object(payload)
        if payload[0] == 'error':
            error = {'ResumeError': ResumeError,
                     'CheckpointError': CheckpointError}.get(payload[1],
                                                             RuntimeError)
            raise error(f'Rank 0 could not load the checkpoint: '
                        f'{payload[2]}')
        if payload[1]:
            self.state = payload[2]
        return bool(payload[1])

    def _load(self) -> bool:
        path = self.checkpoint_path
        if path is None or not os.path.isfile(path):
            return False
        state = safe_load(path, require_checksum=True)
        stored = state.get('data') if isinstance(state, dict) else None
        if not isinstance(stored, dict):
            raise ResumeError(
                f"Cannot resume from '{path}': it does not record the data "
                f"it was trained on (written by an older pyg_cerp). Start "
                f"again without resuming or use another output folder.")
        now = self.data_identity
        diff = {k: (stored.get(k), now.get(k)) for k in DATA_KEYS
                if stored.get(k) != now.get(k)}
        if diff:
            for k in sorted(set(stored) | set(now)):
                if k not in DATA_KEYS and stored.get(k) != now.get(k):
                    diff[k] = (stored.get(k), now.get(k))
            raise ResumeError(
                f"Cannot resume from '{path}': it was trained on other data "
                f"(differences as (checkpoint, now): {diff}). Resume with "
                f"the same dataset and subset, or use another output "
                f"folder.")
        # Keys added to the config later take their defaults:
        old = CERPConfig.from_dict(state.get('config', {})).to_dict()
        if old != self.config.to_dict():
            new = self.config.to_dict()
            diff = {k: (old.get(k), new[k]) for k in new if old.get(k) !=
                    new[k]}
            raise ResumeError(
                f"Cannot resume from '{path}': it was written with another "
                f"configuration (differences as (checkpoint, now): {diff})")
        self.state = state
        return True

    # Stages ##################################################################

    def _stage_plan(self) -> List[Tuple[str, int]]:
        cfg = self.config
        plan: List[Tuple[str, int]] = []
        if cfg.baseline_epochs > 0:
            plan.append(('full', cfg.baseline_epochs))
        plan.append(('prune', cfg.prune_epochs))
        prune = self.state['prune']
        if prune is not None and prune.get('done'):
            reached = [float(t) for t in prune['reached']]
            for t in reached:
                if cfg.retrain_epochs > 0:
                    plan.append((f'retrain@{target_key(t)}',
                                 cfg.retrain_epochs))
            for t in reached:
                if cfg.finetune_epochs > 0:
                    plan.append((f'finetune@{target_key(t)}',
                                 cfg.finetune_epochs))
        return plan

    def run(self, resume: bool = False,
            stop_after: Optional[int] = None) -> Dict[str, Any]:
        r"""Runs (or, with :obj:`resume`, continues) every stage.

        Args:
            resume (bool, optional): Continue from :obj:`out_dir`'s
                checkpoint if there is one. (default: :obj:`False`)
            stop_after (int, optional): Return after this many training
                epochs in this call (the checkpoint allows resuming), *e.g.*,
                to split a long run or to test resuming.
                (default: :obj:`None`)

        Returns:
            The state: :obj:`'results'` (metrics and memory per finished
            stage), :obj:`'history'` (per-epoch logs), :obj:`'prune'` (the
            phase-1 outcome) and :obj:`'finished'`.
        """
        self._check_targets()
        lock = (FolderLock(self.out_dir)
                if self.out_dir is not None and self.rank == 0 else None)
        if lock is not None:
            lock.acquire()
        try:
            return self._run(resume, stop_after)
        finally:
            if lock is not None:
                lock.release()

    def _check_targets(self) -> None:
        # A target below one stored value can only be met by an all-zero
        # model, whose metrics would be meaningless: refuse it up front.
        cfg = self.config
        if cfg.target_unit == 'full':
            size = self.num_entities * cfg.dim
        elif self.embedding_factory == self._default_embedding:
            size = 2 * cfg.bucket_size * cfg.dim
        else:  # Checked on the built embedding in phase 1.
            return
        _check_target_sizes(cfg.targets, size, cfg.target_unit)

    def _run(self, resume: bool,
             stop_after: Optional[int]) -> Dict[str, Any]:
        if resume and self.load():
            cur = self.state['current']
            where = (f"stage '{cur['stage']}' epoch {cur['epoch']}"
                     if cur else 'a stage boundary')
            self.log(f'Resumed from {self.checkpoint_path} at {where}')
        else:
            self.state = self._fresh_state()
        self._budget = math.inf if stop_after is None else int(stop_after)
        try:
            index = 0
            while True:
                plan = self._stage_plan()
                if index >= len(plan):
                    break
                name, epochs = plan[index]
                if name not in self.state['results'] and not (
                        name == 'prune' and self.state['prune'] is not None
                        and self.state['prune'].get('done')):
                    self._run_stage(name, index, epochs)
                index += 1
        except StopRequested:
            self.state['finished'] = False
            return self.state
        self.state['finished'] = True
        self.save()
        return self.state

    def _run_stage(self, name: str, index: int, epochs: int) -> None:
        cfg = self.config
        kind = 'full' if name == 'full' else 'cerp'
        model = self._build(kind, index)
        scheduler: Optional[PruningScheduler] = None
        prune = self.state['prune']
        if name == 'prune':
            scheduler = self._scheduler(model)
            if cfg.target_unit == 'meta':
                _check_target_sizes(cfg.targets,
                                    int(model.embedding.num_meta_params),
                                    'meta')
            if self.state['current'] is None:
                prune = self.state['prune'] = dict(
                    init_model=copy.deepcopy(model.state_dict()),
                    target_models={}, done=False, reached=[])
                for t in sync_scheduler_decisions(  # Met at step 0.
                        scheduler, scheduler.on_train_start(), self.world):
                    prune['target_models'][target_key(t)] = copy.deepcopy(
                        model.state_dict())
        elif name != 'full':
            mode, key = name.split('@')
            target = float(key)
            snap = self._snapshot(target)
            if mode == 'retrain':  # Two-phase: rewind (lottery ticket).
                model.load_state_dict(prune['init_model'])
                model.embedding.freeze_masks(
                    snap['masks'], rewind_to=prune['scheduler']
                    ['initial_weights'])
            else:  # One-phase: keep the values at the snapshot.
                model.load_state_dict(prune['target_models'][key])
                model.embedding.freeze_masks(snap['masks'], rewind_to=None)
        optimizer = self._optimizer(model, name)
        sampler = self._stage_sampler(name)

        start_epoch = 0
        cur = self.state['current']
        if cur is not None and cur['stage'] == name:
            model.load_state_dict(cur['model'])
            optimizer.load_state_dict(cur['optimizer'])
            if scheduler is not None:
                scheduler.load_state_dict(cur['scheduler'])
            torch.set_rng_state(cur['rng'])
            start_epoch = int(cur['epoch'])
        else:
            self.state['current'] = None

        def on_reached(targets: List[float]) -> None:
            sd = copy.deepcopy(model.state_dict())
            for t in targets:
                prune['target_models'][target_key(t)] = sd
                self.log(f'  [prune] target {t:g} reached at step '
                         f'{scheduler.num_steps}: '
                         f'{self._memory_line(model.embedding)}')

        epoch = start_epoch
        start = time.perf_counter()
        while epoch < epochs and not (scheduler is not None and
                                      scheduler.done):
            if self._budget <= 0:
                raise StopRequested
            gamma = scheduler.gamma if scheduler is not None else 0.
            stats = self._train_epoch(model, optimizer, sampler, epoch,
                                      scheduler=scheduler,
                                      clip_grad_norm=cfg.clip_grad_norm,
                                      l2_reg=cfg.l2_reg,
                                      on_reached=(on_reached if scheduler
                                                  else None),
                                      progress=self.progress,
                                      desc=f'{name} {epoch + 1}/{epochs}')
            # Once per epoch (no per-step synchronisation); before anything
            # is saved, so the checkpoint keeps the last finite state.
            check_finite_loss(stats['loss'],
                              f"stage '{name}' epoch {epoch + 1}")
            if scheduler is not None:
                new = sync_scheduler_decisions(
                    scheduler, scheduler.on_epoch_end(), self.world)
                if new:
                    on_reached(new)
            epoch += 1
            self._budget -= 1
            mem = memory_stats(model.embedding)
            record = dict(stage=name, epoch=epoch, loss=stats['loss'],
                          bpr=stats['bpr'], reg=stats['reg'], gamma=gamma,
                          steps=stats['steps'], time=stats['time'], **mem)
            self.state['history'].append(record)
            self.log(f"[{name}] epoch {epoch}/{epochs} loss {stats['loss']:.4f}"
                     f" (bpr {stats['bpr']:.4f}, reg {stats['reg']:.4g}) "
                     f"gamma {gamma:.3g} {self._memory_line(model.embedding)}"
                     f" {stats['time']:.1f}s")
            if scheduler is not None:
                prune['scheduler'] = scheduler.state_dict()
            self.state['current'] = dict(
                stage=name, epoch=epoch, model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                scheduler=(scheduler.state_dict()
                           if scheduler is not None else None),
                rng=torch.get_rng_state())
            self.save()

        train_time = time.perf_counter() - start
        if scheduler is not None:  # End of phase 1.
            outcome = scheduler.check_complete()
            self.log('[prune] ' + outcome.message.replace('\n', '\n[prune] '))
            prune.update(done=True, reached=list(outcome.reached),
                         missing=list(outcome.missing),
                         message=outcome.message,
                         scheduler=scheduler.state_dict())
            self.state['current'] = None
            self.save()
            return
        if memory_stats(model.embedding)['nonzero'] == 0:
            warnings.warn(f"Stage '{name}': the embedding has no non-zero "
                          f"value left, so its metrics only reflect ties",
                          UserWarning, stacklevel=2)
        metrics = self._evaluate(model)
        result: Dict[str, Any] = dict(metrics)
        result.update(memory_stats(model.embedding), epochs=epochs,
                      train_time=train_time)
        self.state['results'][name] = result
        self.state['current'] = None
        self.log(f"[{name}] recall@20 {metrics.get('recall@20', 0):.4f} "
                 f"ndcg@20 {metrics.get('ndcg@20', 0):.4f} "
                 f"{self._memory_line(model.embedding)}")
        self.save()

    def _snapshot(self, target: float) -> Dict[str, Any]:
        sched = self.state['prune']['scheduler']
        for snap in sched['snapshots']:
            if float(snap['target']) == target:
                return snap
        raise KeyError(f'No snapshot for target {target}')

    @staticmethod
    def _memory_line(embedding: Module) -> str:
        mem = memory_stats(embedding)
        line = f"mem {100 * mem['full_fraction']:.3f}% of full"
        if mem.get('meta_density') is not None:
            line += f" (meta density {mem['meta_density']:.4f})"
        return line

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(stages='
                f'{[n for n, _ in self._stage_plan()]}, '
                f'out_dir={self.out_dir!r})')


def _check_target_sizes(targets: Tuple[float, ...], size: int,
                        unit: str) -> None:
    for t in targets:
        if t * size < 1:
            raise ValueError(
                f"Memory target {t:g} ({unit!r} unit) allows fewer than one "
                f"stored value ({t:g} x {size} = {t * size:.3g}): only an "
                f"all-zero model reaches it. Use a target of at least "
                f"{1 / size:.3g}, or a larger table.")


def run_cerp(config: CERPConfig, data: Interactions,
             build_recommender: Callable[[Module], Recommender],
             make_sampler: Callable[[int], Any], out_dir: Optional[str] = None,
             resume: bool = False, stop_after: Optional[int] = None,
             **kwargs) -> Dict[str, Any]:
    r"""Runs the CERP procedure, see :class:`CERPRunner` (:obj:`kwargs` go to
    its constructor) and :meth:`CERPRunner.run`."""
    runner = CERPRunner(config, data, build_recommender, make_sampler,
                        out_dir=out_dir, **kwargs)
    return runner.run(resume=resume, stop_after=stop_after)
