r"""The equal-memory comparison, cell by cell (:class:`ConvergedRunner`): each
method trained to convergence by :func:`~pyg_cerp.train.fit` (early stopping
on a validation split) and tested once."""
import copy
import inspect
import os
import time
import warnings
from contextlib import suppress
from dataclasses import asdict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import Module

from pyg_cerp.memory import memory_report
from pyg_cerp.nn.baselines import PEPEmbedding
from pyg_cerp.nn.hybrid import most_frequent
from pyg_cerp.nn.quant import check_precision
from pyg_cerp.distributed import DistContext
from pyg_cerp.train.checkpoint import Checkpoint, data_identity
from pyg_cerp.train.config import CERPConfig
from pyg_cerp.train.data import Interactions, Split
from pyg_cerp.train.distill import RankingDistillation
from pyg_cerp.train.loop import EarlyStopping, FitResult, evaluate, fit
from pyg_cerp.train.methods import (METHODS, Method, bucket_candidates,
                                    budget_nbytes, build_embedding,
                                    bytes_infeasible, check_budget_unit,
                                    get_method, hybrid_budget)
from pyg_cerp.train.recommender import Recommender
from pyg_cerp.train.runner import CERPRunner, Stage, config_optimizer
from pyg_cerp.utils.io import content_digest
from pyg_cerp.utils.validation import check_float

__all__ = ['ConvergedRunner']


class ConvergedRunner:
    r"""Trains one (method, budget, seed) cell of the comparison to
    convergence and evaluates the chosen model once on the test split.

    * fixed methods: :func:`fit` from the initialisation;
    * :obj:`'cerp'`, :obj:`'cerp-noreg'`, :obj:`'pep'`: phase 1 by
      :class:`~pyg_cerp.train.CERPRunner` (stage :obj:`'prune'` only, on the
      training pairs, target :obj:`budget`), then the snapshot's masks
      frozen, values rewound to their initial state (:obj:`'cerp-ft'`: kept
      at their values at the target) and :func:`fit`; for the
      CERP variants once per :func:`bucket_candidates` :math:`b`, keeping
      the best validation result;
    * :obj:`'magnitude'`: the converged full table of the same seed
      (trained once and kept in memory), pruned by magnitude, the rest of
      the model copied, then :func:`fit`.

    Every model gets the same sampler, optimiser settings, stopping rule and
    evaluation. Nothing is selected on the test split.

    With :obj:`budget_unit='bytes'` a cell's budget is a fraction of the
    full table's :obj:`float32` bytes :math:`4Nd`
    (:func:`~pyg_cerp.train.methods.budget_nbytes`) and every model of the
    cell, the full table included, is built and trained at the cell's
    :obj:`precision` (fake quantisation, so that the stored form scores
    what was trained): QR and hashing sized by :meth:`for_nbytes`, CERP and
    PEP pruned to the byte target (:obj:`target_unit='bytes'`, counted in
    the stored form by :mod:`pyg_cerp.memory`), CERP's :math:`b` from the
    budget planner (:func:`~pyg_cerp.train.methods.bucket_candidates`),
    magnitude pruning of the converged full table of the same seed and
    precision by :meth:`~pyg_cerp.nn.baselines.PEPEmbedding.freeze_magnitude`
    with :obj:`nbytes`. A pruned method whose sparse index (and int8 scales)
    alone exceed the budget is reported infeasible without training. The
    stored bytes of every model are at most the budget's (checked).

    With :obj:`distill_weights`, every compressed model (all methods but
    :obj:`'full'`) is trained once per weight :math:`\alpha` with the
    :class:`~pyg_cerp.train.distill.RankingDistillation` term of the
    converged full table of the same seed (the teacher that
    :obj:`'magnitude'` prunes, trained once), :math:`\alpha = 0` without
    it, from the same start; the best validation result is kept (for CERP,
    over all :math:`(b, \alpha)`; each weight is one more training), and
    :meth:`run` reports :obj:`'distill'` (the weight used) and
    :obj:`'distill_sweep'`.

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
        device (torch.device, optional): The models' device (the step
            moves the batches there). (default: :obj:`'cpu'`)
        eval_users (int, optional): Validate and test on a seeded sample of
            this many users (:obj:`None`: all).
        log (Callable[[str], None], optional): Log lines.
        distill_weights (Sequence[float], optional): The distillation
            weights :math:`\alpha \geq 0` selected on validation (empty:
            no distillation, the default). (default: :obj:`()`)
        distill_options (Dict[str, Any], optional): Further arguments of
            :class:`~pyg_cerp.train.distill.RankingDistillation` (its
            :obj:`exclude` defaults to the training pairs).
            (default: :obj:`None`)
        budget_unit (str, optional): The unit of the budgets of :meth:`run`:
            :obj:`'full'` (a fraction of the :math:`Nd` values of the full
            table) or :obj:`'bytes'` (a fraction of its :obj:`float32`
            bytes). (default: :obj:`'full'`)
        exact_share (float, optional): For the hybrid methods
            (:obj:`'*-hybrid'`), the share of a byte budget given to exact
            rows of the entities with the most training pairs
            (:func:`~pyg_cerp.train.methods.hybrid_budget`).
            (default: :obj:`0.5`)
        exact_init (str, optional): How the hybrids' exact rows start:
            :obj:`'random'` (as the full table's) or :obj:`'teacher'` (the
            converged full table's rows of those entities, :meth:`teacher`).
            (default: :obj:`'random'`)
        cache (str, optional): A folder that keeps each converged full
            table (:meth:`full_model`) as a checksummed
            :class:`~pyg_cerp.train.checkpoint.Checkpoint` tied to the
            data, so that another process (*e.g.* a :obj:`'magnitude'` or
            distillation cell run later) loads it instead of training it
            again. The file name holds a digest of everything else that
            shapes the model: the cell's configuration, the backbone
            (:obj:`repr`), the stopping rule, the validation pairs and
            :obj:`eval_users`. It also keeps the progress of every
            :func:`~pyg_cerp.train.fit` of a cell, saved at each validation,
            so that a cell killed mid-training and run again resumes where
            it stopped (its phase 1, a few epochs, is run again); a cell
            that ends removes its progress files.
            (default: :obj:`None`: kept in memory only)
    """
    def __init__(self, split: Split,
                 build_recommender: Callable[[Module], Recommender],
                 make_sampler: Callable[[Tensor, int], Any],
                 config: Optional[CERPConfig] = None,
                 stopping: Optional[EarlyStopping] = None,
                 bucket_ratios: Sequence[float] = (1.5, 2., 4.),
                 device: Any = 'cpu', eval_users: Optional[int] = None,
                 log: Callable[[str], None] = print,
                 distill_weights: Sequence[float] = (),
                 distill_options: Optional[Dict[str, Any]] = None,
                 budget_unit: str = 'full',
                 cache: Optional[str] = None,
                 exact_share: float = 0.5,
                 exact_init: str = 'random') -> None:
        self.split = split
        if exact_init not in ('random', 'teacher'):
            raise ValueError(f"'exact_init' must be 'random' or 'teacher' "
                             f"(got {exact_init!r})")
        self.exact_init = exact_init
        check_float('exact_share', exact_share, low=0.)
        self.exact_share = float(exact_share)
        self.cache = cache
        self.budget_unit = check_budget_unit(budget_unit)
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
        # The converged full tables by (seed, precision).
        self._full: Dict[Tuple[int, str], Tuple[Dict[str, Tensor],
                                                FitResult]] = {}
        self.distill_weights = self._weights(distill_weights)
        self.distill_options = dict(distill_options or {})
        allowed = set(inspect.signature(RankingDistillation).parameters)
        unknown = set(self.distill_options) - (allowed - {'teacher',
                                                          'weight'})
        if unknown:
            raise ValueError(f"Unknown 'distill_options' {sorted(unknown)} "
                             f"(arguments of RankingDistillation other than "
                             f"'teacher' and 'weight')")
        self._teachers: Dict[int, Recommender] = {}
        self._earlier, self._progress = 0., []  # Of the running cell.

    def _weights(self, weights: Optional[Sequence[float]]
                 ) -> Tuple[float, ...]:
        if weights is None:
            return self.distill_weights
        for w in weights:
            check_float('distill_weights', w, low=0.)
        return tuple(float(w) for w in weights)

    @property
    def num_entities(self) -> int:
        return self.split.num_users + self.split.num_items

    # Pieces ------------------------------------------------------------------

    def _cell_config(self, method: Method, budget: float, seed: int,
                     bucket_size: Optional[int],
                     precision: str = 'float32') -> CERPConfig:
        return method.config(
            self.config, targets=(min(budget, 0.999999), ),
            target_unit=self.budget_unit, baseline_epochs=0, retrain_epochs=0,
            finetune_epochs=0, seed=int(seed), bucket_size=bucket_size,
            precision=precision)

    def _embedding(self, method: str, budget: float, precision: str,
                   bucket_size: Optional[int] = None,
                   threshold_init: float = -100.) -> Module:
        exact = (self.exact_index(budget, precision)
                 if get_method(method).base is not None else None)
        return build_embedding(method, self.num_entities, self.config.dim,
                               budget, bucket_size, threshold_init,
                               precision, self.budget_unit, exact)

    def _hybrid_budget(self, budget: float,
                       precision: str) -> Tuple[int, int, float]:
        if self.budget_unit != 'bytes':
            raise ValueError("The hybrid methods need budget_unit='bytes'")
        return hybrid_budget(self.num_entities, self.config.dim, budget,
                             self.exact_share, precision)

    def exact_index(self, budget: float, precision: str) -> Tensor:
        r"""The ids with exact rows in a hybrid method's embedding at
        :obj:`budget`: the :math:`k` users and items with the most training
        pairs (:func:`~pyg_cerp.nn.hybrid.most_frequent`), :math:`k` from
        :func:`~pyg_cerp.train.methods.hybrid_budget` of
        :obj:`exact_share`."""
        k = self._hybrid_budget(budget, precision)[0]
        train = self.split.train
        degree = torch.cat([
            torch.bincount(train[0], minlength=self.split.num_users),
            torch.bincount(train[1], minlength=self.split.num_items)])
        return most_frequent(degree, k)

    def budget_nbytes(self, budget: float) -> int:
        r"""The stored bytes a byte budget :obj:`budget` allows
        (:func:`~pyg_cerp.train.methods.budget_nbytes`)."""
        return budget_nbytes(self.num_entities, self.config.dim, budget)

    def _optimizer(self, model: Module,
                   config: CERPConfig) -> torch.optim.Optimizer:
        return config_optimizer(model, config.derived(
            self.num_entities, int(self.split.train.size(1))), config.lr)

    def validate(self, model: Recommender) -> Dict[str, float]:
        r"""Validation metrics (training pairs masked)."""
        return evaluate(model, self.split.train, self.split.valid, ks=(20, ),
                        max_users=self.eval_users, seed=0)

    def test(self, model: Recommender) -> Dict[str, float]:
        r"""Test metrics (training and validation pairs masked)."""
        return evaluate(model, self.split.known, self.split.test,
                        ks=(10, 20), max_users=self.eval_users, seed=0)

    def _fit(self, model: Recommender, config: CERPConfig, seed: int,
             desc: str,
             distill: Optional[RankingDistillation] = None) -> FitResult:
        torch.manual_seed(seed)
        sampler = self.make_sampler(self.split.train, seed)
        progress = self._store(f'fit_seed{seed}', config, model, desc=desc,
                               distill={} if distill is None else
                               self.distill_options)
        start = time.perf_counter()
        res = fit(model, self._optimizer(model, config), sampler,
                  self.validate, self.stopping, config.clip_grad_norm,
                  self.log, desc, config.l2_reg, distill=distill,
                  checkpoint=progress)
        # The training time of earlier calls that this fit resumed.
        self._earlier += max(0., res.seconds - time.perf_counter() + start)
        if progress is not None:
            self._progress.append(progress.path)
        return res

    def teacher(self, seed: int) -> Recommender:
        r"""The converged full-table model of :obj:`seed` as a frozen
        teacher (built once from :meth:`full_model`)."""
        if seed not in self._teachers:
            model, _ = self._full_recommender(seed, 'float32')
            for param in model.parameters():
                param.requires_grad_(False)
            self._teachers[seed] = model.eval()
        return self._teachers[seed]

    def distillation(self, seed: int,
                     weight: float) -> Optional[RankingDistillation]:
        r"""The distillation term of weight :obj:`weight` from
        :meth:`teacher` (:obj:`None` for :obj:`0`)."""
        if weight == 0:
            return None
        options = dict(dict(exclude=self.split.train, seed=seed),
                       **self.distill_options)
        return RankingDistillation(self.teacher(seed), weight, **options)

    def _fit_sweep(self, model: Recommender, config: CERPConfig, seed: int,
                   desc: str, weights: Tuple[float, ...]
                   ) -> Tuple[FitResult, float, Dict[float, float]]:
        # fit() once per distillation weight from the same start; the model
        # keeps the best validation state. Without weights: fit() once.
        if not weights:
            return self._fit(model, config, seed, desc), 0., {}
        start = copy.deepcopy(model.state_dict())
        best: Optional[Tuple[FitResult, float, Dict[str, Tensor]]] = None
        sweep: Dict[float, float] = {}
        for i, weight in enumerate(weights):
            if i:
                model.load_state_dict(start)
            res = self._fit(model, config, seed, f'{desc} distill={weight:g}',
                            self.distillation(seed, weight))
            sweep[weight] = res.best_valid
            if best is None or res.best_valid > best[0].best_valid:
                best = (res, weight, copy.deepcopy(model.state_dict()))
        model.load_state_dict(best[2])
        return best[0], best[1], sweep

    def _build(self, embedding: Module, seed: int) -> Recommender:
        torch.manual_seed(seed)
        return self._init_exact(self.build_recommender(embedding), seed)

    def _init_exact(self, model: Recommender, seed: int) -> Recommender:
        # With exact_init='teacher', a hybrid's exact rows start as the
        # teacher's rows of the same entities (after the backbone's reset).
        emb = model.embedding
        if self.exact_init == 'teacher' and hasattr(emb, 'exact_index'):
            weight = self.teacher(seed).embedding.weight  # May train it.
            with torch.no_grad():
                emb.exact.copy_(weight[emb.exact_index.to(weight.device)])
        return model

    def full_model(self, seed: int, precision: str = 'float32'
                   ) -> Tuple[Dict[str, Tensor], FitResult]:
        r"""The converged full-table model of :obj:`seed` trained at
        :obj:`precision` (trained once; the :obj:`'float32'` one is the
        distillation teacher).

        Args:
            seed (int): The seed.
            precision (str, optional): The value precision.
                (default: :obj:`'float32'`)
        """
        precision = check_precision(precision)
        key = (seed, precision)
        if key not in self._full:
            cfg = self._cell_config(METHODS['full'], 1., seed, None,
                                    precision)
            model = self._build(self._embedding('full', 1., precision), seed)
            desc = f'full seed {seed}' + ('' if precision == 'float32' else
                                          f' {precision}')
            store = self._store(f'full_seed{seed}_{precision}', cfg, model)
            stored = None if store is None else store.load()
            if stored is not None:
                self.log(f'{desc}: loaded from {store.path}')
                self._full[key] = (stored['model'], FitResult(**stored['fit']))
            else:
                res = self._fit(model, cfg, seed, desc)
                self._full[key] = (copy.deepcopy(model.state_dict()), res)
                if store is not None:
                    store.save(dict(data=store.data, config=cfg.to_dict(),
                                    model=self._full[key][0],
                                    fit=asdict(res)))
                    # The progress of the fit above (the last one
                    # recorded) is now redundant.
                    with suppress(FileNotFoundError):
                        os.remove(self._progress.pop())
        return self._full[key]

    def _full_recommender(self, seed: int, precision: str
                          ) -> Tuple[Recommender, FitResult]:
        # A new recommender holding the converged full table of full_model().
        state, res = self.full_model(seed, precision)
        model = self._build(self._embedding('full', 1., precision), seed)
        model.load_state_dict(state)
        return model, res

    def _store(self, name: str, config: CERPConfig, model: Recommender,
               **extra: Any) -> Optional[Checkpoint]:
        # The cache file `name` of a model (None without a cache folder),
        # keyed by everything else that shapes it.
        if self.cache is None:
            return None
        os.makedirs(self.cache, exist_ok=True)
        digest = content_digest(dict(
            config=config.to_dict(), backbone=repr(model),
            stopping=asdict(self.stopping), eval_users=self.eval_users,
            valid=self.split.valid.long(), **extra))[:16]
        return Checkpoint(os.path.join(self.cache, f'{name}_{digest}.pt'),
                          data_identity(self.split), config, DistContext())

    def _prune(self, method: Method, budget: float, seed: int,
               bucket_size: Optional[int], precision: str = 'float32'
               ) -> Optional[Tuple[Recommender, int]]:
        # Phase 1 by the runner (stage 'prune' only), then the snapshot
        # frozen and the weights rewound by its scheduler.
        cfg = self._cell_config(method, budget, seed, bucket_size, precision)

        def factory(kind: str) -> Module:
            return self._embedding(method.name, budget, precision,
                                   bucket_size, cfg.threshold_init)

        data = Interactions(self.split.train, self.split.valid,
                            self.split.num_users, self.split.num_items)
        runner = CERPRunner(cfg, data,
                            lambda e: self._init_exact(
                                self.build_recommender(e), seed),
                            lambda s: self.make_sampler(self.split.train, s),
                            method=method, embedding_factory=factory,
                            log=self.log)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # A missed target is reported.
            state = runner.run()
        if not state['prune']['reached']:
            return None
        model = self._build(factory('cerp'), seed)
        kind = 'retrain' if method.rewind else 'finetune'
        runner.rewind(model, Stage(kind, 0, cfg.targets[0]))
        return model, sum(1 for h in state['history']
                          if h['stage'] == 'prune')

    # One cell ----------------------------------------------------------------

    def run(self, method: str, budget: float, seed: int,
            distill_weights: Optional[Sequence[float]] = None,
            precision: Optional[str] = None) -> Dict[str, Any]:
        r"""Trains and tests one cell; returns the chosen model's
        :obj:`'recommender'`, its test metrics, :obj:`'valid_ndcg@20'`,
        :obj:`'epochs'` (of the final training), :obj:`'best_epoch'`,
        :obj:`'prune_epochs'`, :obj:`'bucket_size'`,
        :obj:`'bucket_sweep'` (:math:`b` to validation NDCG@20),
        :obj:`'distill'` (the distillation weight used, :obj:`0.`: none),
        :obj:`'distill_sweep'` (weight to validation NDCG@20, of the chosen
        :math:`b`), :obj:`'precision'`, :obj:`'bytes'` (the stored bytes of
        the model's embedding, :func:`pyg_cerp.memory.memory_report`),
        :obj:`'budget_bytes'` (for :obj:`budget_unit='bytes'`, else
        :obj:`None`), :obj:`'exact_rows'` (a hybrid's :math:`k`, else
        :obj:`0`), :obj:`'seconds'` (with the training time of
        earlier, killed calls that a resumed fit continues) and
        :obj:`'note'` (why there is no
        model, if there is none: an infeasible budget or a missed target).

        Args:
            method (str): A name of :data:`~pyg_cerp.train.methods.METHODS`.
            budget (float): The budget :math:`f \in (0, 1]` in the runner's
                :obj:`budget_unit` (ignored for :obj:`'full'`, whose budget
                is :obj:`1`).
            seed (int): The seed of the cell.
            distill_weights (Sequence[float], optional): Replaces the
                runner's weights for this cell (*e.g.*, :obj:`(0., )` and
                :obj:`(1., )` to test both models). (default: :obj:`None`)
            precision (str, optional): The value precision every model of
                the cell is trained and stored at (:obj:`None`: the
                configuration's :obj:`precision`). (default: :obj:`None`)
        """
        self._earlier, self._progress = 0., []
        out = self._run(method, budget, seed, distill_weights, precision)
        for path in self._progress:  # The cell is done: drop its progress.
            with suppress(FileNotFoundError):
                os.remove(path)
        return out

    def _run(self, method: str, budget: float, seed: int,
             distill_weights: Optional[Sequence[float]],
             precision: Optional[str]) -> Dict[str, Any]:
        weights = self._weights(distill_weights)
        m = get_method(method)
        precision = check_precision(self.config.precision if precision is None
                                    else precision)
        budget = 1. if m.name == 'full' else float(budget)
        in_bytes = self.budget_unit == 'bytes'
        start = time.perf_counter()

        def elapsed() -> float:
            return self._earlier + time.perf_counter() - start

        out: Dict[str, Any] = dict(
            method=m.name, budget=budget, seed=seed, bucket_size=None,
            prune_epochs=0, bucket_sweep={}, distill=0., distill_sweep={},
            note='', precision=precision, exact_rows=0,
            budget_bytes=self.budget_nbytes(budget) if in_bytes else None)
        cfg = self._cell_config(m, budget, seed, None, precision)
        tag = f'{m.name}@{budget:g}' + ('' if precision == 'float32' else
                                        f' {precision}')
        if m.base is not None and self.exact_init != 'random':
            tag += f' exact_init={self.exact_init}'
        if m.name == 'full':  # Trained once (and cached) per process.
            best = self._full_recommender(seed, precision)
        elif m.kind == 'fixed':
            try:
                emb = self._embedding(m.name, budget, precision)
            except ValueError as error:
                return dict(out, note=f'infeasible: {error}')
            model = self._build(emb, seed)
            res, weight, distill_sweep = self._fit_sweep(
                model, cfg, seed, tag, weights)
            out.update(distill=weight, distill_sweep=distill_sweep)
            best = (model, res)
        elif m.kind == 'magnitude':
            def pruned() -> Module:
                return PEPEmbedding(self.num_entities, cfg.dim,
                                    check_index=False, precision=precision)

            if in_bytes:
                note = bytes_infeasible(pruned(), out['budget_bytes'])
                if note:
                    return dict(out, note=note)
            full, full_res = self._full_recommender(seed, precision)
            state = full.state_dict()
            model = self._build(pruned(), seed)
            rest = {k: v for k, v in state.items()
                    if not _is_embedding_key(model, k)}
            model.load_state_dict(rest, strict=False)  # The backbone's rest.
            weight = full.embedding.weight.detach()
            if in_bytes:
                model.embedding.freeze_magnitude(
                    weight, nbytes=out['budget_bytes'])
            else:
                model.embedding.freeze_magnitude(weight, budget)
            out['prune_epochs'] = full_res.epochs
            res, weight, distill_sweep = self._fit_sweep(
                model, cfg, seed, tag, weights)
            out.update(distill=weight, distill_sweep=distill_sweep)
            best = (model, res)
        else:
            n, f = self.num_entities, budget
            if m.base is not None:  # The base's entities and bytes.
                try:
                    _, n, f = self._hybrid_budget(budget, precision)
                except ValueError as error:
                    return dict(out, note=f'infeasible: {error}')
            sizes: List[Optional[int]] = (
                bucket_candidates(n, f, self.bucket_ratios,
                                  self.budget_unit, cfg.dim, precision)
                if m.sweeps_bucket_size else [None])
            if not sizes:
                return dict(out, note=f'infeasible: no bucket size of '
                            f'{m.name} fits {out["budget_bytes"]} bytes at '
                            f'{precision}')
            best = None
            notes = []
            for b in sizes:
                if in_bytes:
                    note = bytes_infeasible(self._embedding(
                        m.name, budget, precision, b), out['budget_bytes'])
                    if note:
                        notes.append(note)
                        continue
                pruned = self._prune(m, budget, seed, b, precision)
                if pruned is None:
                    self.log(f'{tag} b={b}: target missed')
                    continue
                model, epochs = pruned
                res, weight, distill_sweep = self._fit_sweep(
                    model, self._cell_config(m, budget, seed, b, precision),
                    seed, f'{tag} b={b}', weights)
                if b is not None:
                    out['bucket_sweep'][int(b)] = res.best_valid
                if best is None or res.best_valid > best[1].best_valid:
                    best = (model, res)
                    out.update(bucket_size=b, prune_epochs=epochs,
                               distill=weight, distill_sweep=distill_sweep)
            if best is None:
                if len(notes) == len(sizes):
                    return dict(out, note=notes[0],
                                seconds=elapsed())
                return dict(out, note=f'target {budget:g} not reached in '
                            f'{self.config.prune_epochs} prune epochs',
                            seconds=elapsed())
        model, res = best
        nbytes = memory_report(model.embedding).nbytes
        if in_bytes and nbytes > out['budget_bytes']:
            raise RuntimeError(
                f'{tag} seed {seed}: the trained embedding stores {nbytes} '
                f'bytes, over its budget of {out["budget_bytes"]} bytes')
        metrics = self.test(model)
        out.update(metrics, recommender=model, epochs=res.epochs,
                   best_epoch=res.best_epoch, bytes=nbytes,
                   seconds=elapsed())
        out['valid_ndcg@20'] = res.best_valid
        out['exact_rows'] = getattr(model.embedding, 'num_exact', 0)
        b = getattr(model.embedding, 'bucket_size', None)
        if out['bucket_size'] is None and b is not None:
            out['bucket_size'] = int(b)
        return out


def _is_embedding_key(model: Recommender, key: str) -> bool:
    # The state-dict keys of the recommender's embedding module.
    for name, module in model.named_modules():
        if module is model.embedding:
            return key.startswith(name + '.')
    return False
