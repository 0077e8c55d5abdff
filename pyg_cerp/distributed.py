r"""What the training stack needs from :mod:`torch.distributed`: the one
loop, evaluation and runner of :mod:`pyg_cerp.train` take an optional
:obj:`world` (a :class:`DistContext`; world size 1 is the single-process
path). :func:`init_distributed` joins :obj:`torchrun`'s process group with a
collective timeout; :class:`RowPartition` splits LightGCN's propagation by
row blocks; :func:`all_reduce_gradients` sums the replicated parameters'
gradients; :func:`sync_scheduler_decisions` keeps the pruning scheduler
rank 0's; :func:`reduce_metric_sums` combines sharded metrics. See
``docs/distributed.md``.
"""
import datetime
import gc
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn import Module

from pyg_cerp.nn.propagation import (_check_operands, _check_symmetric_once,
                                     _kernel_matrix, _layer_coefficients)

#: The environment variable read for the collective timeout (in seconds)
#: when :func:`init_distributed` gets no :obj:`timeout`.
TIMEOUT_ENV = 'PYG_CERP_DIST_TIMEOUT'
#: The default collective timeout (in seconds).
DEFAULT_TIMEOUT = 300.

# The number of scheduler states overridden by rank 0's (for tests).
_NUM_SYNCS = [0]


@dataclass
class DistContext:
    r"""Where this process stands in a (possibly single-process) job, with
    the collectives of the training stack. Every method also works for
    :obj:`world_size == 1` (no process group): it then does nothing or
    returns its input. Create it with :func:`init_distributed`.

    :attr:`bytes_exchanged` counts the bytes this rank sends through the
    collectives, as a ring algorithm does: :math:`(W-1)/W` of the output of
    an :obj:`all_gather` and :math:`2 (W-1)/W` of the tensor of an
    :obj:`all_reduce`; :attr:`exchange_seconds` the wall time spent in
    them (waiting for the other ranks included).

    Args:
        rank (int): The global rank. (default: :obj:`0`)
        world_size (int): The number of processes. (default: :obj:`1`)
        local_rank (int): The rank on this machine. (default: :obj:`0`)
        device (torch.device): This process's device. (default: :obj:`cpu`)
        backend (str, optional): The process-group backend, :obj:`None`
            without process group. (default: :obj:`None`)
    """
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device('cpu'))
    backend: Optional[str] = None
    bytes_exchanged: int = field(default=0, compare=False)
    exchange_seconds: float = field(default=0., compare=False)

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

    @property
    def is_distributed(self) -> bool:
        r"""Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        r"""Whether this is rank 0, the only rank that writes checkpoints,
        results and logs."""
        return self.rank == 0

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
            start = time.perf_counter()
            dist.all_reduce(tensor, op=ops[op])
            self.exchange_seconds += time.perf_counter() - start
            self.bytes_exchanged += (2 * (self.world_size - 1) *
                                     _nbytes(tensor) // self.world_size)
        return tensor

    def all_gather(self, block: Tensor) -> Tensor:
        r"""Concatenates the equally shaped :obj:`block` of every rank along
        the first dimension, in rank order (:obj:`[W * n, ...]`).

        Args:
            block (torch.Tensor): This rank's block.
        """
        if not self.is_distributed:
            return block
        block = block.contiguous()
        out = block.new_empty((self.world_size * block.size(0), ) +
                              tuple(block.shape[1:]))
        start = time.perf_counter()
        dist.all_gather_into_tensor(out, block)
        self.exchange_seconds += time.perf_counter() - start
        self.bytes_exchanged += (self.world_size - 1) * _nbytes(block)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        r"""Returns rank :obj:`src`'s :obj:`obj` (pickled) on every rank.

        Args:
            obj (Any): The object (only rank :obj:`src`'s is used).
            src (int, optional): The source rank. (default: :obj:`0`)
        """
        if not self.is_distributed:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(
            box, src=src, device=self.device if self.backend == 'nccl' else
            None)
        return box[0]

    def all_equal(self, value: Union[int, float, Tensor]) -> bool:
        r"""Whether :obj:`value` (a number or tensor of the same shape on
        every rank) is identical on every rank."""
        t = torch.as_tensor(value, device=self.device).double().flatten()
        both = self.all_reduce(torch.cat([t, -t]), 'max')
        return bool(torch.equal(both[:t.numel()], -both[t.numel():]))

    def shard(self, n_or_index: Union[int, Tensor]) -> Tensor:
        r"""This rank's strided share :obj:`index[rank::world_size]` of
        :obj:`index` (or of :obj:`arange(n)`), *e.g.*, the users it
        evaluates; the shares of all ranks are disjoint and cover the input.

        Args:
            n_or_index (int or torch.Tensor): The number of items or an index
                vector.
        """
        if isinstance(n_or_index, Tensor):
            return n_or_index[self.rank::self.world_size]
        return torch.arange(self.rank, int(n_or_index), self.world_size)

    def global_count(self, local_count: int) -> int:
        r"""The sum of :obj:`local_count` over every rank."""
        if not self.is_distributed:
            return int(local_count)
        t = torch.tensor([int(local_count)], device=self.device)
        return int(self.all_reduce(t))

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(rank={self.rank}, '
                f'world_size={self.world_size}, device={self.device}, '
                f'backend={self.backend})')


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, '')
    try:
        return int(value) if value != '' else default
    except ValueError:
        raise ValueError(f"Environment variable {name}={value!r} is not an "
                         f"integer") from None


def init_distributed(
    backend: Optional[str] = None,
    timeout: Optional[Union[float, datetime.timedelta]] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> DistContext:
    r"""Joins the process group started by :obj:`torchrun` (environment
    variables :obj:`RANK`, :obj:`WORLD_SIZE`, :obj:`LOCAL_RANK`,
    :obj:`MASTER_ADDR`, :obj:`MASTER_PORT`) and returns its
    :class:`DistContext`; without them, or with :obj:`WORLD_SIZE=1`, a
    single-process context without process group.

    Args:
        backend (str, optional): :obj:`"gloo"` or :obj:`"nccl"`
            (:obj:`None`: :obj:`"nccl"` when there is a GPU for every local
            process, :obj:`LOCAL_WORLD_SIZE`, else :obj:`"gloo"`).
            (default: :obj:`None`)
        timeout (float or datetime.timedelta, optional): How long a
            collective waits for the other ranks before it fails, so that a
            dead or hung rank ends the job (:obj:`None`:
            :obj:`$PYG_CERP_DIST_TIMEOUT` or 300 seconds).
            (default: :obj:`None`)
        device (str or torch.device, optional): This process's device
            (:obj:`None`: :obj:`cuda:LOCAL_RANK` for NCCL, else :obj:`cpu`).
            (default: :obj:`None`)
    """
    world_size = _env_int('WORLD_SIZE', 1)
    rank, local_rank = _env_int('RANK', 0), _env_int('LOCAL_RANK', 0)
    local_world = _env_int('LOCAL_WORLD_SIZE', 1)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if backend is None:  # One GPU per local process, else the CPU.
        backend = 'nccl' if 0 < gpus and local_world <= gpus else 'gloo'
    if backend not in ('gloo', 'nccl'):
        raise ValueError(f"'backend' must be 'gloo' or 'nccl' "
                         f"(got {backend!r})")
    if backend == 'nccl' and local_rank >= gpus:
        raise RuntimeError(
            f"Backend 'nccl' needs one GPU per local process, but local rank "
            f"{local_rank} sees {gpus} GPU(s); start at most {gpus} "
            f"process(es) per machine or use backend 'gloo' (CPU)")
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
    if not dist.is_initialized():
        extra: Dict[str, Any] = {}
        if backend == 'nccl':  # errors and timeouts end the process
            os.environ.setdefault('TORCH_NCCL_ASYNC_ERROR_HANDLING', '1')
            extra['device_id'] = device
        dist.init_process_group(backend=backend, timeout=timeout, rank=rank,
                                world_size=world_size, **extra)
    return DistContext(rank, world_size, local_rank, device, backend)


def destroy_distributed(ctx: Optional[DistContext] = None) -> None:
    r"""Destroys the process group, if any (call at the end of a run).

    Args:
        ctx (DistContext, optional): Unused; for symmetry with
            :func:`init_distributed`. (default: :obj:`None`)
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    # A barrier lets gloo's worker threads release the last collective's
    # tensors before the destructor joins them holding the GIL
    # (pytorch/pytorch#75097).
    try:
        dist.barrier()
    except Exception:  # a broken group must still be destroyed
        pass
    gc.collect()
    dist.destroy_process_group()


class RowPartition:
    r"""LightGCN's propagation :math:`\mathbf{E} = \sum_{l=0}^{L} \alpha_l
    \mathbf{\hat{A}}^l \mathbf{X}` split over the :math:`W` ranks of
    :obj:`world` by row blocks of the symmetric normalised adjacency
    :math:`\mathbf{\hat{A}}`.

    Rank :math:`r` holds the contiguous rows :math:`\mathcal{R}_r = [n_r,
    n_{r+1})` of :math:`\mathbf{\hat{A}}`, the boundaries :math:`n_r` cut the
    non-zeros into :math:`W` nearly equal parts (the first row where the
    cumulative count reaches :math:`r \, \mathrm{nnz} / W`), and runs the
    Horner scheme of :func:`~pyg_cerp.nn.symmetric_lightgcn_propagation` on
    its rows,

    .. math::
        \mathbf{H}_r \leftarrow c_k \mathbf{X}_{\mathcal{R}_r} +
        \mathbf{\hat{A}}_{\mathcal{R}_r,:} \, \mathrm{all\_gather}
        (\mathbf{H}),

    :math:`L` sparse products of :math:`\approx \mathrm{nnz}/W` non-zeros
    and :math:`L` :obj:`all_gather` of :math:`W m \times d` values per
    forward, :math:`m = \max_r |\mathcal{R}_r|` (each rank sends its rows in
    a slot of :math:`m` rows). The slots are laid out so that the gathered
    rows are in node order when every slot but the first and last is full
    (always for :math:`W \leq 2`): rank 0's rows end its slot, the others'
    start theirs, and the output is a view of the gathered tensor; otherwise
    the rows are concatenated (one copy). The backward pass of rank
    :math:`r` receives its own loss's gradient :math:`\mathbf{G}_r`; since
    :math:`\mathbf{\hat{A}}` is symmetric, the gradient of the sum of all
    ranks' losses is :math:`\sum_l \alpha_l \mathbf{\hat{A}}^l \sum_r
    \mathbf{G}_r`: one :obj:`all_reduce` of :math:`\mathbf{G}_r`, the same
    Horner scheme (:math:`L - 1` :obj:`all_gather`), and rank :math:`r`
    returns the rows :math:`\mathcal{R}_r` (zeros elsewhere). Summing the
    parameter gradients over ranks (:func:`all_reduce_gradients`) then gives
    the single-process gradient. Every rank must call it the same number of
    times (forward and backward are collective).

    Args:
        adj (torch.Tensor): The symmetric normalised adjacency
            :math:`N \times N` (sparse; its symmetry is checked once per
            object).
        world (DistContext): The ranks.
    """
    def __init__(self, adj: Tensor, world: DistContext) -> None:
        _check_operands(adj, adj.new_empty(adj.size(1), 1), 'RowPartition')
        _check_symmetric_once(adj, rtol=1e-5, atol=1e-8)  # cached per object
        self.world = world
        W, r, N = world.world_size, world.rank, adj.size(0)
        self.num_nodes = N
        csr = adj.to_sparse_csr()
        crow = csr.crow_indices()
        targets = (torch.arange(W + 1, dtype=torch.float64) *
                   float(crow[-1]) / W).to(crow.device)
        bounds = torch.searchsorted(crow.double(), targets).clamp_(max=N)
        bounds[0], bounds[-1] = 0, N
        #: The first row of each rank's block, and :math:`N`.
        self.bounds: List[int] = bounds.tolist()
        self.start, self.end = self.bounds[r], self.bounds[r + 1]
        sizes = [b - a for a, b in zip(self.bounds[:-1], self.bounds[1:])]
        self.block = max(sizes)
        self.offsets = [self.block - sizes[0]] + [0] * (W - 1)
        self.in_node_order = all(size == self.block for size in sizes[1:-1])
        lo, hi = int(crow[self.start]), int(crow[self.end])
        self.adj_rows = _kernel_matrix(torch.sparse_csr_tensor(
            crow[self.start:self.end + 1] - lo, csr.col_indices()[lo:hi],
            csr.values()[lo:hi], (self.end - self.start, N)))

    def _slot(self, like: Tensor) -> Tuple[Tensor, Tensor]:
        # A send buffer of `block` rows and this rank's rows in it. The
        # padding is never read (`gather` drops it): left uninitialised.
        slot = like.new_empty(self.block, like.size(1))
        lo = self.offsets[self.world.rank]
        return slot, slot[lo:lo + self.end - self.start]

    def gather(self, slot: Tensor) -> Tensor:
        r"""All ranks' rows, :math:`N \times d` in node order, from this
        rank's send :obj:`slot` (:math:`m \times d`)."""
        out = self.world.all_gather(slot)
        if self.in_node_order:
            return out.narrow(0, self.offsets[0], self.num_nodes)
        m = self.block
        return torch.cat([out[r * m + o:r * m + o + b - a] for r, (o, a, b)
                          in enumerate(zip(self.offsets, self.bounds[:-1],
                                           self.bounds[1:]))])

    def horner(self, x: Tensor, coeffs: List[float],
               out: Optional[Tensor] = None) -> Tensor:
        r"""This rank's rows of :math:`\sum_l c_l \mathbf{\hat{A}}^l
        \mathbf{X}` for a replicated :obj:`x` (node order): written into
        :obj:`out` (:math:`|\mathcal{R}_r| \times d`) if given, else
        returned in a send slot (:math:`m \times d`)."""
        x_local, h, alpha = x[self.start:self.end], x, coeffs[-1]
        for coeff in reversed(coeffs[1:-1]):  # every layer but the last
            slot, rows = self._slot(x)
            torch.addmm(x_local, self.adj_rows, h, beta=coeff, alpha=alpha,
                        out=rows)
            h, alpha = self.gather(slot), 1.
        slot, rows = (out, out) if out is not None else self._slot(x)
        torch.addmm(x_local, self.adj_rows, h, beta=coeffs[0], alpha=alpha,
                    out=rows)
        return slot

    def __call__(self, x: Tensor, alpha: Tensor) -> Tensor:
        r"""Returns :math:`\mathbf{E}` (:math:`N \times d`, on every rank).

        Args:
            x (torch.Tensor): The replicated layer-0 embeddings
                :math:`N \times d` (identical on every rank).
            alpha (torch.Tensor): The :math:`L + 1` layer weights (not
                trainable).
        """
        if alpha.requires_grad:
            raise ValueError("RowPartition does not train 'alpha'")
        if x.dim() != 2 or x.size(0) != self.num_nodes:
            raise ValueError(f"Expected 'x' of shape ({self.num_nodes}, d) "
                             f"(got {tuple(x.size())})")
        return _RowParallelPropagation.apply(x, self, alpha)


class _RowParallelPropagation(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, part: RowPartition,
                alpha: Tensor) -> Tensor:
        coeffs = _layer_coefficients(alpha)
        ctx.part, ctx.coeffs = part, coeffs
        if len(coeffs) == 1:
            return x * coeffs[0]
        return part.gather(part.horner(x.contiguous(), coeffs))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple:
        part, coeffs = ctx.part, ctx.coeffs
        if len(coeffs) == 1:
            return grad_out * coeffs[0], None, None
        grad = part.world.all_reduce(grad_out.clone(
            memory_format=torch.contiguous_format))
        out = torch.empty_like(grad)
        out[:part.start] = 0.
        out[part.end:] = 0.
        part.horner(grad, coeffs, out[part.start:part.end])
        return out, None, None


def all_reduce_gradients(parameters: Iterable[Tensor],
                         world: DistContext) -> None:
    r"""Sums the gradients of :obj:`parameters` over every rank in place, in
    one flat all-reduce (parameters without gradient are skipped: they must
    be the same on every rank).

    Args:
        parameters (Iterable[torch.Tensor]): The replicated parameters.
        world (DistContext): The ranks.
    """
    if not world.is_distributed:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = world.all_reduce(torch.cat([g.reshape(-1) for g in grads]))
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


@torch.no_grad()
def parameters_in_sync(module: Module, world: DistContext) -> bool:
    r"""Whether every parameter and buffer of :obj:`module` is bitwise equal
    on every rank (a check for tests; costs two all-reduces of the model).

    Args:
        module (torch.nn.Module): The model.
        world (DistContext): The ranks.
    """
    tensors = [t.detach().reshape(-1).double()
               for t in list(module.parameters()) + list(module.buffers())]
    return not tensors or world.all_equal(torch.cat(tensors))


def sync_state(obj: Any, world: DistContext, src: int = 0) -> Any:
    r"""Loads rank :obj:`src`'s :meth:`state_dict` of :obj:`obj` on every
    rank; returns :obj:`obj`.

    Args:
        obj (Any): An object with :meth:`state_dict`/:meth:`load_state_dict`.
        world (DistContext): The ranks.
        src (int, optional): The rank whose state wins. (default: :obj:`0`)
    """
    if not world.is_distributed:
        return obj
    for name in ('state_dict', 'load_state_dict'):
        if not callable(getattr(obj, name, None)):
            raise TypeError(f"'{type(obj).__name__}' has no '{name}()'")
    state = world.broadcast_object(
        obj.state_dict() if world.rank == src else None, src=src)
    if world.rank != src:
        obj.load_state_dict(state)
    return obj


def scheduler_digest(scheduler: Any) -> Tensor:
    r"""A float64 vector of a pruning scheduler's decisions (step and epoch
    counts, :math:`\gamma`, last density, whether it is done, and the step
    of each target's snapshot, :obj:`-1` while not reached): equal on two
    ranks iff they decided alike.

    Args:
        scheduler (pyg_cerp.train.PruningScheduler): The scheduler.
    """
    vals = [float(getattr(scheduler, name, 0)) for name in
            ('num_steps', 'epoch', 'gamma', 'last_density', 'done')]
    snapshots = getattr(scheduler, 'snapshots', None) or {}
    for target in getattr(scheduler, 'targets', ()):
        snap = snapshots.get(target)
        vals.append(-1. if snap is None else float(snap.step))
    return torch.nan_to_num(torch.tensor(vals, dtype=torch.float64),
                            nan=-1., posinf=-2., neginf=-3.)


def sync_scheduler_decisions(scheduler: Any, reached: List[float],
                             world: DistContext) -> List[float]:
    r"""Returns rank 0's newly reached targets after a scheduler update
    (:meth:`step`, :meth:`on_train_start`, :meth:`on_epoch_end`), and makes
    every rank hold rank 0's scheduler: one all-reduce of
    :func:`scheduler_digest` checks that the ranks agree (they do while the
    replicas are identical); if not, rank 0's state and targets are
    broadcast and loaded everywhere, which keeps the stop decision, and with
    it the number of collectives, the same on every rank.

    Args:
        scheduler (pyg_cerp.train.PruningScheduler): The scheduler.
        reached (List[float]): The targets this rank's update reported.
        world (DistContext): The ranks.
    """
    if not world.is_distributed or world.all_equal(
            scheduler_digest(scheduler)):
        return list(reached)
    _NUM_SYNCS[0] += 1
    reached = world.broadcast_object(list(reached))
    sync_state(scheduler, world)
    return reached


def reduce_metric_sums(sums: Dict[str, Union[float, Tensor]],
                       count: Union[int, Tensor],
                       world: DistContext) -> Dict[str, float]:
    r"""Global means from per-rank metric sums: all-reduces (float64) the
    sums of per-user metric values and the numbers of evaluated users and
    returns :obj:`{name: total_sum / total_count}`.

    Args:
        sums (Dict[str, float or torch.Tensor]): This rank's sums.
        count (int or torch.Tensor): This rank's number of users.
        world (DistContext): The ranks.
    """
    names = sorted(sums)
    t = torch.tensor([float(sums[k]) for k in names] + [float(count)],
                     dtype=torch.float64, device=world.device)
    world.all_reduce(t)
    total = float(t[-1])
    if total <= 0:
        raise ValueError('No user was evaluated on any rank')
    return {k: float(t[i]) / total for i, k in enumerate(names)}


__all__ = [
    'DistContext',
    'init_distributed',
    'destroy_distributed',
    'RowPartition',
    'all_reduce_gradients',
    'parameters_in_sync',
    'sync_state',
    'scheduler_digest',
    'sync_scheduler_decisions',
    'reduce_metric_sums',
]
