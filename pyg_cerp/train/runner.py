r"""The two-phase CERP procedure as resumable, typed stages with atomic,
checksummed checkpoints tied to their data."""
import copy
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Module

from pyg_cerp.distributed import DistContext, sync_scheduler_decisions
from pyg_cerp.nn import CompositionalEmbedding
from pyg_cerp.train.config import CERPConfig
from pyg_cerp.train.data import Interactions
from pyg_cerp.train.loop import evaluate, make_optimizer, train_epoch
from pyg_cerp.train.methods import Method, build_embedding, get_method
from pyg_cerp.train.recommender import Recommender
from pyg_cerp.train.scheduler import PruningScheduler
from pyg_cerp.train.checkpoint import (DATA_KEYS, Checkpoint, ResumeError,
                                       data_identity)
from pyg_cerp.utils.io import FolderLock
from pyg_cerp.utils.validation import (check_edge_ids, check_finite_loss,
                                       check_int)

__all__ = ['Stage', 'CERPRunner', 'run_cerp', 'memory_stats', 'target_key',
           'StopRequested', 'ResumeError', 'DATA_KEYS', 'data_identity']


class StopRequested(Exception):
    r"""Raised internally when :obj:`stop_after` epochs were run."""


def target_key(target: float) -> str:
    r"""The stage-name suffix of a target, *e.g.* :obj:`'0.05'`."""
    return f'{target:g}'


@dataclass(frozen=True)
class Stage:
    r"""One stage of :class:`CERPRunner`.

    Args:
        kind (str): :obj:`'full'` (train the structure from its
            initialisation, no pruning), :obj:`'prune'` (phase 1),
            :obj:`'retrain'` (phase 2: masks frozen, weights rewound) or
            :obj:`'finetune'` (masks frozen, values kept).
        epochs (int): Its epoch budget.
        target (float, optional): The memory target of :obj:`'retrain'` and
            :obj:`'finetune'`. (default: :obj:`None`)
    """
    kind: str
    epochs: int
    target: Optional[float] = None

    @property
    def name(self) -> str:
        r"""Its key in the results and checkpoints, *e.g.*
        :obj:`'retrain@0.05'`."""
        return (self.kind if self.target is None else
                f'{self.kind}@{target_key(self.target)}')

    def __str__(self) -> str:
        return self.name


def _kind(stage: Union[Stage, str]) -> str:
    return stage.kind if isinstance(stage, Stage) else str(stage)


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
    return dict(nonzero=int(embedding.weight.numel()), full_fraction=1.0,
                meta_density=None)


def config_optimizer(model: Module, derived: Dict[str, Any],
                     lr: float) -> torch.optim.Optimizer:
    r""":func:`~pyg_cerp.train.make_optimizer` with the weight decays, the
    threshold lr and :math:`\epsilon` of :meth:`CERPConfig.derived`.

    Args:
        model (torch.nn.Module): The model.
        derived (Dict[str, Any]): What :meth:`CERPConfig.derived` returned.
        lr (float): The lr of the values.
    """
    return make_optimizer(
        model, lr=lr, weight_decay=derived['weight_decay'],
        threshold_lr=derived['threshold_lr'],
        threshold_weight_decay=derived['threshold_weight_decay'],
        threshold_eps=derived['threshold_eps'])


def _check_data(data: Interactions) -> None:
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


def _check_target_sizes(targets: Tuple[float, ...], size: int,
                        unit: str) -> None:
    # A target below one stored value is only met by an all-zero model.
    for t in targets:
        if t * size < 1:
            raise ValueError(
                f"Memory target {t:g} ({unit!r} unit) allows fewer than one "
                f"stored value ({t:g} x {size} = {t * size:.3g}): only an "
                f"all-zero model reaches it. Use a target of at least "
                f"{1 / size:.3g}, or a larger table.")


class CERPRunner:
    r"""Runs a method of the comparison as resumable :class:`Stage` objects;
    for a pruning method (CERP, its ablations, PEP):

    1. :obj:`'full'`: the full-table baseline for :obj:`baseline_epochs`;
    2. :obj:`'prune'`: phase 1, :math:`\mathcal{L}_{\textrm{BPR}} +
       \gamma_t \mathcal{L}_{\textrm{prune}}` while a
       :class:`PruningScheduler` snapshots the masks at each target; it
       stops once every target is reached or after :obj:`prune_epochs`;
    3. :obj:`'retrain@t'` per reached target: the scheduler freezes the
       snapshot and rewinds the weights (:meth:`PruningScheduler.freeze`,
       lottery ticket), trained for :obj:`retrain_epochs`;
    4. :obj:`'finetune@t'` (if :obj:`finetune_epochs > 0`): the snapshot
       frozen on the model of that step, values kept.

    A fixed method (*e.g.* :obj:`'qr-mul'`) has stage :obj:`'full'` only,
    with the embedding of :obj:`embedding_factory('full')`. Every finished
    stage is evaluated (full ranking). After every epoch a checkpoint (plain
    state dicts, python values, the RNG state, a SHA-256 and the identity
    of the data) is written atomically to :obj:`out_dir/checkpoint.pt`;
    :meth:`run` with :obj:`resume=True` continues bit-identically and
    refuses another configuration, other data or a corrupted file. The
    folder is locked while :meth:`run` writes to it.

    Args:
        config (CERPConfig): The hyper-parameters.
        data (Interactions): The split.
        build_recommender (Callable[[torch.nn.Module], Recommender]): Builds
            the backbone around an embedding (parameters reset).
        make_sampler (Callable[[int], Iterable]): Builds the training
            sampler from a seed (with :obj:`set_epoch`).
        embedding_factory (Callable[[str], torch.nn.Module], optional):
            Builds the embedding of kind :obj:`'full'` or :obj:`'cerp'` (the
            prunable one). (default: from :obj:`method`)
        out_dir (str, optional): Where checkpoints go (:obj:`None`: none).
        log (Callable[[str], None], optional): Where log lines go.
            (default: :obj:`print`)
        progress (bool, optional): Show :obj:`tqdm` progress bars.
            (default: :obj:`False`)
        rank (int, optional): The rank when :obj:`world` is not given; only
            rank 0 logs and writes checkpoints. (default: :obj:`0`)
        data_info (Dict[str, Any], optional): Describes the data in the
            checkpoint (see :func:`data_identity`). (default: :obj:`None`)
        world (pyg_cerp.distributed.DistContext, optional): The ranks
            (:obj:`None`: one process). On :math:`W > 1` ranks the sampler is
            :meth:`shard`-ed, the models :meth:`~Recommender.partition`-ed,
            the scheduler's decisions are rank 0's and rank 0 alone writes
            and reads the checkpoint. (default: :obj:`None`)
        method (str or Method, optional): The method of
            :data:`~pyg_cerp.train.METHODS` (its :obj:`kind` sets the
            stages; :obj:`'magnitude'` is :class:`ConvergedRunner`'s).
            (default: :obj:`'cerp'`)
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
        method: Union[str, Method] = 'cerp',
    ) -> None:
        if not isinstance(config, CERPConfig):
            raise TypeError(f"'config' must be a CERPConfig "
                            f"(got {type(config).__name__})")
        if world is not None and not isinstance(world, DistContext):
            raise TypeError(f"'world' must be a DistContext "
                            f"(got {type(world).__name__})")
        self.method = get_method(method)
        if self.method.kind not in ('fixed', 'threshold'):
            raise ValueError(f"Method {self.method.name!r} ({self.method.kind}"
                             f") is trained by ConvergedRunner")
        if self.method.base is not None and embedding_factory is None:
            raise ValueError(f"Method {self.method.name!r} needs an "
                             f"'embedding_factory' building its "
                             f"HybridEmbedding (the exact ids come from the "
                             f"data, as in ConvergedRunner)")
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

    @property
    def num_entities(self) -> int:
        return self.data.num_users + self.data.num_items

    # Building ################################################################

    def _default_embedding(self, kind: str) -> Module:
        cfg, m, n = self.config, self.method, self.num_entities
        if kind == 'full' and (m.kind != 'fixed' or m.name == 'full'):
            return torch.nn.Embedding(n, cfg.dim)
        if kind == 'cerp' and m.compositional:
            return CompositionalEmbedding(n, cfg.dim,
                                          self.derived['bucket_size'],
                                          threshold_init=cfg.threshold_init,
                                          check_index=False,
                                          precision=cfg.precision)
        if kind not in ('full', 'cerp'):
            raise ValueError(f"Unknown embedding kind {kind!r}")
        return build_embedding(m.name, n, cfg.dim, cfg.targets[0],
                               threshold_init=cfg.threshold_init)

    def _build(self, kind: str, stage_index: int) -> Recommender:
        torch.manual_seed(self.config.seed * 1000 + stage_index)
        model = self.build_recommender(self.embedding_factory(kind))
        return model.partition(self.world) if self.world.is_distributed \
            else model

    def _optimizer(self, model: Module, stage: Union[Stage, str] = 'full'
                   ) -> torch.optim.Optimizer:
        lr = (self.config.prune_schedule()[1] if _kind(stage) == 'prune' else
              self.config.lr)
        return config_optimizer(model, self.derived, lr)

    def _stage_sampler(self, stage: Union[Stage, str]) -> Any:
        r"""Phase 1 draws batches of the phase-1 batch size (a copy of the
        sampler), the other stages of :obj:`batch_size`."""
        size = self.config.prune_schedule()[0]
        if _kind(stage) != 'prune':
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
        cfg, der = self.config, self.derived
        return PruningScheduler(
            model.embedding, cfg.targets, cfg.target_unit, cfg.gamma_init,
            cfg.gamma_decay, cfg.gamma_decay_every, cfg.check_every,
            threshold_drive=cfg.threshold_drive,
            gamma_scale=der['gamma_scale'], reduction=der['reduction'],
            prune_start=cfg.prune_start, onset_quantile=cfg.onset_quantile,
            exact_snapshots=cfg.exact_snapshots,
            gamma_at_onset=cfg.gamma_at_onset, pace_epochs=cfg.pace_epochs,
            thresholds_only=cfg.regularize_thresholds_only)

    def _train_epoch(self, model: Recommender, *args: Any,
                     **kwargs: Any) -> Dict[str, Any]:
        return train_epoch(model, *args, world=self.world, **kwargs)

    def _evaluate(self, model: Recommender) -> Dict[str, float]:
        cfg = self.config
        return evaluate(model, self.data.train, self.data.test, cfg.ks,
                        max_users=cfg.eval_users, seed=cfg.seed,
                        world=self.world)

    # Checkpoints ###########################################################

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
        r"""Writes the checkpoint on rank 0 (see :class:`Checkpoint`)."""
        if self.rank == 0:
            Checkpoint(self.checkpoint_path, self.data_identity,
                       self.config, self.world).save(self.state)

    def load(self) -> bool:
        r"""Loads the checkpoint (see :class:`Checkpoint`); returns whether
        there was one."""
        state = Checkpoint(self.checkpoint_path, self.data_identity,
                           self.config, self.world).load()
        if state is not None:
            self.state = state
        return state is not None

    # Stages ##################################################################

    def stages(self) -> List[Stage]:
        r"""The stages known so far (those after phase 1 once it is done)."""
        cfg = self.config
        plan = [Stage('full', cfg.baseline_epochs)] if \
            cfg.baseline_epochs > 0 else []
        if self.method.kind == 'fixed':
            return plan
        plan.append(Stage('prune', cfg.prune_epochs))
        prune = self.state['prune']
        if prune is not None and prune.get('done'):
            reached = [float(t) for t in prune['reached']]
            for kind, epochs in (('retrain', cfg.retrain_epochs),
                                 ('finetune', cfg.finetune_epochs)):
                if epochs > 0:
                    plan += [Stage(kind, epochs, t) for t in reached]
        return plan

    def _finished(self, stage: Stage) -> bool:
        if stage.kind == 'prune':
            prune = self.state['prune']
            return prune is not None and bool(prune.get('done'))
        return stage.name in self.state['results']

    def run(self, resume: bool = False,
            stop_after: Optional[int] = None) -> Dict[str, Any]:
        r"""Runs (or, with :obj:`resume`, continues) every stage.

        Args:
            resume (bool, optional): Continue from :obj:`out_dir`'s
                checkpoint if there is one. (default: :obj:`False`)
            stop_after (int, optional): Return after this many training
                epochs (the checkpoint allows resuming). (default: :obj:`None`)

        Returns:
            The state: :obj:`'results'` (metrics and memory per finished
            stage), :obj:`'history'` (per epoch), :obj:`'prune'` (the phase-1
            outcome) and :obj:`'finished'`.
        """
        cfg = self.config
        if cfg.target_unit == 'full':
            _check_target_sizes(cfg.targets, self.num_entities * cfg.dim,
                                'full')
        elif (cfg.target_unit == 'meta'
              and self.embedding_factory == self._default_embedding):
            _check_target_sizes(cfg.targets,
                                2 * self.derived['bucket_size'] * cfg.dim,
                                'meta')
        lock = (FolderLock(self.out_dir)
                if self.out_dir is not None and self.rank == 0 else None)
        if lock is not None:
            lock.acquire()
        try:
            return self._run(resume, stop_after)
        finally:
            if lock is not None:
                lock.release()

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
            while index < len(self.stages()):  # Grows after phase 1.
                stage = self.stages()[index]
                if not self._finished(stage):
                    self._run_stage(stage, index)
                index += 1
        except StopRequested:
            self.state['finished'] = False
            return self.state
        self.state['finished'] = True
        self.save()
        return self.state

    def rewind(self, model: Recommender, stage: Stage) -> None:
        r"""Loads phase 1's weights for a :obj:`'retrain'` (the initial
        ones) or :obj:`'finetune'` (those at the target) stage into
        :obj:`model` and freezes the target's snapshot through the
        scheduler (:meth:`PruningScheduler.freeze`).

        Args:
            model (Recommender): A model built for phase 1.
            stage (Stage): The stage.
        """
        prune = self.state['prune']
        scheduler = self._scheduler(model)
        scheduler.load_state_dict(prune['scheduler'])
        if stage.kind == 'finetune':
            model.load_state_dict(prune['target_models'][
                target_key(stage.target)])
        else:
            model.load_state_dict(prune['init_model'])
        scheduler.freeze(stage.target, rewind=stage.kind != 'finetune')

    def _start_prune(self, model: Recommender) -> PruningScheduler:
        scheduler = self._scheduler(model)
        if self.config.target_unit == 'meta':
            _check_target_sizes(self.config.targets,
                                int(model.embedding.num_meta_params), 'meta')
        if self.state['current'] is None:
            prune = self.state['prune'] = dict(
                init_model=copy.deepcopy(model.state_dict()),
                target_models={}, done=False, reached=[])
            for t in sync_scheduler_decisions(  # Met at step 0.
                    scheduler, scheduler.on_train_start(), self.world):
                prune['target_models'][target_key(t)] = copy.deepcopy(
                    model.state_dict())
        return scheduler

    def _run_stage(self, stage: Stage, index: int) -> None:
        cfg, name, epochs = self.config, stage.name, stage.epochs
        model = self._build('full' if stage.kind == 'full' else 'cerp', index)
        scheduler = None
        if stage.kind == 'prune':
            scheduler = self._start_prune(model)
        elif stage.kind != 'full':
            self.rewind(model, stage)
        prune = self.state['prune']
        optimizer = self._optimizer(model, stage)
        sampler = self._stage_sampler(stage)
        epoch = 0
        cur = self.state['current']
        if cur is not None and cur['stage'] == name:
            model.load_state_dict(cur['model'])
            optimizer.load_state_dict(cur['optimizer'])
            if scheduler is not None:
                scheduler.load_state_dict(cur['scheduler'])
            torch.set_rng_state(cur['rng'])
            epoch = int(cur['epoch'])
        else:
            self.state['current'] = None

        def on_reached(targets: List[float]) -> None:
            sd = copy.deepcopy(model.state_dict())
            for t in targets:
                prune['target_models'][target_key(t)] = sd
                self.log(f'  [prune] target {t:g} reached at step '
                         f'{scheduler.num_steps}: '
                         f'{self._memory_line(model.embedding)}')

        start = time.perf_counter()
        while epoch < epochs and not (scheduler is not None and
                                      scheduler.done):
            if self._budget <= 0:
                raise StopRequested
            gamma = scheduler.gamma if scheduler is not None else 0.
            stats = self._train_epoch(
                model, optimizer, sampler, epoch, scheduler=scheduler,
                clip_grad_norm=cfg.clip_grad_norm, l2_reg=cfg.l2_reg,
                on_reached=on_reached if scheduler else None,
                progress=self.progress, desc=f'{name} {epoch + 1}/{epochs}')
            # Before anything is saved: the checkpoint stays finite.
            check_finite_loss(stats['loss'],
                              f"stage '{name}' epoch {epoch + 1}")
            if scheduler is not None:
                new = sync_scheduler_decisions(
                    scheduler, scheduler.on_epoch_end(), self.world)
                if new:
                    on_reached(new)
            epoch += 1
            self._budget -= 1
            self.state['history'].append(dict(
                stage=name, epoch=epoch, loss=stats['loss'],
                bpr=stats['bpr'], reg=stats['reg'], gamma=gamma,
                steps=stats['steps'], time=stats['time'],
                **memory_stats(model.embedding)))
            self.log(f"[{name}] epoch {epoch}/{epochs} loss {stats['loss']:.4f}"
                     f" (bpr {stats['bpr']:.4f}, reg {stats['reg']:.4g}) "
                     f"gamma {gamma:.3g} {self._memory_line(model.embedding)}"
                     f" {stats['time']:.1f}s")
            sched_state = (scheduler.state_dict() if scheduler is not None
                           else None)
            if scheduler is not None:
                prune['scheduler'] = sched_state
            self.state['current'] = dict(
                stage=name, epoch=epoch, model=model.state_dict(),
                optimizer=optimizer.state_dict(), scheduler=sched_state,
                rng=torch.get_rng_state())
            self.save()
        train_time = time.perf_counter() - start
        if scheduler is not None:
            self._end_prune(scheduler)
        else:
            self._finish(stage, model, train_time)

    def _end_prune(self, scheduler: PruningScheduler) -> None:
        outcome = scheduler.check_complete()
        self.log('[prune] ' + outcome.message.replace('\n', '\n[prune] '))
        self.state['prune'].update(
            done=True, reached=list(outcome.reached),
            missing=list(outcome.missing), message=outcome.message,
            scheduler=scheduler.state_dict())
        self.state['current'] = None
        self.save()

    def _finish(self, stage: Stage, model: Recommender,
                train_time: float) -> None:
        mem = memory_stats(model.embedding)
        if mem['nonzero'] == 0:
            warnings.warn(f"Stage '{stage}': the embedding has no non-zero "
                          f"value left, so its metrics only reflect ties",
                          UserWarning, stacklevel=3)
        metrics = self._evaluate(model)
        self.state['results'][stage.name] = dict(
            metrics, **memory_stats(model.embedding), epochs=stage.epochs,
            train_time=train_time)
        self.state['current'] = None
        self.log(f"[{stage}] recall@20 {metrics.get('recall@20', 0):.4f} "
                 f"ndcg@20 {metrics.get('ndcg@20', 0):.4f} "
                 f"{self._memory_line(model.embedding)}")
        self.save()

    @staticmethod
    def _memory_line(embedding: Module) -> str:
        mem = memory_stats(embedding)
        line = f"mem {100 * mem['full_fraction']:.3f}% of full"
        if mem.get('meta_density') is not None:
            line += f" (meta density {mem['meta_density']:.4f})"
        return line

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(method={self.method.name!r}, '
                f'stages={[s.name for s in self.stages()]}, '
                f'out_dir={self.out_dir!r})')


def run_cerp(config: CERPConfig, data: Interactions,
             build_recommender: Callable[[Module], Recommender],
             make_sampler: Callable[[int], Any], out_dir: Optional[str] = None,
             resume: bool = False, stop_after: Optional[int] = None,
             **kwargs: Any) -> Dict[str, Any]:
    r"""Runs :class:`CERPRunner` (:obj:`kwargs` go to its constructor)."""
    return CERPRunner(config, data, build_recommender, make_sampler,
                      out_dir=out_dir, **kwargs).run(resume=resume,
                                                     stop_after=stop_after)
