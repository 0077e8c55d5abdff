r"""The methods of the equal-memory comparison as first-class objects, and
training to convergence (early stopping on a validation split).

Every method is sized to a **budget** :math:`f`, a fraction of the
:math:`N \times d` values of the full table (the unit of
:mod:`pyg_cerp.memory`'s callers and of ``benchmarks/memory_vs_ndcg.py``):
*stored values* for the unpruned structures (:class:`QREmbedding`:
:math:`(m + \lceil N/m \rceil) d \leq fNd`; :class:`HashEmbedding`:
:math:`\lfloor fN \rfloor d`), *non-zeros* for the pruned ones (CERP, PEP,
magnitude: at most :math:`fNd`, the scheduler's :obj:`target_unit='full'`).
The stored bytes (:func:`pyg_cerp.memory.stored_nbytes`, with sparse
formats for pruned tables) are reported next to it.

================  =========  ====================================================
name              kind       what
================  =========  ====================================================
``full``          fixed      the full table, :class:`FullEmbedding` (budget 1)
``cerp``          threshold  :class:`CompositionalEmbedding`, phase 1 with the
                             regulariser, then retrained (rewound, masks frozen)
``cerp-noreg``    threshold  the same with :math:`\gamma = 0`
``pep``           threshold  :class:`PEPEmbedding`, the same two phases
``qr-mul``        fixed      :class:`QREmbedding`, element-wise product
``qr-add``        fixed      :class:`QREmbedding`, sum
``hash``          fixed      :class:`HashEmbedding`, universal hash
``magnitude``     magnitude  the trained full table, its :math:`\lfloor fNd
                             \rfloor` largest entries kept
                             (:meth:`PEPEmbedding.from_magnitude`), fine-tuned
                             with the mask frozen
================  =========  ====================================================

:class:`ConvergedRunner` trains each (method, budget, seed) until the
validation NDCG@20 stops improving (:class:`EarlyStopping`), restores the
best epoch and evaluates it once on the test split; for CERP it sweeps the
bucket size :math:`b` and keeps the one with the best *validation* NDCG@20.
"""
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, \
    Tuple

import torch
from torch import Tensor
from torch.nn import Module

from pyg_cerp.nn import CompositionalEmbedding
from pyg_cerp.nn.baselines import (FullEmbedding, HashEmbedding,
                                   PEPEmbedding, QREmbedding)
from pyg_cerp.train.cerp import CERPConfig, CERPRunner, Interactions
from pyg_cerp.train.loop import evaluate, make_optimizer, train_epoch
from pyg_cerp.train.recommender import Recommender
from pyg_cerp.utils.validation import check_finite_loss, check_int

__all__ = [
    'Method', 'METHODS', 'get_method', 'build_embedding', 'Split',
    'holdout_split', 'EarlyStopping', 'FitResult', 'fit', 'ConvergedRunner',
    'bucket_candidates',
]


@dataclass(frozen=True)
class Method:
    r"""One method of the comparison.

    Args:
        name (str): The name (a key of :data:`METHODS`).
        kind (str): :obj:`'fixed'` (a structure of the budget's size, trained
            once), :obj:`'threshold'` (learned-threshold pruning, phase 1 then
            retraining) or :obj:`'magnitude'` (a trained full table pruned by
            magnitude, then fine-tuned).
        regularized (bool): Whether phase 1 adds CERP's complementarity
            regulariser (:math:`\gamma > 0`).
        description (str): One line.
    """
    name: str
    kind: str
    regularized: bool = False
    description: str = ''

    @property
    def sweeps_bucket_size(self) -> bool:
        r"""Whether :math:`b` is swept per budget (the compositional
        methods)."""
        return self.name in ('cerp', 'cerp-noreg')


METHODS: Dict[str, Method] = {m.name: m for m in (
    Method('full', 'fixed', description='full table'),
    Method('cerp', 'threshold', True, 'CERP (two-phase, regulariser)'),
    Method('cerp-noreg', 'threshold', False, 'CERP without regulariser'),
    Method('pep', 'threshold', False, 'PEP (learned element-wise thresholds)'),
    Method('qr-mul', 'fixed', description='quotient-remainder, product'),
    Method('qr-add', 'fixed', description='quotient-remainder, sum'),
    Method('hash', 'fixed', description='hashing trick'),
    Method('magnitude', 'magnitude',
           description='magnitude pruning of the trained full table'),
)}


def get_method(name: str) -> Method:
    r"""The :class:`Method` called :obj:`name` (a :class:`ValueError`
    listing the choices otherwise)."""
    if isinstance(name, Method):
        return name
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r} (choose from "
                         f"{', '.join(METHODS)})")
    return METHODS[name]


def build_embedding(method: str, num_entities: int, dim: int, budget: float,
                    bucket_size: Optional[int] = None,
                    threshold_init: float = -100.) -> Module:
    r"""A fresh embedding of :obj:`method` sized to :obj:`budget` (for the
    pruning methods, the unpruned start of phase 1; for
    :obj:`'magnitude'`, the full table it is pruned from).

    Args:
        method (str): A name of :data:`METHODS`.
        num_entities (int): :math:`N`.
        dim (int): :math:`d`.
        budget (float): :math:`f \in (0, 1]`.
        bucket_size (int, optional): :math:`b` of CERP (required for
            :obj:`'cerp'`, :obj:`'cerp-noreg'`).
        threshold_init (float, optional): The initial threshold logit of
            CERP and PEP. (default: :obj:`-100.`)

    Raises:
        ValueError: If the method cannot meet the budget (*e.g.*, QR needs
            about :math:`2\sqrt{N}` rows).
    """
    m = get_method(method)
    n, d = int(num_entities), int(dim)
    if not 0. < float(budget) <= 1.:
        raise ValueError(f"'budget' must be in (0, 1] (got {budget})")
    if m.name in ('full', 'magnitude'):
        return FullEmbedding(n, d, check_index=False)
    if m.name in ('cerp', 'cerp-noreg'):
        if bucket_size is None:
            raise ValueError(f"Method {m.name!r} needs a 'bucket_size'")
        check_int('bucket_size', bucket_size, minimum=1)
        return CompositionalEmbedding(n, d, int(bucket_size),
                                      threshold_init=threshold_init,
                                      check_index=False)
    if m.name == 'pep':
        return PEPEmbedding(n, d, threshold_init=threshold_init,
                            check_index=False)
    if m.name in ('qr-mul', 'qr-add'):
        return QREmbedding.for_budget(n, d, budget, operation=m.name[3:],
                                      check_index=False)
    return HashEmbedding.for_budget(n, d, budget, check_index=False)


def bucket_candidates(num_entities: int, budget: float,
                      ratios: Sequence[float] = (1.5, 2., 4.)) -> List[int]:
    r"""The bucket sizes swept for CERP at :obj:`budget`: :math:`b =
    \lceil \rho f N / 2 \rceil` for each ratio :math:`\rho`, so that the two
    meta tables hold :math:`\rho f` of the full table and must be pruned to
    meta density :math:`1/\rho` (:math:`0.67, 0.5, 0.25` by default). Capped
    at :math:`N`, deduplicated, ascending."""
    n = int(num_entities)
    out = sorted({max(1, min(n, math.ceil(r * budget * n / 2.)))
                  for r in ratios})
    return out


class Split(NamedTuple):
    r"""A train / validation / test split.

    Args:
        train (torch.Tensor): The pairs trained on :obj:`[2, E]`.
        valid (torch.Tensor): Validation pairs (model selection only).
        test (torch.Tensor): Test pairs (evaluated once per chosen model).
        num_users (int): :math:`N_U`.
        num_items (int): :math:`N_I`.
    """
    train: Tensor
    valid: Tensor
    test: Tensor
    num_users: int
    num_items: int

    @property
    def known(self) -> Tensor:
        r"""Train and validation pairs: masked from the test ranking."""
        return torch.cat([self.train, self.valid], dim=1)


def holdout_split(train: Tensor, num_users: int, fraction: float = 0.1,
                  seed: int = 0) -> Tuple[Tensor, Tensor]:
    r"""A seeded per-user split of :obj:`train` into (train, valid): every
    user with :math:`k \geq 2` pairs gives :math:`\min(k - 1, \lceil
    \text{fraction} \cdot k \rceil)` random pairs to validation (users with
    one pair keep it).

    Args:
        train (torch.Tensor): The pairs :obj:`[2, E]`.
        num_users (int): :math:`N_U`.
        fraction (float, optional): The held-out share. (default: :obj:`0.1`)
        seed (int, optional): The seed. (default: :obj:`0`)
    """
    if not 0. < fraction < 1.:
        raise ValueError(f"'fraction' must be in (0, 1) (got {fraction})")
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(train.size(1), generator=gen)
    users = train[0, perm]
    order = torch.sort(users, stable=True).indices  # Random within user.
    perm, users = perm[order], users[order]
    deg = torch.bincount(users, minlength=num_users)
    start = torch.cumsum(deg, 0) - deg
    rank = torch.arange(users.numel()) - start[users]
    take = torch.minimum(deg - 1, torch.ceil(fraction * deg.double()).long())
    held = rank < take[users]
    return train[:, perm[~held]], train[:, perm[held]]


@dataclass(frozen=True)
class EarlyStopping:
    r"""When training stops: after :obj:`patience` validations without an
    improvement of :obj:`metric` by more than :obj:`min_delta`, or after
    :obj:`max_epochs`.

    Args:
        max_epochs (int): The epoch cap. (default: :obj:`100`)
        patience (int): Validations without improvement. (default: :obj:`5`)
        eval_every (int): Validate every this many epochs.
            (default: :obj:`1`)
        metric (str): The validation metric. (default: :obj:`'ndcg@20'`)
        min_delta (float): The least improvement that counts.
            (default: :obj:`0.`)
    """
    max_epochs: int = 100
    patience: int = 5
    eval_every: int = 1
    metric: str = 'ndcg@20'
    min_delta: float = 0.

    def __post_init__(self) -> None:
        check_int('max_epochs', self.max_epochs, minimum=1)
        check_int('patience', self.patience, minimum=1)
        check_int('eval_every', self.eval_every, minimum=1)
        if self.min_delta < 0:
            raise ValueError(f"'min_delta' must be >= 0 (got "
                             f"{self.min_delta})")


@dataclass
class FitResult:
    r"""The outcome of :func:`fit`.

    Args:
        best_epoch (int): The epoch of the restored model (:obj:`0`: the
            initial one).
        best_valid (float): Its validation metric.
        epochs (int): Epochs trained.
        seconds (float): Training time.
        history (List[Dict[str, float]]): Per validation: epoch, loss,
            metric.
    """
    best_epoch: int
    best_valid: float
    epochs: int
    seconds: float
    history: List[Dict[str, float]] = field(default_factory=list)


def fit(recommender: Recommender, optimizer: torch.optim.Optimizer,
        sampler: Any, validate: Callable[[Recommender], Dict[str, float]],
        stopping: EarlyStopping, clip_grad_norm: Optional[float] = 100.,
        log: Callable[[str], None] = lambda s: None,
        desc: str = '', l2_reg: float = 0.) -> FitResult:
    r"""Trains :obj:`recommender` until :obj:`stopping` says so and loads
    the state of its best validation epoch back into it (the model before
    any training counts as epoch 0).

    Args:
        recommender (Recommender): The model.
        optimizer (torch.optim.Optimizer): Its optimiser.
        sampler (Iterable): The training batches (see
            :func:`~pyg_cerp.train.train_epoch`).
        validate (Callable): Maps the model to validation metrics.
        stopping (EarlyStopping): The stopping rule.
        clip_grad_norm (float, optional): See
            :func:`~pyg_cerp.train.train_step`. (default: :obj:`100.`)
        log (Callable, optional): Receives one line per validation.
        desc (str, optional): The prefix of those lines.
        l2_reg (float, optional): See :func:`~pyg_cerp.train.train_epoch`.
            (default: :obj:`0.`)
    """
    best = float(validate(recommender)[stopping.metric])
    best_state = copy.deepcopy(recommender.state_dict())
    best_epoch, bad, epoch = 0, 0, 0
    history: List[Dict[str, float]] = []
    start = time.perf_counter()
    while epoch < stopping.max_epochs:
        stats = train_epoch(recommender, optimizer, sampler, epoch,
                            clip_grad_norm=clip_grad_norm, l2_reg=l2_reg)
        epoch += 1
        check_finite_loss(stats['loss'], f'{desc} epoch {epoch}')
        if epoch % stopping.eval_every and epoch < stopping.max_epochs:
            continue
        value = float(validate(recommender)[stopping.metric])
        history.append(dict(epoch=epoch, loss=stats['loss'], valid=value))
        log(f'{desc} epoch {epoch}: loss {stats["loss"]:.4f} valid '
            f'{stopping.metric} {value:.4f}')
        if value > best + stopping.min_delta:
            best, best_epoch, bad = value, epoch, 0
            best_state = copy.deepcopy(recommender.state_dict())
        else:
            bad += 1
            if bad >= stopping.patience:
                break
    recommender.load_state_dict(best_state)
    return FitResult(best_epoch, best, epoch, time.perf_counter() - start,
                     history)


class _DeviceSampler:
    r"""Moves the batches of a sampler to a device."""
    def __init__(self, sampler: Any, device: torch.device) -> None:
        self.sampler, self.device = sampler, torch.device(device)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for batch in self.sampler:
            yield tuple(t.to(self.device, non_blocking=True) for t in batch)


class ConvergedRunner:
    r"""Trains one (method, budget, seed) cell of the comparison to
    convergence and evaluates the chosen model once on the test split.

    * fixed methods: :func:`fit` from the initialisation;
    * :obj:`'cerp'`, :obj:`'cerp-noreg'`, :obj:`'pep'`: phase 1 by
      :class:`~pyg_cerp.train.CERPRunner` (stage :obj:`'prune'` only, on the
      training pairs, target :obj:`budget`), then the snapshot's masks
      frozen, values rewound to their initial state and :func:`fit`; for the
      CERP variants once per :func:`bucket_candidates` :math:`b`, keeping
      the best validation result;
    * :obj:`'magnitude'`: the converged full table of the same seed
      (trained once and kept in memory), pruned by magnitude, the rest of
      the model copied, then :func:`fit`.

    Every model gets the same sampler, optimiser settings, stopping rule and
    evaluation. Nothing is selected on the test split.

    Args:
        split (Split): The data.
        build_recommender (Callable[[torch.nn.Module], Recommender]): The
            backbone around an embedding (parameters reset, on
            :obj:`device`).
        make_sampler (Callable[[Tensor, int], Iterable]): Builds the
            training sampler from the training pairs and a seed.
        config (CERPConfig): Phase 1 and the optimiser (its :obj:`targets`,
            :obj:`bucket_size`, :obj:`seed` and epoch counts other than
            :obj:`prune_epochs` are set per cell). (default: the
            :obj:`'faithful'` preset)
        stopping (EarlyStopping): The stopping rule. (default:
            :class:`EarlyStopping()`)
        bucket_ratios (Sequence[float]): See :func:`bucket_candidates`.
        device (torch.device, optional): Where batches go.
            (default: :obj:`'cpu'`)
        eval_users (int, optional): Validate and test on a seeded sample of
            this many users (:obj:`None`: all).
        log (Callable[[str], None], optional): Log lines.
    """
    def __init__(self, split: Split,
                 build_recommender: Callable[[Module], Recommender],
                 make_sampler: Callable[[Tensor, int], Any],
                 config: Optional[CERPConfig] = None,
                 stopping: Optional[EarlyStopping] = None,
                 bucket_ratios: Sequence[float] = (1.5, 2., 4.),
                 device: Any = 'cpu', eval_users: Optional[int] = None,
                 log: Callable[[str], None] = print) -> None:
        self.split = split
        self.build_recommender = build_recommender
        self.make_sampler = make_sampler
        self.config = config or CERPConfig.preset('faithful')
        self.stopping = stopping or EarlyStopping()
        self.bucket_ratios = tuple(bucket_ratios)
        if len(self.bucket_ratios) < 1:
            raise ValueError("'bucket_ratios' must not be empty")
        self.device = torch.device(device)
        self.eval_users = eval_users
        self.log = log
        self._full: Dict[int, Tuple[Dict[str, Tensor], FitResult]] = {}

    @property
    def num_entities(self) -> int:
        return self.split.num_users + self.split.num_items

    # Pieces ------------------------------------------------------------------

    def _cell_config(self, method: Method, budget: float, seed: int,
                     bucket_size: Optional[int]) -> CERPConfig:
        values = self.config.to_dict()
        values.update(targets=(min(budget, 0.999999), ), target_unit='full',
                      baseline_epochs=0, retrain_epochs=0, finetune_epochs=0,
                      seed=int(seed), bucket_size=bucket_size)
        if not method.regularized:
            values['gamma_init'] = 0.
        return CERPConfig.from_dict(values)

    def _sampler(self, seed: int) -> Any:
        sampler = self.make_sampler(self.split.train, seed)
        if self.device.type != 'cpu':
            sampler = _DeviceSampler(sampler, self.device)
        return sampler

    def _optimizer(self, model: Module,
                   config: CERPConfig) -> torch.optim.Optimizer:
        der = config.derived(self.num_entities, int(self.split.train.size(1)))
        return make_optimizer(model, lr=config.lr,
                              weight_decay=der['weight_decay'],
                              threshold_lr=der['threshold_lr'],
                              threshold_weight_decay=der[
                                  'threshold_weight_decay'],
                              threshold_eps=der['threshold_eps'])

    def validate(self, model: Recommender) -> Dict[str, float]:
        r"""Validation metrics (training pairs masked)."""
        return evaluate(model, self.split.train, self.split.valid, ks=(20, ),
                        max_users=self.eval_users, seed=0)

    def test(self, model: Recommender) -> Dict[str, float]:
        r"""Test metrics (training and validation pairs masked)."""
        return evaluate(model, self.split.known, self.split.test,
                        ks=(10, 20), max_users=self.eval_users, seed=0)

    def _fit(self, model: Recommender, config: CERPConfig, seed: int,
             desc: str) -> FitResult:
        torch.manual_seed(seed)
        return fit(model, self._optimizer(model, config), self._sampler(seed),
                   self.validate, self.stopping, config.clip_grad_norm,
                   self.log, desc, config.l2_reg)

    def _build(self, embedding: Module, seed: int) -> Recommender:
        torch.manual_seed(seed)
        return self.build_recommender(embedding)

    def full_model(self, seed: int) -> Tuple[Dict[str, Tensor], FitResult]:
        r"""The converged full-table model of :obj:`seed` (trained once)."""
        if seed not in self._full:
            cfg = self._cell_config(METHODS['full'], 1., seed, None)
            model = self._build(build_embedding('full', self.num_entities,
                                                cfg.dim, 1.), seed)
            res = self._fit(model, cfg, seed, f'full seed {seed}')
            self._full[seed] = (copy.deepcopy(model.state_dict()), res)
        return self._full[seed]

    def _prune(self, method: Method, budget: float, seed: int,
               bucket_size: Optional[int]) -> Optional[Dict[str, Any]]:
        # Phase 1 through the two-phase runner, stage 'prune' only.
        cfg = self._cell_config(method, budget, seed, bucket_size)
        n = self.num_entities

        def factory(kind: str) -> Module:
            return build_embedding(method.name, n, cfg.dim, budget,
                                   bucket_size, cfg.threshold_init)

        data = Interactions(self.split.train, self.split.valid,
                            self.split.num_users, self.split.num_items)
        runner = CERPRunner(cfg, data, self.build_recommender,
                            lambda s: self._sampler(s),
                            embedding_factory=factory, log=self.log)
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # A missed target is reported.
            state = runner.run()
        prune = state['prune']
        if not prune['reached']:
            return None
        snap = next(s for s in prune['scheduler']['snapshots']
                    if float(s['target']) == cfg.targets[0])
        epochs = sum(1 for h in state['history'] if h['stage'] == 'prune')
        return dict(init_model=prune['init_model'], masks=snap['masks'],
                    initial=prune['scheduler']['initial_weights'],
                    epochs=epochs, factory=factory, config=cfg)

    # One cell ----------------------------------------------------------------

    def run(self, method: str, budget: float, seed: int) -> Dict[str, Any]:
        r"""Trains and tests one cell; returns the chosen model's
        :obj:`'recommender'`, its test metrics, :obj:`'valid_ndcg@20'`,
        :obj:`'epochs'` (of the final training), :obj:`'best_epoch'`,
        :obj:`'prune_epochs'`, :obj:`'bucket_size'`,
        :obj:`'bucket_sweep'` (:math:`b` to validation NDCG@20),
        :obj:`'seconds'` and :obj:`'note'` (why there is no model, if
        there is none: an infeasible budget or a missed target)."""
        m = get_method(method)
        budget = 1. if m.name == 'full' else float(budget)
        start = time.perf_counter()
        out: Dict[str, Any] = dict(method=m.name, budget=budget, seed=seed,
                                   bucket_size=None, prune_epochs=0,
                                   bucket_sweep={}, note='')
        cfg = self._cell_config(m, budget, seed, None)
        if m.kind == 'fixed':
            try:
                emb = build_embedding(m.name, self.num_entities, cfg.dim,
                                      budget)
            except ValueError as error:
                return dict(out, note=f'infeasible: {error}')
            model = self._build(emb, seed)
            res = self._fit(model, cfg, seed, f'{m.name}@{budget:g}')
            best = (model, res)
            if m.name == 'full':  # What 'magnitude' prunes: train it once.
                self._full[seed] = (copy.deepcopy(model.state_dict()), res)
        elif m.kind == 'magnitude':
            state, full_res = self.full_model(seed)
            full = self._build(build_embedding('full', self.num_entities,
                                               cfg.dim, 1.), seed)
            full.load_state_dict(state)
            model = self._build(PEPEmbedding(self.num_entities, cfg.dim,
                                             check_index=False), seed)
            rest = {k: v for k, v in state.items()
                    if not _is_embedding_key(model, k)}
            model.load_state_dict(rest, strict=False)  # The backbone's rest.
            model.embedding.freeze_magnitude(
                full.embedding.weight.detach(), budget)
            out['prune_epochs'] = full_res.epochs
            res = self._fit(model, cfg, seed, f'magnitude@{budget:g}')
            best = (model, res)
        else:
            sizes: List[Optional[int]] = (
                bucket_candidates(self.num_entities, budget,
                                  self.bucket_ratios)
                if m.sweeps_bucket_size else [None])
            best = None
            for b in sizes:
                pruned = self._prune(m, budget, seed, b)
                if pruned is None:
                    self.log(f'{m.name}@{budget:g} b={b}: target missed')
                    continue
                model = self._build(pruned['factory']('cerp'), seed)
                model.load_state_dict(pruned['init_model'])
                model.embedding.freeze_masks(pruned['masks'],
                                             rewind_to=pruned['initial'])
                res = self._fit(model, pruned['config'], seed,
                                f'{m.name}@{budget:g} b={b}')
                if b is not None:
                    out['bucket_sweep'][int(b)] = res.best_valid
                if best is None or res.best_valid > best[1].best_valid:
                    best = (model, res)
                    out.update(bucket_size=b,
                               prune_epochs=pruned['epochs'])
            if best is None:
                return dict(out, note=f'target {budget:g} not reached in '
                            f'{self.config.prune_epochs} prune epochs',
                            seconds=time.perf_counter() - start)
        model, res = best
        metrics = self.test(model)
        out.update(metrics, recommender=model, epochs=res.epochs,
                   best_epoch=res.best_epoch,
                   seconds=time.perf_counter() - start)
        out['valid_ndcg@20'] = res.best_valid
        if out['bucket_size'] is None and hasattr(model.embedding,
                                                   'bucket_size'):
            out['bucket_size'] = int(model.embedding.bucket_size)
        return out


def _is_embedding_key(model: Recommender, key: str) -> bool:
    # The state-dict keys of the recommender's embedding module.
    for name, module in model.named_modules():
        if module is model.embedding:
            return key.startswith(name + '.')
    return False
