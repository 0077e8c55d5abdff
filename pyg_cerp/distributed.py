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
"""
import datetime
import gc
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn import Module
from torch.nn.parallel import DistributedDataParallel

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

    def all_gather(self, tensor: Tensor) -> List[Tensor]:
        r"""Gathers :obj:`tensor` (of any first dimension, same trailing
        shape and dtype on every rank) from every rank, ordered by rank.

        Args:
            tensor (torch.Tensor): This rank's tensor.
        """
        if not self.is_distributed:
            return [tensor]
        size = torch.tensor([tensor.size(0)], device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world_size)]
        dist.all_gather(sizes, size)
        max_size = int(max(int(s) for s in sizes))
        padded = tensor.new_zeros((max_size, *tensor.shape[1:]))
        padded[:tensor.size(0)] = tensor
        out = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(out, padded)
        return [o[:int(s)] for o, s in zip(out, sizes)]

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


def gather_by_index(
    index: Tensor,
    values: Tensor,
    size: int,
    ctx: DistContext,
) -> Tensor:
    r"""Assembles a global :obj:`[size, *]` tensor from every rank's rows
    :obj:`values` at positions :obj:`index` (*e.g.*, per-user metric values of
    each rank's user shard); positions no rank sent stay zero. Summing the
    result in a fixed order gives bitwise the single-process sum.

    Args:
        index (torch.Tensor): This rank's row positions.
        values (torch.Tensor): This rank's rows, :obj:`[len(index), *]`.
        size (int): The number of rows of the result.
        ctx (DistContext): The context.
    """
    if index.size(0) != values.size(0):
        raise ValueError(f"'index' ({index.size(0)}) and 'values' "
                         f"({values.size(0)}) differ in length")
    out = values.new_zeros((size, *values.shape[1:]))
    for idx, val in zip(ctx.all_gather(index.to(ctx.device)),
                        ctx.all_gather(values.to(ctx.device))):
        out[idx.to(out.device)] = val.to(out.device)
    return out


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
    negatives per epoch, a few milliseconds per million interactions) and
    keeps :math:`1/W` of it. :class:`~pyg_cerp.sampling.BPRSampler` with
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
            yield tuple(t[self.rank::self.world_size] for t in batch)

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
    'gather_by_index',
    'scaled_backward',
    'ShardedBPRSampler',
    'sharded_ranking_metrics',
]
