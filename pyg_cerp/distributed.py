r"""Data-parallel CERP training on :mod:`torch.distributed`.

The building blocks to run a CERP training loop under
``torchrun --nproc_per_node=N`` (one machine) or
``torchrun --nnodes=M --rdzv-endpoint=HOST:PORT`` (several machines) with
:class:`~torch.nn.parallel.DistributedDataParallel` (DDP):

* :func:`init_distributed` reads torchrun's environment, picks the backend
  (:obj:`"nccl"` with CUDA, :obj:`"gloo"` otherwise), sets a collective
  timeout (a crashed or hung rank makes the job fail instead of hang) and
  returns a :class:`DistContext`. Without torchrun it returns a
  single-process context, so the same code path runs both ways.
* :class:`LossModule` puts the *whole* loss (BPR + :math:`\gamma` times the
  pruning loss) into one :meth:`forward`, so that DDP sees every use of the
  parameters (PyG's :class:`~torch_geometric.nn.models.LightGCN` reads
  :obj:`embedding.weight` outside its own :meth:`forward`).
  :meth:`DistContext.wrap` wraps it in DDP (rebuild it after
  :meth:`~pyg_cerp.nn.CompositionalEmbedding.freeze_masks`, when the
  thresholds stop being trainable).
* :meth:`DistContext.loss_scale` makes the averaged gradient equal to the
  gradient of the *global* batch mean, also when the ranks' shards of a batch
  have different sizes.
* :meth:`DistContext.broadcast_object` / :func:`sync_state` hand rank 0's
  decisions (pruning scheduler: :math:`\gamma`, mask snapshots, stop) to every
  rank.
* :meth:`DistContext.shard` / :meth:`DistContext.all_reduce` shard the
  evaluation by users and sum per-user metric sums and counts.
* :func:`allreduce_bytes_per_step` reports the bytes DDP all-reduces per
  step.

Put together for the training pipeline of :mod:`pyg_cerp.train`:

* :class:`ShardedBPRSampler` gives every rank its strided slice of each
  *global* batch of the single-process
  :class:`~pyg_cerp.sampling.BPRSampler` (exactly the single-process
  triples over all ranks);
* :class:`DDPTrainStep` is the data-parallel
  :func:`~pyg_cerp.train.train_step` (whole loss in the DDP forward, exact
  global-batch gradient, rank 0's scheduler decisions);
* :func:`sharded_evaluate` is the data-parallel
  :func:`~pyg_cerp.train.evaluate`;
* :class:`DistributedCERPRunner` is :class:`~pyg_cerp.train.CERPRunner` on
  all of these (rank 0 writes checkpoints and results), used by
  ``examples/lightgcn_cerp.py`` and ``examples/mlp_cerp.py`` when launched
  with torchrun. See ``docs/distributed.md``.
"""
import datetime
import gc
import inspect
import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn import Module
from torch.nn.parallel import DistributedDataParallel

from pyg_cerp.train.cerp import CERPRunner

# A global step counter for fault injection, and the number of scheduler
# states overridden by rank 0's (for tests).
_STEP_COUNTER = itertools.count()
_NUM_SYNCS = [0]

_DDP_HAS_FORWARD_SYNC_BUFFERS = 'forward_sync_buffers' in inspect.signature(
    DistributedDataParallel.__init__).parameters

#: The environment variable read for the collective timeout (in seconds)
#: when :func:`init_distributed` gets no :obj:`timeout`.
TIMEOUT_ENV = 'PYG_CERP_DIST_TIMEOUT'
#: The default collective timeout (in seconds).
DEFAULT_TIMEOUT = 300.

#: Fault injection for tests: the rank that fails ...
FAULT_RANK_ENV = 'PYG_CERP_FAULT_RANK'
#: ... at this global training step (default 0, the first step).
FAULT_STEP_ENV = 'PYG_CERP_FAULT_STEP'
#: ... and how: :obj:`"raise"` (an exception, default), :obj:`"exit"`
#: (:func:`os._exit`, no clean-up) or :obj:`"hang"` (sleeps forever: the other
#: ranks must time out).
FAULT_MODE_ENV = 'PYG_CERP_FAULT_MODE'


def allreduce_bytes_per_step(module: Module) -> Dict[str, int]:
    r"""The gradient bytes DDP all-reduces per optimisation step for
    :obj:`module`, as measured by DDP's reducer (the sum of its gradient
    bucket sizes, available after the first backward pass) and as expected
    (the number of trainable parameters times their element size). Both are
    per rank and per step; a ring all-reduce sends about twice that over
    each rank's link.

    Returns a dictionary with :obj:`'measured'` (:obj:`-1` if :obj:`module`
    is not a DDP module or DDP does not report it), :obj:`'expected'`,
    :obj:`'num_params'` and :obj:`'num_buckets'`.

    Args:
        module (torch.nn.Module): The (possibly DDP-wrapped) module.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    out = {
        'expected': sum(p.numel() * p.element_size() for p in params),
        'num_params': sum(p.numel() for p in params),
        'measured': -1,
        'num_buckets': -1,
    }
    if isinstance(module, DistributedDataParallel):
        try:  # private, but stable since torch 1.9
            data = module._get_ddp_logging_data()
            sizes = [int(x) for x in
                     str(data.get('bucket_sizes', '')).split(',') if x]
            if sizes:
                out['measured'] = sum(sizes)
                out['num_buckets'] = len(sizes)
        except Exception:  # pragma: no cover
            pass
    return out


class LossModule(Module):
    r"""Wraps a model and a loss function into one module whose
    :meth:`forward` returns the loss, so that
    :class:`~torch.nn.parallel.DistributedDataParallel` sees every parameter
    use of the step in its :meth:`forward` (CERP's loss reads
    :obj:`model.embedding` outside :obj:`model.forward`, both in PyG's
    :meth:`LightGCN.recommendation_loss` and in the pruning loss).

    .. code-block:: python

        def bpr_cerp_loss(model, edge_index, user, pos, neg, gamma):
            ...  # BPR loss + gamma * model.embedding.pruning_loss(ids)
            return loss

        module = ctx.wrap(LossModule(model, bpr_cerp_loss))
        loss = module(edge_index, user, pos, neg, gamma=gamma)
        loss.backward()  # gradients averaged over ranks

    Args:
        model (torch.nn.Module): The model holding all trainable parameters.
        loss_fn (Callable): :obj:`loss_fn(model, *args, **kwargs)` returning a
            scalar loss.
    """
    def __init__(self, model: Module,
                 loss_fn: Callable[..., Tensor]) -> None:
        super().__init__()
        if not callable(loss_fn):
            raise TypeError(f"'loss_fn' must be callable "
                            f"(got {type(loss_fn).__name__})")
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        r"""Returns :obj:`loss_fn(model, *args, **kwargs)`."""
        return self.loss_fn(self.model, *args, **kwargs)


@dataclass
class DistContext:
    r"""Where this process stands in a (possibly single-process) job, with
    the collectives a data-parallel CERP loop needs. Every method also works
    when :obj:`world_size == 1` (without any process group): it then does
    nothing or returns its input, so one code path serves both cases.

    Create it with :func:`init_distributed`.

    Args:
        rank (int): The global rank. (default: :obj:`0`)
        world_size (int): The number of processes. (default: :obj:`1`)
        local_rank (int): The rank on this machine. (default: :obj:`0`)
        device (torch.device): The device of this process.
            (default: :obj:`cpu`)
        backend (str, optional): The process-group backend, :obj:`None`
            without process group. (default: :obj:`None`)
    """
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device('cpu'))
    backend: Optional[str] = None

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"'world_size' must be positive "
                             f"(got {self.world_size})")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"'rank' must be in [0, {self.world_size}) "
                             f"(got {self.rank})")
        if self.world_size > 1 and self.backend is None:
            raise ValueError("A context with 'world_size' > 1 needs a "
                             "'backend' (use 'init_distributed()')")

    # Properties ##############################################################

    @property
    def is_distributed(self) -> bool:
        r"""Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        r"""Whether this is rank 0, the only rank that writes checkpoints,
        results and logs."""
        return self.rank == 0

    # Collectives #############################################################

    def barrier(self) -> None:
        r"""Waits for every rank."""
        if self.is_distributed:
            dist.barrier()

    def all_reduce(self, tensor: Tensor, op: str = 'sum') -> Tensor:
        r"""All-reduces :obj:`tensor` in place over every rank and returns it.

        Args:
            tensor (torch.Tensor): The tensor (on :attr:`device` for NCCL).
            op (str, optional): :obj:`"sum"`, :obj:`"max"` or :obj:`"min"`.
                (default: :obj:`"sum"`)
        """
        ops = {'sum': dist.ReduceOp.SUM, 'max': dist.ReduceOp.MAX,
               'min': dist.ReduceOp.MIN}
        if op not in ops:
            raise ValueError(f"'op' must be one of {sorted(ops)} "
                             f"(got {op!r})")
        if self.is_distributed:
            dist.all_reduce(tensor, op=ops[op])
        return tensor

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        r"""Returns rank :obj:`src`'s :obj:`obj` on every rank (pickled;
        tensors come back on CPU, or on :attr:`device` with NCCL).

        Args:
            obj (Any): The object (only rank :obj:`src`'s is used).
            src (int, optional): The source rank. (default: :obj:`0`)
        """
        if not self.is_distributed:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src,
                                   device=self._object_device())
        return box[0]

    def _object_device(self) -> Optional[torch.device]:
        return self.device if self.backend == 'nccl' else None

    def all_equal(self, value: Union[int, float, Tensor]) -> bool:
        r"""Whether :obj:`value` (a number or tensor of the same shape on
        every rank) is identical on every rank. For checks and tests."""
        t = torch.as_tensor(value, device=self.device).double().flatten()
        hi, lo = t.clone(), t.clone()
        self.all_reduce(hi, 'max')
        self.all_reduce(lo, 'min')
        return bool(torch.equal(hi, lo))

    # Sharding ################################################################

    def shard(self, n_or_index: Union[int, Tensor]) -> Tensor:
        r"""This rank's strided shard :obj:`index[rank::world_size]` of
        :obj:`index` (or of :obj:`arange(n)` for an int), *e.g.*, the users
        this rank evaluates. The shards of all ranks are disjoint and cover
        the input.

        Args:
            n_or_index (int or torch.Tensor): The number of items or an index
                vector.
        """
        if isinstance(n_or_index, Tensor):
            return n_or_index[self.rank::self.world_size]
        return torch.arange(self.rank, int(n_or_index), self.world_size)

    def global_count(self, local_count: int) -> int:
        r"""The sum of :obj:`local_count` over every rank.

        Args:
            local_count (int): This rank's count.
        """
        if not self.is_distributed:
            return int(local_count)
        t = torch.tensor([int(local_count)], dtype=torch.long,
                         device=self.device)
        return int(self.all_reduce(t))

    def loss_scale(self, local_count: int,
                   global_count: Optional[int] = None) -> float:
        r"""The factor :math:`W n_r / n` to multiply rank :math:`r`'s
        *mean* loss over its :math:`n_r` examples with, so that DDP's average
        of the gradients over the :math:`W` ranks equals the gradient of the
        mean over all :math:`n = \sum_r n_r` examples of the global batch
        (the single-process gradient). It is :obj:`1.` when the shards have
        equal size.

        Args:
            local_count (int): This rank's number of examples :math:`n_r`.
            global_count (int, optional): :math:`n`, if known (saves one
                scalar all-reduce). (default: :obj:`None`)
        """
        if not self.is_distributed:
            return 1.
        n = self.global_count(local_count) if global_count is None \
            else int(global_count)
        if n <= 0:
            raise ValueError(f"The global batch is empty (got {n} examples)")
        return self.world_size * local_count / n

    # Models ##################################################################

    def wrap(
        self,
        module: Module,
        find_unused_parameters: bool = False,
        **kwargs: Any,
    ) -> Module:
        r"""Moves :obj:`module` to :attr:`device` and wraps it in
        :class:`~torch.nn.parallel.DistributedDataParallel` (returns it
        unwrapped for a single process). Construction broadcasts rank 0's
        parameters and buffers (including CERP's masks) to every rank.

        Call it again after the set of trainable parameters changed (after
        :meth:`~pyg_cerp.nn.CompositionalEmbedding.freeze_masks`, which
        freezes the thresholds): DDP fixes its gradient buckets at
        construction.

        Args:
            module (torch.nn.Module): Typically a :class:`LossModule`.
            find_unused_parameters (bool, optional): See DDP; not needed when
                every trainable parameter gets a gradient in every step (true
                for CERP in both phases). (default: :obj:`False`)
            **kwargs (optional): Further DDP arguments. Buffers are synced
                at construction but not re-broadcast on every forward
                (:obj:`forward_sync_buffers=False`, or
                :obj:`broadcast_buffers=False` before torch 2.13): CERP's
                buffers only change at the phase switch, which rebuilds the
                wrapper.
        """
        module = module.to(self.device)
        if not self.is_distributed:
            return module
        if 'broadcast_buffers' not in kwargs:
            if _DDP_HAS_FORWARD_SYNC_BUFFERS:  # torch >= 2.13
                kwargs.setdefault('forward_sync_buffers', False)
            else:
                kwargs['broadcast_buffers'] = False
        if self.device.type == 'cuda':
            kwargs.setdefault('device_ids', [self.device])
            kwargs.setdefault('output_device', self.device)
        ddp = DistributedDataParallel(
            module, find_unused_parameters=find_unused_parameters, **kwargs)
        return ddp

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(rank={self.rank}, '
                f'world_size={self.world_size}, '
                f'local_rank={self.local_rank}, device={self.device}, '
                f'backend={self.backend})')


def unwrap(module: Module) -> Module:
    r"""Returns the module inside a DDP wrapper and/or :class:`LossModule`
    (the model itself), or :obj:`module` unchanged.

    Args:
        module (torch.nn.Module): A possibly wrapped module.
    """
    if isinstance(module, DistributedDataParallel):
        module = module.module
    if isinstance(module, LossModule):
        module = module.model
    return module


def _env_int(name: str, default: Optional[int] = None) -> Optional[int]:
    value = os.environ.get(name)
    if value is None or value == '':
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"Environment variable {name}={value!r} is not an "
                         f"integer") from None


def init_distributed(
    backend: Optional[str] = None,
    timeout: Optional[Union[float, datetime.timedelta]] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> DistContext:
    r"""Joins the process group started by :obj:`torchrun` (read from the
    environment variables :obj:`RANK`, :obj:`WORLD_SIZE`, :obj:`LOCAL_RANK`,
    :obj:`MASTER_ADDR`, :obj:`MASTER_PORT`) and returns its
    :class:`DistContext`. Without these variables (a plain :obj:`python`
    run), or with :obj:`WORLD_SIZE=1`, returns a single-process context
    without process group.

    Args:
        backend (str, optional): :obj:`"gloo"` or :obj:`"nccl"`. If
            :obj:`None`, :obj:`"nccl"` when CUDA is available and
            :obj:`"gloo"` otherwise. (default: :obj:`None`)
        timeout (float or datetime.timedelta, optional): How long a
            collective waits for the other ranks before it fails (seconds),
            so that a crashed or hung rank makes the job exit with an error
            instead of hanging. If :obj:`None`, the environment variable
            :obj:`PYG_CERP_DIST_TIMEOUT` or :obj:`300` seconds.
            (default: :obj:`None`)
        device (str or torch.device, optional): This process's device. If
            :obj:`None`, :obj:`cuda:LOCAL_RANK` for NCCL and :obj:`cpu`
            otherwise. (default: :obj:`None`)
    """
    world_size = _env_int('WORLD_SIZE', 1)
    rank = _env_int('RANK', 0)
    local_rank = _env_int('LOCAL_RANK', 0)
    if backend is None:
        backend = 'nccl' if torch.cuda.is_available() else 'gloo'
    if backend not in ('gloo', 'nccl'):
        raise ValueError(f"'backend' must be 'gloo' or 'nccl' "
                         f"(got {backend!r})")
    if backend == 'nccl' and not torch.cuda.is_available():
        raise RuntimeError("Backend 'nccl' needs CUDA; use 'gloo' on CPU")
    if device is None:
        device = (torch.device('cuda', local_rank)
                  if backend == 'nccl' else torch.device('cpu'))
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.set_device(device)

    if world_size <= 1:
        return DistContext(0, 1, 0, device, None)

    if timeout is None:
        timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
    if not isinstance(timeout, datetime.timedelta):
        if timeout <= 0:
            raise ValueError(f"'timeout' must be positive (got {timeout})")
        timeout = datetime.timedelta(seconds=float(timeout))
    for name in ('MASTER_ADDR', 'MASTER_PORT'):
        if name not in os.environ:
            raise RuntimeError(
                f"WORLD_SIZE={world_size} but {name} is not set: launch with "
                f"'torchrun --nproc_per_node=N ...' (see docs/distributed.md)")
    if backend == 'nccl':
        # Surface NCCL errors/timeouts as exceptions that end the process
        # instead of a silent hang.
        os.environ.setdefault('TORCH_NCCL_ASYNC_ERROR_HANDLING', '1')
    if not dist.is_initialized():
        extra: Dict[str, Any] = {}
        if backend == 'nccl':
            extra['device_id'] = device
        dist.init_process_group(backend=backend, timeout=timeout,
                                rank=rank, world_size=world_size, **extra)
    return DistContext(rank, world_size, local_rank, device, backend)


def destroy_distributed(ctx: Optional[DistContext] = None) -> None:
    r"""Destroys the process group, if any (call at the end of a run).

    Args:
        ctx (DistContext, optional): Unused; for symmetry with
            :func:`init_distributed`. (default: :obj:`None`)
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    # Gloo's worker threads release the tensors of the last collective after
    # it completed; when such a tensor is owned by Python, that needs the
    # GIL, which the process-group destructor holds while it joins them:
    # an intermittent deadlock (pytorch/pytorch#75097, #56297). A barrier
    # (no Python tensors, waited on with the GIL released) lets them finish.
    try:
        dist.barrier()
    except Exception:  # a broken group must still be destroyed
        pass
    gc.collect()
    dist.destroy_process_group()


def sync_state(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    r"""Makes :obj:`obj`'s state on every rank equal to rank :obj:`src`'s,
    through its :meth:`state_dict`/:meth:`load_state_dict` (*e.g.*, the
    pruning scheduler after its per-epoch update, so that :math:`\gamma`, the
    mask snapshots and the stop decision are rank 0's on every rank).
    Returns :obj:`obj`.

    Args:
        obj (Any): An object with :meth:`state_dict` and
            :meth:`load_state_dict`.
        ctx (DistContext): The context.
        src (int, optional): The rank whose state wins. (default: :obj:`0`)
    """
    if not ctx.is_distributed:
        return obj
    for name in ('state_dict', 'load_state_dict'):
        if not callable(getattr(obj, name, None)):
            raise TypeError(f"'{type(obj).__name__}' has no '{name}()'")
    state = ctx.broadcast_object(obj.state_dict() if ctx.rank == src else
                                 None, src=src)
    if ctx.rank != src:
        obj.load_state_dict(state)
    return obj


@torch.no_grad()
def parameters_in_sync(module: Module, ctx: DistContext) -> bool:
    r"""Whether every parameter and buffer of :obj:`module` is bitwise equal
    on every rank (a check for tests and debugging; costs two all-reduces of
    the model size).

    Args:
        module (torch.nn.Module): The (possibly wrapped) model.
        ctx (DistContext): The context.
    """
    if not ctx.is_distributed:
        return True
    tensors = [t.detach().reshape(-1).double() for t in
               list(unwrap(module).parameters()) +
               list(unwrap(module).buffers())]
    if not tensors:
        return True
    return ctx.all_equal(torch.cat(tensors))


def maybe_inject_fault(ctx: DistContext, step: int) -> None:
    r"""Fails on purpose if :obj:`PYG_CERP_FAULT_RANK` names this rank and
    :obj:`step` equals :obj:`PYG_CERP_FAULT_STEP` (default :obj:`0`): a
    test hook to check that a crashed rank makes the whole job fail cleanly.
    :obj:`PYG_CERP_FAULT_MODE` picks :obj:`"raise"` (default),
    :obj:`"exit"` or :obj:`"hang"`. Does nothing when the variables are unset.

    Args:
        ctx (DistContext): The context.
        step (int): The global step counter of the caller.
    """
    fault_rank = _env_int(FAULT_RANK_ENV)
    if fault_rank is None or fault_rank != ctx.rank:
        return
    if step != _env_int(FAULT_STEP_ENV, 0):
        return
    mode = os.environ.get(FAULT_MODE_ENV, 'raise')
    if mode == 'exit':
        os._exit(17)
    if mode == 'hang':
        import time
        while True:
            time.sleep(3600)
    raise RuntimeError(f'Injected fault on rank {ctx.rank} at step {step} '
                       f'({FAULT_RANK_ENV}={fault_rank})')


def reduce_metric_sums(
    sums: Dict[str, Union[float, Tensor]],
    count: Union[int, Tensor],
    ctx: DistContext,
) -> Dict[str, float]:
    r"""Combines per-shard metric sums into global means: all-reduces (in
    float64) the sums of per-user metric values and the number of evaluated
    users of every rank and returns :obj:`{name: total_sum / total_count}`.

    Args:
        sums (Dict[str, float or torch.Tensor]): This rank's sum of each
            metric over its users.
        count (int or torch.Tensor): This rank's number of evaluated users.
        ctx (DistContext): The context.
    """
    names = sorted(sums)
    t = torch.tensor([float(sums[k]) for k in names] + [float(count)],
                     dtype=torch.float64, device=ctx.device)
    ctx.all_reduce(t)
    total = float(t[-1])
    if total <= 0:
        raise ValueError('No user was evaluated on any rank')
    return {k: float(t[i]) / total for i, k in enumerate(names)}


def scaled_backward(
    loss: Tensor,
    local_count: int,
    ctx: DistContext,
    global_count: Optional[int] = None,
) -> Tensor:
    r"""Back-propagates rank :math:`r`'s *mean* loss over its
    :math:`n_r` examples, scaled by :meth:`DistContext.loss_scale`, so that
    after DDP's gradient averaging every rank holds the gradient of the mean
    loss over the whole global batch, exactly as a single process that sees
    the global batch (up to floating-point summation order). A rank with an
    empty shard (:math:`n_r = 0`, possible in the last batch of an epoch)
    contributes zero gradients (a :obj:`nan` mean over no examples is
    ignored). Returns the detached loss *sum* :math:`n_r \cdot \ell_r` for
    logging (all-reduce it and divide by the global count for the mean).

    Args:
        loss (torch.Tensor): The scalar mean loss of this rank's shard,
            computed through the DDP-wrapped module.
        local_count (int): :math:`n_r`.
        ctx (DistContext): The context.
        global_count (int, optional): :math:`\sum_r n_r`, if known (saves one
            scalar all-reduce). (default: :obj:`None`)
    """
    scale = ctx.loss_scale(local_count, global_count)
    if local_count == 0:
        torch.nan_to_num(loss * 0., nan=0., posinf=0., neginf=0.).backward()
        return loss.detach().new_zeros(())
    (loss * scale if scale != 1. else loss).backward()
    return loss.detach() * local_count


class ShardedBPRSampler:
    r"""Shards the batches of a single-process
    :class:`~pyg_cerp.sampling.BPRSampler` across ranks *exactly*: every
    rank runs the single-process sampler (same permutation and same negatives
    for the same :obj:`(seed, epoch)`) and keeps the strided slice
    :obj:`[rank::world_size]` of each batch. The union of the ranks' batch
    :math:`k` is therefore the single-process batch :math:`k`, so a
    :obj:`world_size`-process run trains on exactly the triples of a
    single-process run whose :obj:`batch_size` is the *global* batch size.

    Each rank draws the whole epoch (:math:`O(|\mathcal{E}|)` indices and
    negatives per epoch: 0.1-0.4 s for Gowalla's 810k pairs with 5
    negatives on a busy CPU) and keeps :math:`1/W` of it.
    :class:`~pyg_cerp.sampling.BPRSampler` with
    :obj:`rank`/:obj:`world_size` draws only its slice but takes negatives
    from a per-rank stream, so it is statistically, not bitwise, equivalent
    to a single-process run.

    All ranks yield the same number of batches (:obj:`len(sampler)`); in a
    last batch with fewer triples than ranks, some ranks get an empty slice
    (see :func:`scaled_backward`).

    Args:
        sampler (pyg_cerp.sampling.BPRSampler): The single-process sampler
            (:obj:`rank=0`, :obj:`world_size=1`); its :obj:`batch_size` is
            the global batch size.
        rank (int): This process's rank.
        world_size (int): The number of ranks.
    """
    def __init__(self, sampler: Any, rank: int, world_size: int) -> None:
        if getattr(sampler, 'world_size', 1) != 1 or \
                getattr(sampler, 'rank', 0) != 0:
            raise ValueError("'sampler' must be a single-process sampler "
                             "(rank=0, world_size=1): ShardedBPRSampler "
                             "does the sharding")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"Need 0 <= rank < world_size "
                             f"(got rank={rank}, world_size={world_size})")
        self.sampler = sampler
        self.rank = rank
        self.world_size = world_size
        #: The size of the global batch last yielded.
        self.global_batch_size = 0

    @classmethod
    def from_context(cls, sampler: Any, ctx: DistContext) -> Any:
        r"""Returns :obj:`sampler` itself for a single process and a
        :class:`ShardedBPRSampler` over it otherwise.

        Args:
            sampler (pyg_cerp.sampling.BPRSampler): The single-process
                sampler.
            ctx (DistContext): The context.
        """
        if not ctx.is_distributed:
            return sampler
        return cls(sampler, ctx.rank, ctx.world_size)

    @property
    def epoch(self) -> int:
        r"""The epoch the next iteration runs."""
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        r"""Sets the epoch that the next iteration runs.

        Args:
            epoch (int): The epoch.
        """
        self.sampler.set_epoch(epoch)

    @property
    def batch_size(self) -> int:
        r"""The largest number of triples this rank gets per batch."""
        return -(-self.sampler.batch_size // self.world_size)

    def __len__(self) -> int:
        r"""The number of batches per epoch (identical on every rank)."""
        return len(self.sampler)

    def __iter__(self):
        for batch in self.sampler:
            self.global_batch_size = int(batch[0].size(0))
            out = ShardedBatch(t[self.rank::self.world_size] for t in batch)
            out.global_batch = tuple(batch)
            yield out

    def __getattr__(self, name: str) -> Any:
        # Delegate everything else (num_items, edge_index, ...) to the
        # wrapped sampler.
        if name == 'sampler':
            raise AttributeError(name)
        return getattr(self.sampler, name)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.sampler!r}, '
                f'rank={self.rank}, world_size={self.world_size})')


@torch.no_grad()
def sharded_ranking_metrics(
    user_emb: Tensor,
    item_emb: Tensor,
    train_edge_index: Tensor,
    test_edge_index: Tensor,
    ctx: DistContext,
    ks: Union[int, Sequence[int]] = (20, ),
    batch_size: int = 1024,
    score_fn: Optional[Callable[[Tensor], Tensor]] = None,
) -> Dict[str, float]:
    r"""Full-ranking Recall@:math:`k`/NDCG@:math:`k`
    (:func:`pyg_cerp.metrics.ranking_metrics`) with the users sharded across
    ranks: rank :math:`r` ranks all items for the users
    :obj:`arange(num_users)[r::world_size]`, and the per-user metric sums and
    user counts are all-reduced in float64, so every rank returns the
    single-process metrics (equal up to float64 summation order, about
    :math:`10^{-15}` relative). With one process it is exactly
    :func:`~pyg_cerp.metrics.ranking_metrics`.

    Args:
        user_emb (torch.Tensor): User embeddings :obj:`[num_users, d]`
            (every rank holds all of them; unused if :obj:`score_fn` is set
            except for its first dimension).
        item_emb (torch.Tensor): Item embeddings :obj:`[num_items, d]`
            (idem).
        train_edge_index (torch.Tensor): Training (user, item) pairs,
            excluded from the ranking.
        test_edge_index (torch.Tensor): Test (user, item) pairs.
        ctx (DistContext): The context.
        ks (int or Sequence[int], optional): Cut-offs. (default: :obj:`(20,)`)
        batch_size (int, optional): Users per scoring batch.
            (default: :obj:`1024`)
        score_fn (Callable, optional): A scorer :obj:`users -> [len(users),
            num_items]` used instead of inner products (*e.g.*,
            :meth:`~pyg_cerp.nn.MLPScorer.score_all`). (default: :obj:`None`)
    """
    from pyg_cerp.metrics import (ranking_metrics,
                                  ranking_metrics_from_scores)
    num_users, num_items = user_emb.size(0), item_emb.size(0)
    users = ctx.shard(num_users)
    if score_fn is None:
        sums = ranking_metrics(user_emb, item_emb, train_edge_index,
                               test_edge_index, ks=ks, batch_size=batch_size,
                               user_ids=users, return_sums=True)
    else:
        sums = ranking_metrics_from_scores(
            score_fn, num_users, num_items, train_edge_index,
            test_edge_index, ks=ks, batch_size=batch_size, user_ids=users,
            return_sums=True)
    count = sums.pop('num_users')
    return reduce_metric_sums(sums, count, ctx)


class ShardedBatch(tuple):
    r"""This rank's :obj:`(users, pos, neg)` slice of a global batch (a plain
    3-tuple for unpacking), with the whole global batch in
    :attr:`global_batch` (yielded by :class:`ShardedBPRSampler`)."""
    global_batch: Optional[tuple] = None


def _cerp_step_loss(recommender: Module, users: Tensor, pos: Tensor,
                    neg: Tensor, bpr_scale: float, reg_index: Optional[Tensor],
                    reg_scale: float, scheduler: Any,
                    l2_reg: float = 0.) -> tuple:
    # The loss of one data-parallel CERP step, computed inside the DDP
    # forward: this rank's mean BPR loss and its pruning regulariser over
    # ``reg_index`` (its share of the global batch's entities), each times
    # its loss scale, so that DDP's average is the single-process loss.
    bpr = recommender.loss(users, pos, neg)
    if users.numel() == 0:  # an empty shard: a nan mean, zero gradients
        term = torch.nan_to_num(bpr, nan=0.) * 0.
    else:
        term = bpr * bpr_scale
    l2 = None
    if l2_reg and users.numel() > 0:  # A batch mean like BPR: same scale.
        l2 = l2_reg * recommender.l2_penalty(users, pos, neg)
        term = term + l2 * bpr_scale
    reg = None
    if scheduler is not None and reg_index is not None:
        reg = scheduler.regularizer(reg_index)
        if reg is not None and reg_scale != 1.:
            reg = reg * reg_scale
    loss = term if reg is None else term + reg
    return (loss, bpr.detach(), None if reg is None else reg.detach(),
            None if l2 is None else l2.detach())


class DDPTrainStep:
    r"""The data-parallel counterpart of :func:`pyg_cerp.train.train_step`,
    for one training stage of one recommender: a callable with the same
    signature and return value, to be passed as :obj:`step_fn` to
    :func:`pyg_cerp.train.train_epoch`.

    Per step, it

    1. computes the whole loss in the forward of a DDP-wrapped
       :class:`LossModule` (so that DDP sees every parameter use): this
       rank's mean BPR loss plus the scheduler's regulariser
       (:math:`\gamma` times the pruning loss) over this rank's strided
       share of the entities of the *global* batch (from
       :class:`ShardedBatch`), each scaled by :meth:`DistContext.loss_scale`.
       After DDP's averaging, the gradient is the single-process gradient of
       the global batch (also for the regulariser, whose entity set, with
       duplicates removed among users, is a property of the global batch);
    2. all-reduces the gradients (DDP), clips them and steps the optimiser
       (identically on every rank);
    3. steps the pruning scheduler on every rank and checks, with one small
       all-reduce, that every rank took rank 0's decision (step count,
       targets reached, snapshots, :math:`\gamma`, density); on any
       difference, rank 0's scheduler state is broadcast and loaded, so the
       mask snapshots and the stop decision are always rank 0's;
    4. all-reduces the loss sums for the returned (global) loss values.

    Build a new one for every stage: DDP fixes its gradient buckets to the
    parameters that are trainable at construction (the thresholds are frozen
    in retrain mode).

    With a batch that is not a :class:`ShardedBatch` (*e.g.*, from
    :class:`~pyg_cerp.sampling.BPRSampler` with :obj:`rank`/:obj:`world_size`),
    the regulariser is computed over this rank's entities: an approximation of
    the global one.

    Args:
        recommender (pyg_cerp.train.Recommender): The model of the stage.
        ctx (DistContext): The context.
        find_unused_parameters (bool, optional): See
            :meth:`DistContext.wrap`. (default: :obj:`False`)
    """
    def __init__(self, recommender: Module, ctx: DistContext,
                 find_unused_parameters: bool = False) -> None:
        self.recommender = recommender
        self.ctx = ctx
        self.module = ctx.wrap(LossModule(recommender, _cerp_step_loss),
                               find_unused_parameters=find_unused_parameters)
        #: The number of scheduler states overridden by rank 0's.
        self.num_scheduler_syncs = 0

    def __call__(
        self,
        recommender: Module,
        optimizer: torch.optim.Optimizer,
        batch: tuple,
        scheduler: Any = None,
        clip_grad_norm: Optional[float] = 100.,
        l2_reg: float = 0.,
    ) -> Dict[str, Any]:
        r"""Runs one step; see :func:`pyg_cerp.train.train_step`.

        Args:
            recommender (pyg_cerp.train.Recommender): Must be the one given
                at construction (for the signature of
                :func:`~pyg_cerp.train.train_step`).
            optimizer (torch.optim.Optimizer): The optimiser.
            batch (tuple): This rank's :obj:`(users, pos, neg)`, ideally a
                :class:`ShardedBatch`.
            scheduler (PruningScheduler, optional): The pruning schedule.
            clip_grad_norm (float, optional): Gradient-norm clipping.
            l2_reg (float, optional): Weight of the L2 penalty on the
                batch's ego embeddings. (default: :obj:`0.`)

        Returns:
            :obj:`'loss'`, :obj:`'bpr'`, :obj:`'reg'` (global values) and
            :obj:`'reached'` (rank 0's newly reached targets).
        """
        if recommender is not self.recommender:
            raise ValueError('DDPTrainStep was built for another recommender '
                             '(build one per stage)')
        ctx = self.ctx
        users, pos, neg = batch
        if neg.dim() == 1:
            neg = neg.unsqueeze(-1)
        global_batch = getattr(batch, 'global_batch', None)
        local_n = int(users.numel())
        reg_index, reg_scale = None, 1.
        if global_batch is not None:
            global_n = int(global_batch[0].numel())
            if scheduler is not None:
                # The regulariser is a mean over the global batch's
                # entities: this rank takes its strided share, scaled like
                # the BPR term (its parameter-only terms, identical on all
                # ranks, average back to themselves: the scales sum to W).
                gneg = global_batch[2]
                entities = recommender.entities(
                    global_batch[0], global_batch[1],
                    gneg.unsqueeze(-1) if gneg.dim() == 1 else gneg)
                reg_index = ctx.shard(entities)
                reg_scale = ctx.loss_scale(reg_index.numel(),
                                           entities.numel())
        else:
            global_n = None
            if scheduler is not None:
                reg_index = recommender.entities(users, pos, neg)
        scale = ctx.loss_scale(local_n, global_n)
        loss, bpr, reg, l2 = self.module(users, pos, neg, scale, reg_index,
                                         reg_scale, scheduler, l2_reg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(recommender.parameters(),
                                           clip_grad_norm)
        optimizer.step()
        maybe_inject_fault(ctx, next(_STEP_COUNTER))
        reached = scheduler.step() if scheduler is not None else []
        if scheduler is not None:
            before = _NUM_SYNCS[0]
            reached = sync_scheduler_decisions(scheduler, reached, ctx)
            self.num_scheduler_syncs += _NUM_SYNCS[0] - before
        # Global loss values: bpr is a mean over this rank's triples; the
        # scaled regulariser values average to the global one.
        bpr_sum = 0. if local_n == 0 else float(bpr) * local_n
        reg_val = 0. if reg is None else float(reg)
        l2_sum = 0. if l2 is None else float(l2) * local_n
        t = torch.tensor([bpr_sum, float(local_n), reg_val, l2_sum],
                         dtype=torch.float64, device=ctx.device)
        ctx.all_reduce(t)
        count = float(t[1])
        bpr_mean = float(t[0]) / count if count > 0 else 0.
        reg_mean = float(t[2]) / ctx.world_size
        l2_mean = float(t[3]) / count if count > 0 else 0.
        return dict(loss=bpr_mean + reg_mean + l2_mean, bpr=bpr_mean,
                    reg=reg_mean, reached=reached)


def sync_scheduler_decisions(scheduler: Any, reached: List[float],
                             ctx: DistContext) -> List[float]:
    r"""Makes sure every rank holds rank 0's pruning decisions after a
    scheduler update (:meth:`step`, :meth:`on_epoch_end`, ...): one all-reduce
    of :func:`scheduler_digest` checks that all ranks agree; if any differs,
    rank 0's scheduler state (:math:`\gamma`, mask snapshots, step counts)
    and its list of newly reached targets are broadcast and loaded
    everywhere. Returns the (rank 0's) newly reached targets.

    With DDP the replicas are bitwise identical, so the decisions agree and
    the check costs one all-reduce of a few numbers; the broadcast is the
    safety net that keeps the stop decision (and thus the number of
    collective calls) identical on every rank.

    Args:
        scheduler (pyg_cerp.train.PruningScheduler): The scheduler.
        reached (List[float]): The targets this rank's update reported.
        ctx (DistContext): The context.
    """
    if not ctx.is_distributed:
        return list(reached)
    digest = scheduler_digest(scheduler).to(ctx.device)
    n = digest.numel()
    mirror = ctx.all_reduce(torch.cat([digest, -digest]), 'max')
    if torch.equal(mirror[:n], -mirror[n:]):  # max == min: all agree
        return list(reached)
    _NUM_SYNCS[0] += 1
    reached = ctx.broadcast_object(list(reached))
    sync_state(scheduler, ctx)
    return reached


def scheduler_digest(scheduler: Any) -> Tensor:
    r"""A float64 vector summarising a pruning scheduler's decisions: its
    step and epoch counts, :math:`\gamma`, the last measured density, whether
    it is done, and for every target (in the order of
    :obj:`scheduler.targets`) the step of its snapshot (:obj:`-1` while not
    reached). Its length only depends on the number of targets, and it is
    equal on two ranks iff they decided alike.

    Args:
        scheduler (pyg_cerp.train.PruningScheduler): The scheduler.
    """
    vals = [float(getattr(scheduler, 'num_steps', 0)),
            float(getattr(scheduler, 'epoch', 0)),
            float(getattr(scheduler, 'gamma', 0.)),
            float(getattr(scheduler, 'last_density', 0.)),
            float(bool(getattr(scheduler, 'done', False)))]
    snapshots = getattr(scheduler, 'snapshots', None) or {}
    for target in getattr(scheduler, 'targets', ()):
        snap = snapshots.get(target) if isinstance(snapshots, dict) else None
        vals.append(-1. if snap is None else
                    float(getattr(snap, 'step', 0)))
    t = torch.tensor(vals, dtype=torch.float64)
    return torch.nan_to_num(t, nan=-1., posinf=-2., neginf=-3.)


@torch.no_grad()
def sharded_evaluate(
    recommender: Module,
    train_edge_index: Tensor,
    test_edge_index: Tensor,
    ks: Sequence[int],
    ctx: DistContext,
    batch_size: int = 1024,
    max_users: Optional[int] = None,
    seed: int = 0,
) -> Dict[str, float]:
    r"""The data-parallel counterpart of :func:`pyg_cerp.train.evaluate`:
    rank :math:`r` ranks every item for the users
    :obj:`arange(num_users)[r::world_size]` with
    :meth:`recommender.score_function()` and the per-user metric sums and
    user counts of all ranks are all-reduced (float64), so every rank returns
    the single-process metrics (up to float64 summation order).

    Args:
        recommender (pyg_cerp.train.Recommender): The model.
        train_edge_index (torch.Tensor): Training pairs, masked from the
            ranking.
        test_edge_index (torch.Tensor): Test pairs.
        ks (Sequence[int]): The cut-offs.
        ctx (DistContext): The context.
        batch_size (int, optional): Users per scoring batch.
            (default: :obj:`1024`)
        max_users (int, optional): Evaluate only the seeded random sample of
            this many users that :func:`~pyg_cerp.train.evaluate` draws
            (the same users), sharded. (default: :obj:`None`: all users)
        seed (int, optional): The seed of that sample. (default: :obj:`0`)
    """
    from pyg_cerp.metrics import ranking_metrics_from_scores
    from pyg_cerp.train.loop import sample_eval_users
    train_edge_index, test_edge_index = sample_eval_users(
        train_edge_index, test_edge_index, recommender.num_users, max_users,
        seed)
    was_training = recommender.training
    recommender.eval()
    try:
        score_fn = recommender.score_function()
        sums = ranking_metrics_from_scores(
            score_fn, recommender.num_users, recommender.num_items,
            train_edge_index, test_edge_index, ks=tuple(ks),
            batch_size=batch_size, user_ids=ctx.shard(recommender.num_users),
            return_sums=True)
    finally:
        recommender.train(was_training)
    count = sums.pop('num_users')
    return reduce_metric_sums(sums, count, ctx)


class DistributedCERPRunner(CERPRunner):
    r"""The CERP procedure of :class:`pyg_cerp.train.CERPRunner`, data-parallel
    over the ranks of :obj:`world` (same arguments, same stages, same
    checkpoints and results):

    * the sampler built by :obj:`make_sampler(seed)` (a single-process
      :class:`~pyg_cerp.sampling.BPRSampler`, whose :obj:`batch_size` is the
      *global* batch size) is sharded with :class:`ShardedBPRSampler`, so the
      ranks together train on exactly the single-process triples;
    * every stage trains through a new :class:`DDPTrainStep` (the DDP wrapper
      is rebuilt whenever the model, and with it the set of trainable
      parameters, changes: thresholds are frozen in the retrain stages);
    * the pruning scheduler's decisions after every step, at the start and
      at the end of every epoch are rank 0's
      (:func:`sync_scheduler_decisions`);
    * the evaluation is sharded by users (:func:`sharded_evaluate`);
    * only rank 0 logs, shows progress bars and writes the checkpoint; on
      resume, rank 0 reads it and broadcasts it (no shared file system
      needed).

    With a single-process :obj:`world`, it behaves exactly like
    :class:`~pyg_cerp.train.CERPRunner`.

    Args:
        *args: The arguments of :class:`~pyg_cerp.train.CERPRunner`.
        world (DistContext): The context (from :func:`init_distributed`).
        **kwargs: The keyword arguments of
            :class:`~pyg_cerp.train.CERPRunner`.
    """
    def __init__(self, *args: Any, world: DistContext, **kwargs: Any) -> None:
        if not isinstance(world, DistContext):
            raise TypeError(f"'world' must be a DistContext "
                            f"(got {type(world).__name__})")
        if 'rank' in inspect.signature(super().__init__).parameters:
            kwargs.setdefault('rank', world.rank)
        super().__init__(*args, **kwargs)
        self.world = world
        if not world.is_main:
            self.log = lambda *a, **k: None
            self.progress = False
        self.sampler = ShardedBPRSampler.from_context(self.sampler, world)
        self._step: Optional[DDPTrainStep] = None

    # Training ################################################################

    def _train_epoch(self, model: Module, *args: Any,
                     **kwargs: Any) -> Dict[str, Any]:
        from pyg_cerp.train.loop import train_epoch
        if not self.world.is_distributed:
            return train_epoch(model, *args, **kwargs)
        if self._step is None or self._step.recommender is not model:
            self._step = DDPTrainStep(model, self.world)  # a new stage
        return train_epoch(model, *args, step_fn=self._step, **kwargs)

    def _scheduler(self, model: Module) -> Any:
        scheduler = super()._scheduler(model)
        if not self.world.is_distributed:
            return scheduler
        world = self.world
        # Rank 0 decides what happens at the start and end of each epoch,
        # too (the per-step decisions are synced by DDPTrainStep).
        for name in ('on_train_start', 'on_epoch_end'):
            method = getattr(scheduler, name)

            def synced(method=method) -> List[float]:
                return sync_scheduler_decisions(scheduler, method(), world)

            setattr(scheduler, name, synced)
        return scheduler

    def _evaluate(self, model: Module) -> Dict[str, float]:
        if not self.world.is_distributed:
            return super()._evaluate(model)
        cfg = self.config
        return sharded_evaluate(model, self.data.train, self.data.test,
                                cfg.ks, self.world,
                                max_users=getattr(cfg, 'eval_users', None),
                                seed=cfg.seed)

    # Checkpoints #############################################################

    def save(self) -> None:
        r"""Writes the checkpoint on rank 0 only."""
        if self.world.is_main:
            super().save()

    def load(self) -> bool:
        r"""Reads the checkpoint on rank 0 and broadcasts it; returns whether
        one existed (on every rank). An error on rank 0 (*e.g.*, another
        configuration) is raised on every rank."""
        if not self.world.is_distributed:
            return super().load()
        payload: Any = None
        if self.world.is_main:
            try:
                found = super().load()
                payload = ('ok', found, self.state if found else None)
            except Exception as e:  # re-raised on every rank below
                payload = ('error', type(e).__name__, str(e))
        payload = self.world.broadcast_object(payload)
        if payload[0] == 'error':
            from pyg_cerp.train.cerp import ResumeError
            from pyg_cerp.utils.io import CheckpointError
            error = {'ValueError': ValueError, 'KeyError': KeyError,
                     'FileNotFoundError': FileNotFoundError,
                     'ResumeError': ResumeError,
                     'CheckpointError': CheckpointError}.get(
                         payload[1], RuntimeError)
            raise error(f'Rank 0 could not load the checkpoint: '
                        f'{payload[2]}')
        _, found, state = payload
        if found:
            self.state = state
        return bool(found)


__all__ = [
    'DistContext',
    'LossModule',
    'allreduce_bytes_per_step',
    'init_distributed',
    'destroy_distributed',
    'sync_state',
    'unwrap',
    'parameters_in_sync',
    'maybe_inject_fault',
    'reduce_metric_sums',
    'scaled_backward',
    'ShardedBPRSampler',
    'sharded_ranking_metrics',
    'ShardedBatch',
    'DDPTrainStep',
    'scheduler_digest',
    'sync_scheduler_decisions',
    'sharded_evaluate',
    'DistributedCERPRunner',
]
