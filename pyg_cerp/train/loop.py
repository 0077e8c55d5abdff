r"""The training loop: one step, one epoch, evaluation and training to
convergence with early stopping (:func:`fit`), shared by the examples, the
benchmarks, :class:`~pyg_cerp.train.CERPRunner` and
:class:`~pyg_cerp.train.ConvergedRunner`, in one process or on the ranks of a
:class:`~pyg_cerp.distributed.DistContext` (:obj:`world`)."""
import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, \
    Tuple

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer

from pyg_cerp.distributed import (DistContext, all_reduce_gradients,
                                  reduce_metric_sums,
                                  sync_scheduler_decisions)
from pyg_cerp.metrics import ranking_metrics_from_scores
from pyg_cerp.train.checkpoint import Checkpoint, ResumeError
from pyg_cerp.train.distill import RankingDistillation, _check
from pyg_cerp.train.recommender import Recommender
from pyg_cerp.train.scheduler import PruningScheduler
from pyg_cerp.utils.validation import check_finite_loss, check_int

Batch = Tuple[Tensor, Tensor, Tensor]


def split_threshold_params(module: Module) -> Tuple[List, List]:
    r"""Splits the trainable parameters of :obj:`module` into (values,
    thresholds), where thresholds are parameters whose name contains
    :obj:`'threshold'` (the :math:`\mathbf{S}` of CERP/PEP)."""
    values, thresholds = [], []
    for name, param in module.named_parameters():
        (thresholds if 'threshold' in name.split('.')[-1] else
         values).append(param)
    return values, thresholds


def make_optimizer(
    module: Module,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    threshold_lr: Optional[float] = None,
    threshold_weight_decay: Optional[float] = None,
    threshold_eps: Optional[float] = None,
) -> torch.optim.Adam:
    r"""(Fused) Adam with a separate group for the pruning thresholds:
    coupled weight decay on a logit :math:`S` whose task gradient vanishes
    raises it by :math:`\approx` :obj:`threshold_lr` per step whatever the
    decay, so :obj:`threshold_lr` sets the pruning speed.

    Args:
        module (torch.nn.Module): The model.
        lr (float, optional): Learning rate of the values.
            (default: :obj:`1e-3`)
        weight_decay (float, optional): L2 penalty of the values.
            (default: :obj:`1e-5`)
        threshold_lr (float, optional): Learning rate of the thresholds
            (:obj:`None`: :obj:`lr`). (default: :obj:`None`)
        threshold_weight_decay (float, optional): L2 penalty of the
            thresholds (:obj:`None`: :obj:`weight_decay`).
            (default: :obj:`None`)
        threshold_eps (float, optional): Adam :math:`\epsilon` of the
            thresholds (:obj:`None`: Adam's default).
            (default: :obj:`None`)
    """
    values, thresholds = split_threshold_params(module)
    groups: List[Dict[str, Any]] = [dict(params=values)]
    if thresholds:
        groups.append(
            dict(params=thresholds,
                 lr=lr if threshold_lr is None else threshold_lr,
                 weight_decay=(weight_decay if threshold_weight_decay is None
                               else threshold_weight_decay)))
        if threshold_eps is not None:
            groups[-1]['eps'] = float(threshold_eps)
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay,
                            fused=_fused_adam_supported(module))


def _fused_adam_supported(module: Module) -> Optional[bool]:
    r"""Fused Adam (one kernel over all parameters; 4 ms instead of 17 ms
    for a :math:`70{,}839 \times 64` table on 2 CPU cores) where every
    parameter is a floating-point tensor on a device that supports it."""
    params = list(module.parameters())
    ok = bool(params) and all(
        p.is_floating_point() and p.device.type in ('cpu', 'cuda')
        and not p.is_sparse for p in params)
    return True if ok else None


def _device_of(module: Module) -> torch.device:
    for param in module.parameters():
        return param.device
    return torch.device('cpu')


def train_step(
    recommender: Recommender,
    optimizer: Optimizer,
    batch: Batch,
    scheduler: Optional[PruningScheduler] = None,
    clip_grad_norm: Optional[float] = 100.,
    l2_reg: float = 0.,
    world: Optional[DistContext] = None,
    distill: Optional[RankingDistillation] = None,
) -> Dict[str, Any]:
    r"""One optimisation step on :math:`\mathcal{L} = \mathcal{L}_{\textrm{BPR}}
    + \gamma_t \mathcal{L}_{\textrm{prune}}` (the second term only with a
    :obj:`scheduler`, over the entities of the batch, see
    :meth:`Recommender.entities`), plus :math:`\alpha
    \mathcal{L}_{\textrm{KD}}` with a :obj:`distill` term.

    Args:
        recommender (Recommender): The model (in training mode).
        optimizer (torch.optim.Optimizer): The optimiser.
        batch ((torch.Tensor, torch.Tensor, torch.Tensor)): Users
            :obj:`[B]`, positive items :obj:`[B]` and negative items
            :obj:`[B, n]` (local ids).
        scheduler (PruningScheduler, optional): The pruning schedule; its
            :meth:`~PruningScheduler.step` is called after the update.
        clip_grad_norm (float, optional): Clip the gradient norm to this
            value (:obj:`None`: no clipping). (default: :obj:`100.`)
        l2_reg (float, optional): Weight :math:`\lambda` of
            :meth:`Recommender.l2_penalty` added to the loss (LightGCN's
            regulariser on the batch's ego embeddings). (default: :obj:`0.`)
        world (pyg_cerp.distributed.DistContext, optional): The ranks
            (:obj:`None` or one process: this single-process step). On
            :math:`W > 1` ranks, :obj:`batch` is this rank's share
            :math:`\mathcal{B}_r` of the global batch :math:`\mathcal{B}`
            (a :class:`~pyg_cerp.sampling.ShardedBatch`) and rank :math:`r`
            back-propagates its part of the global loss,

            .. math::
                \mathcal{L}_r = \frac{|\mathcal{B}_r|}{|\mathcal{B}|}
                (\mathcal{L}_{\textrm{BPR}}(\mathcal{B}_r) + \lambda
                \mathcal{L}_{2}(\mathcal{B}_r)) + s_r \gamma_t
                \mathcal{L}_{\textrm{prune}}(\mathcal{E}_r),

            with :math:`\mathcal{E}_r` its strided share of the global
            batch's entities and :math:`s_r` such that :math:`\sum_r
            \mathcal{L}_r = \mathcal{L}`; the gradients are summed over the
            ranks (:func:`~pyg_cerp.distributed.all_reduce_gradients`) and
            the scheduler's decisions are rank 0's. (default: :obj:`None`)
        distill (RankingDistillation, optional): Adds the ranking
            distillation term of a frozen teacher, computed from the same
            student scores as BPR (one process only; :obj:`None` or weight
            :obj:`0`: the step without it). (default: :obj:`None`)

    Returns:
        :obj:`'loss'`, :obj:`'bpr'`, :obj:`'reg'` (detached scalars; this
        rank's part on :math:`W > 1` ranks), :obj:`'reached'` (targets) and,
        with an active :obj:`distill`, :obj:`'distill'`.
    """
    distributed = world is not None and world.is_distributed
    distill = _check(distill)
    if distill is not None and distributed:
        raise ValueError("'distill' is not supported on several ranks")
    device = _device_of(recommender)
    users, pos, neg = (t.to(device, non_blocking=True) for t in batch)
    if neg.dim() == 1:
        neg = neg.unsqueeze(-1)
    kd = None
    if distill is not None:
        bpr, kd = distill.bpr_and_distill(recommender, users, pos, neg)
    else:
        bpr = recommender.loss(users, pos, neg)
    loss, share = (bpr if kd is None else bpr + kd), 1.
    if distributed:  # This rank's part of the global loss.
        full = getattr(batch, 'global_batch', None)
        n = (full[0].numel() if full is not None else
             world.global_count(users.numel()))
        share = users.numel() / n
        if users.numel() == 0:  # Still runs the collective propagation.
            bpr = bpr.nan_to_num(0.) * 0.
        bpr = share * bpr
        loss = bpr
    if l2_reg and (users.numel() or not distributed):
        loss = loss + share * l2_reg * recommender.l2_penalty(users, pos, neg)
    reg = None
    if scheduler is not None and distributed:
        index, scale = _regularizer_share(recommender, scheduler, full,
                                          (users, pos, neg), world)
        reg = scheduler.regularizer(index) if index.numel() else None
        reg = None if reg is None else reg * scale
    elif scheduler is not None:
        reg = scheduler.regularizer(recommender.entities(users, pos, neg))
    if reg is not None:
        loss = loss + reg
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if distributed:
        all_reduce_gradients(recommender.parameters(), world)
    if clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(recommender.parameters(),
                                       clip_grad_norm, foreach=True)
    optimizer.step()
    reached = scheduler.step() if scheduler is not None else []
    if scheduler is not None and distributed:
        reached = sync_scheduler_decisions(scheduler, reached, world)
    out = dict(loss=loss.detach(), bpr=bpr.detach(),
               reg=torch.zeros_like(bpr.detach()) if reg is None else
               reg.detach(), reached=reached)
    if kd is not None:
        out['distill'] = kd.detach()
    return out


def _regularizer_share(recommender: Recommender,
                       scheduler: PruningScheduler, full: Optional[Batch],
                       local: Batch, world: DistContext) -> Tuple[Tensor,
                                                                   float]:
    # The entities on which this rank computes the regulariser and its
    # weight, so that the ranks' terms sum to the single-process one: its
    # strided share of the global batch's entities (users deduplicated over
    # the global batch), weighted by its fraction for a mean; for a sum with
    # a threshold drive (a parameter-only term), every rank takes all
    # entities with weight 1 / W. Without the global batch (an epoch-sharded
    # sampler), this rank's own entities stand for its share.
    if full is not None:
        entities = recommender.entities(*(t.to(local[0].device)
                                          for t in full))
        index = world.shard(entities)
    else:
        entities = index = recommender.entities(*local)
        num = world.global_count(index.numel())
        return index, (index.numel() / num
                       if scheduler.reduction == 'mean' else 1.)
    if scheduler.reduction == 'mean':
        return index, index.numel() / entities.numel()
    if not scheduler.threshold_drive:
        return index, 1.
    return entities, 1. / world.world_size


def train_epoch(
    recommender: Recommender,
    optimizer: Optimizer,
    sampler: Iterable[Batch],
    epoch: int,
    scheduler: Optional[PruningScheduler] = None,
    clip_grad_norm: Optional[float] = 100.,
    stop_when_done: bool = True,
    on_reached: Optional[Callable[[List[float]], None]] = None,
    progress: bool = False,
    desc: str = '',
    step_fn: Optional[Callable[..., Dict[str, Any]]] = None,
    l2_reg: float = 0.,
    world: Optional[DistContext] = None,
    distill: Optional[RankingDistillation] = None,
) -> Dict[str, Any]:
    r"""Trains one epoch over :obj:`sampler` (told the epoch through
    :obj:`set_epoch`, if it has it).

    Args:
        recommender (Recommender): The model.
        optimizer (torch.optim.Optimizer): The optimiser.
        sampler (Iterable): Yields :obj:`(users, pos, neg)` batches.
        epoch (int): The epoch number (passed to :obj:`sampler.set_epoch`).
        scheduler (PruningScheduler, optional): Phase 1's schedule (its
            :meth:`on_epoch_end` is the caller's). (default: :obj:`None`)
        clip_grad_norm (float, optional): See :func:`train_step`.
        stop_when_done (bool, optional): Stop the epoch as soon as the
            scheduler reports every target reached. (default: :obj:`True`)
        on_reached (Callable, optional): Called with the targets reached at
            a step, right after it. (default: :obj:`None`)
        progress (bool, optional): Show a :obj:`tqdm` progress bar.
        desc (str, optional): The progress bar description.
        step_fn (Callable, optional): Replaces :func:`train_step` (same
            signature). (default: :obj:`None`)
        l2_reg (float, optional): See :func:`train_step` (passed to the step
            only when non-zero). (default: :obj:`0.`)
        world (pyg_cerp.distributed.DistContext, optional): The ranks (see
            :func:`train_step`); the sampler yields this rank's shares and
            the returned losses are global. (default: :obj:`None`)
        distill (RankingDistillation, optional): See :func:`train_step`
            (passed to the step only when given). (default: :obj:`None`)

    Returns:
        The mean :obj:`'loss'`, :obj:`'bpr'`, :obj:`'reg'` (and with an
        active :obj:`distill`, :obj:`'distill'`) over the steps,
        :obj:`'steps'`, :obj:`'time'` (seconds), :obj:`'reached'` and
        :obj:`'stopped_early'`.
    """
    if hasattr(sampler, 'set_epoch'):
        sampler.set_epoch(epoch)
    recommender.train()
    iterator = sampler
    bar = None
    if progress:
        from tqdm.auto import tqdm
        total = len(sampler) if hasattr(sampler, '__len__') else None
        iterator = bar = tqdm(sampler, total=total, desc=desc, leave=False,
                              dynamic_ncols=True)
    sums: Dict[str, Any] = dict(loss=0., bpr=0., reg=0.)
    if _check(distill) is not None:
        sums['distill'] = 0.
    distributed = world is not None and world.is_distributed
    steps, reached, stopped = 0, [], False
    start = time.perf_counter()
    for batch in iterator:
        extra: Dict[str, Any] = dict(l2_reg=l2_reg) if l2_reg else {}
        if distributed:
            extra['world'] = world
        if distill is not None:
            extra['distill'] = distill
        out = (step_fn or train_step)(recommender, optimizer, batch,
                                      scheduler, clip_grad_norm, **extra)
        steps += 1
        for key in sums:  # Tensors: summed on the device, read once.
            sums[key] = sums[key] + out[key]
        if out['reached']:
            reached.extend(out['reached'])
            if on_reached is not None:
                on_reached(out['reached'])
        if bar is not None and steps % 20 == 1:
            bar.set_postfix(loss=f"{float(out['loss']):.4f}", refresh=False)
        if stop_when_done and scheduler is not None and scheduler.done:
            stopped = True
            break
    if bar is not None:
        bar.close()
    if distributed:  # The ranks' parts of the losses add up.
        total = world.all_reduce(torch.tensor(
            [float(sums[k]) for k in sums], dtype=torch.float64,
            device=world.device))
        sums = dict(zip(sums, total.tolist()))
    stats: Dict[str, Any] = {
        k: float(v) / max(steps, 1)
        for k, v in sums.items()
    }
    stats.update(steps=steps, time=time.perf_counter() - start,
                 reached=reached, stopped_early=stopped)
    return stats


def sample_eval_users(train_edge_index: Tensor, test_edge_index: Tensor,
                      num_users: int, max_users: Optional[int],
                      seed: int = 0) -> Tuple[Tensor, Tensor]:
    r"""Keeps the edges of a seeded random sample of :obj:`max_users` users
    (all users if :obj:`max_users` is :obj:`None` or not smaller than
    :obj:`num_users`). Users outside the sample lose their edges, so the
    metrics skip them as users without test items. The single-process and
    the sharded evaluation draw the same sample.

    Args:
        train_edge_index (torch.Tensor): Training (user, item) pairs.
        test_edge_index (torch.Tensor): Test (user, item) pairs.
        num_users (int): :math:`N_U`.
        max_users (int, optional): The sample size.
        seed (int, optional): The seed of the sample. (default: :obj:`0`)
    """
    if max_users is None or max_users >= num_users:
        return train_edge_index, test_edge_index
    gen = torch.Generator().manual_seed(seed)
    keep = torch.zeros(num_users, dtype=torch.bool)
    keep[torch.randperm(num_users, generator=gen)[:max_users]] = True
    return (train_edge_index[:, keep[train_edge_index[0]]],
            test_edge_index[:, keep[test_edge_index[0]]])


@torch.no_grad()
def evaluate(
    recommender: Recommender,
    train_edge_index: Tensor,
    test_edge_index: Tensor,
    ks: Sequence[int] = (5, 10, 20, 50),
    max_users: Optional[int] = None,
    seed: int = 0,
    world: Optional[DistContext] = None,
) -> Dict[str, float]:
    r"""Full-ranking evaluation: Recall@k and NDCG@k over every item, with the
    training positives of each user masked, averaged over the users with test
    items (see :mod:`pyg_cerp.metrics`).

    Args:
        recommender (Recommender): The model.
        train_edge_index (torch.Tensor): Training (user, item) pairs
            :obj:`[2, E]`, masked from the ranking.
        test_edge_index (torch.Tensor): Test pairs :obj:`[2, E']`.
        ks (Sequence[int], optional): The cut-offs.
            (default: :obj:`(5, 10, 20, 50)`)
        max_users (int, optional): Evaluate a seeded random sample of this
            many users only (for scorers whose full ranking is too expensive,
            *e.g.*, an MLP on a CPU). (default: :obj:`None`: all users)
        seed (int, optional): The seed of that sample. (default: :obj:`0`)
        world (pyg_cerp.distributed.DistContext, optional): The ranks: rank
            :math:`r` ranks the items for the users :math:`r, r + W, \ldots`
            and the per-user metric sums and counts are all-reduced in
            float64, so every rank returns the single-process metrics (up to
            summation order). (default: :obj:`None`: one process)
    """
    train_edge_index, test_edge_index = sample_eval_users(
        train_edge_index, test_edge_index, recommender.num_users, max_users,
        seed)
    distributed = world is not None and world.is_distributed
    was_training = recommender.training
    recommender.eval()
    try:
        scores = recommender.score_function()
        device = _device_of(recommender)

        def score_fn(users: Tensor) -> Tensor:
            # The evaluator's user ids live on the CPU; the model may not.
            return scores(users.to(device))

        out = ranking_metrics_from_scores(
            score_fn, recommender.num_users, recommender.num_items,
            train_edge_index, test_edge_index, ks=tuple(ks),
            **(dict(user_ids=world.shard(recommender.num_users),
                    return_sums=True) if distributed else {}))
        if distributed:
            return reduce_metric_sums(out, out.pop('num_users'), world)
        return {key: float(value) for key, value in out.items()}
    finally:
        recommender.train(was_training)


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
        desc: str = '', l2_reg: float = 0.,
        distill: Optional[RankingDistillation] = None,
        checkpoint: Optional[Checkpoint] = None) -> FitResult:
    r"""Trains :obj:`recommender` until :obj:`stopping` says so and loads
    the state of its best validation epoch back into it (the model before
    any training counts as epoch 0).

    With a :obj:`checkpoint`, the progress (model, optimiser, the best
    state so far, the counters and the distillation term's random state) is
    saved at every validation and, when the file exists, resumed from it: a
    run killed and started again ends as the uninterrupted one would (the
    sampler's batches depend on the epoch only), repeating at most the
    epochs since the last validation; a finished fit returns at once.

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
        distill (RankingDistillation, optional): The ranking distillation
            term of every step (see :func:`~pyg_cerp.train.train_step`).
            (default: :obj:`None`)
        checkpoint (Checkpoint, optional): Where the progress is saved and
            resumed from (tied to the data and the configuration).
            (default: :obj:`None`)
    """
    extra = {} if distill is None else dict(distill=distill)
    saved = None if checkpoint is None else checkpoint.load()
    if saved is None:
        best = float(validate(recommender)[stopping.metric])
        best_state = copy.deepcopy(recommender.state_dict())
        best_epoch, bad, epoch, spent = 0, 0, 0, 0.
        history: List[Dict[str, float]] = []
    else:
        progress = saved['fit']
        if (progress['generator'] is None) != (distill is None):
            saved_with = 'with' if distill is None else 'without'
            raise ResumeError(
                f"Cannot resume from '{checkpoint.path}': it was saved "
                f"{saved_with} a distillation term")
        recommender.load_state_dict(progress['model'])
        optimizer.load_state_dict(progress['optimizer'])
        if distill is not None:
            distill.generator.set_state(progress['generator'])
        best_state, history = progress['best_state'], progress['history']
        best, best_epoch, bad, epoch, spent = (
            progress[k] for k in ('best', 'best_epoch', 'bad', 'epoch',
                                  'seconds'))
        log(f'{desc}: resumed at epoch {epoch} from {checkpoint.path}')
    start = time.perf_counter()
    while epoch < stopping.max_epochs and bad < stopping.patience:
        stats = train_epoch(recommender, optimizer, sampler, epoch,
                            clip_grad_norm=clip_grad_norm, l2_reg=l2_reg,
                            **extra)
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
        if checkpoint is not None:
            checkpoint.save(dict(
                data=checkpoint.data, config=checkpoint.config.to_dict(),
                fit=dict(model=recommender.state_dict(),
                         optimizer=optimizer.state_dict(),
                         generator=(None if distill is None else
                                    distill.generator.get_state()),
                         best_state=best_state, history=history, best=best,
                         best_epoch=best_epoch, bad=bad, epoch=epoch,
                         seconds=spent + time.perf_counter() - start)))
    recommender.load_state_dict(best_state)
    return FitResult(best_epoch, best, epoch,
                     spent + time.perf_counter() - start, history)
