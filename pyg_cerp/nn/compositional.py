r"""Compositional embeddings with learnable soft-threshold pruning (CERP)."""
import math
import warnings
import weakref
from typing import (TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence,
                    Tuple, Union)

import torch
from torch import Tensor
from torch.nn import Module, Parameter

from pyg_cerp.nn.compose import check_operation, compose
from pyg_cerp.nn.quant import check_precision, fake_quantize
from pyg_cerp.utils.validation import (check_float, check_index,
                                       check_index_dtype, check_int)

if TYPE_CHECKING:  # pragma: no cover
    from pyg_cerp.nn.compact import CompactEmbedding

# In-place initialisers that mean "re-initialise this embedding" (PyG's
# `LightGCN.reset_parameters()` calls `xavier_uniform_(embedding.weight)`).
_INIT_METHODS = frozenset({
    Tensor.uniform_, Tensor.normal_, Tensor.zero_, Tensor.fill_,
    Tensor.bernoulli_, Tensor.exponential_, Tensor.geometric_,
    Tensor.log_normal_, Tensor.cauchy_, Tensor.random_
})


def _is_inplace(func: Callable) -> bool:
    name = getattr(func, '__name__', '')
    if name.startswith('__i') and name.endswith('__'):  # x += y etc.
        return True
    return name.endswith('_') and not name.startswith('_') and name not in {
        'requires_grad_', 'retain_grad_'
    }


class ComposedWeight(Tensor):
    r"""The :math:`N \times d` :attr:`weight` that an embedding computes from
    its tables: a plain :class:`torch.Tensor`, except that an in-place
    initialiser (*e.g.*, :obj:`xavier_uniform_` in PyG's
    :meth:`LightGCN.reset_parameters`) calls the owner's
    :meth:`reset_parameters` and any other in-place operation raises (the
    change would be lost)."""
    _owner: Optional['weakref.ReferenceType[Module]'] = None
    _was_reset: bool = False

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if args and isinstance(args[0], ComposedWeight) and _is_inplace(func):
            self = args[0]
            owner = self._owner() if self._owner is not None else None
            if func in _INIT_METHODS:
                if owner is not None:
                    owner.reset_parameters()
                self._was_reset = True
                return self
            if self._was_reset:  # Remaining steps of the same initialiser.
                return self
            name = 'embedding' if owner is None else type(owner).__name__
            raise RuntimeError(
                f"'{getattr(func, '__name__', func)}' modifies "
                f"'{name}.weight' in place, but this matrix is computed from "
                f"the stored tables on every access, so the change would be "
                f"lost. Modify the "
                f"tables instead, or call 'reset_parameters()' to "
                f"re-initialise the embedding.")
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


def computed_weight(tensor: Tensor, owner: Module) -> ComposedWeight:
    r"""Returns :obj:`tensor` as the :attr:`weight` of :obj:`owner`."""
    out = tensor.as_subclass(ComposedWeight)
    out._owner = weakref.ref(owner)
    return out


def _check_sizes(num_embeddings: int, embedding_dim: int,
                 name: Optional[str] = None, rows: int = 0) -> None:
    check_int('num_embeddings', num_embeddings)
    check_int('embedding_dim', embedding_dim)
    if name is not None:
        check_int(name, rows)
        if rows > num_embeddings:
            raise ValueError(f"'{name}' must be in [1, num_embeddings="
                             f"{num_embeddings}] (got {rows})")


def _check_ids(index: Tensor, num_embeddings: int, check: bool) -> None:
    # Ids >= N would hash to valid rows: checked by default, without a device
    # synchronisation (`check_index` asserts asynchronously off the CPU).
    if check:
        check_index(index, num_embeddings, 'index')
    else:  # Never a uint8 mask as ids.
        check_index_dtype(index, 'index')


# Soft-threshold pruning #####################################################


class _TanhSquareSum(torch.autograd.Function):
    # sum(tanh(K E)^2) in three passes (the autograd chain takes eight).
    @staticmethod
    def forward(ctx, emb: Tensor, K: float) -> Tensor:
        t = emb.mul(K).tanh_()
        ctx.save_for_backward(t)
        ctx.K = K
        flat = t.reshape(-1)
        return torch.dot(flat, flat)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        t, = ctx.saved_tensors
        out = t * t
        out.sub_(1.).mul_(t).mul_(grad * (-2. * ctx.K))
        return out, None


class _SoftThreshold(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value: Tensor, threshold: Tensor) -> Tensor:
        sig = torch.sigmoid(threshold)
        out = value.abs().sub_(sig).clamp_min_(0.)
        keep = out != 0
        ctx.save_for_backward(value, sig, keep)
        return out.mul_(value.sign())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        value, sig, keep = ctx.saved_tensors
        grad_value = grad * keep
        grad_threshold = None
        if ctx.needs_input_grad[1]:
            grad_threshold = grad_value * value.sign()
            grad_threshold.mul_(sig).mul_(sig - 1.)
            if grad_threshold.shape != sig.shape:
                grad_threshold = grad_threshold.sum_to_size(sig.shape)
        return grad_value if ctx.needs_input_grad[0] else None, \
            grad_threshold


def soft_threshold(value: Tensor, threshold: Tensor) -> Tensor:
    r"""The element-wise soft threshold of CERP/PEP,
    :math:`\hat{\mathbf{V}} = \mathrm{sign}(\mathbf{V}) \odot
    \mathrm{ReLU}(|\mathbf{V}| - \sigma(\mathbf{S}))`, as one autograd node
    (four element-wise passes instead of twelve), with
    :math:`\partial \hat{v} / \partial v = [|v| > \sigma(s)]` and
    :math:`\partial \hat{v} / \partial s = -\mathrm{sign}(v) [|v| >
    \sigma(s)] \, \sigma(s)(1 - \sigma(s))`.

    Args:
        value (torch.Tensor): The values :math:`\mathbf{V}`.
        threshold (torch.Tensor): The threshold logits :math:`\mathbf{S}`
            (broadcastable to :obj:`value`).
    """
    return _SoftThreshold.apply(value, threshold)


class _Counts:
    num_embeddings: int
    embedding_dim: int

    @property
    def num_full_params(self) -> int:
        r"""The size :math:`Nd` of the full embedding table."""
        return self.num_embeddings * self.embedding_dim

    def full_table_fraction(self) -> float:
        r"""Non-zeros over :math:`Nd` (the memory relative to the full
        table)."""
        return self.num_nonzero() / self.num_full_params


def _sync_mode_on_load(module: 'SoftThresholdPruning', _) -> None:
    module._set_threshold_grad()


class SoftThresholdPruning(_Counts, Module):
    r"""Learnable element-wise soft-threshold pruning of tables
    :math:`\mathbf{V}` (CERP's :math:`\mathbf{P}, \mathbf{Q}`, PEP's
    :math:`\mathbf{V}`) by threshold logits :math:`\mathbf{S}` of their
    shape, :math:`\hat{\mathbf{V}} = \mathrm{sign}(\mathbf{V}) \odot
    \mathrm{ReLU}(|\mathbf{V}| - \sigma(\mathbf{S}))` (see
    :func:`soft_threshold`). :meth:`freeze_masks` switches to *retrain mode*,
    :math:`\hat{\mathbf{V}} = \mathbf{V} \odot \mathbf{M}` with the frozen
    non-zero pattern :math:`\mathbf{M}`, the thresholds off and the values
    optionally rewound (lottery-ticket style); masks and mode are in the
    state dict. With a :obj:`precision` other than :obj:`'float32'`, lookups
    see :meth:`quantized_tables`, the pruned tables fake-quantised to that
    precision (:func:`~pyg_cerp.nn.quant.fake_quantize`, straight-through
    gradient), which is what the export at that precision decodes to.
    Subclasses name the (table, threshold, mask) attributes in
    :attr:`pruned_names` and call :meth:`_init_pruning`."""
    #: The (table, threshold logits, mask) attribute names of each table.
    pruned_names: Tuple[Tuple[str, str, str], ...] = ()

    def _init_pruning(self, num_embeddings: int, embedding_dim: int,
                      shape: Tuple[int, int], threshold_init: float,
                      check_index: bool, device: Optional[torch.device],
                      dtype: Optional[torch.dtype],
                      precision: str = 'float32') -> None:
        check_float('threshold_init', threshold_init)
        self.precision = check_precision(precision)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.threshold_init = float(threshold_init)
        self.check_index = check_index
        # The state-dict order: tables, thresholds, masks, mode.
        for i in (0, 1):
            for names in self.pruned_names:
                setattr(self, names[i], Parameter(
                    torch.empty(shape, device=device, dtype=dtype)))
        for _, _, mask in self.pruned_names:
            self.register_buffer(
                mask, torch.ones(shape, dtype=torch.bool, device=device))
        self.register_buffer('retraining',
                             torch.zeros((), dtype=torch.bool, device=device))
        self.register_load_state_dict_post_hook(_sync_mode_on_load)

    def _get(self, i: int) -> Tuple[Tensor, ...]:
        return tuple(getattr(self, names[i]) for names in self.pruned_names)

    def reset_parameters(self) -> None:
        r"""Re-initialises the tables (Xavier uniform), sets the threshold
        logits to :obj:`threshold_init` and leaves retrain mode."""
        for table in self._get(0):
            torch.nn.init.xavier_uniform_(table)
        with torch.no_grad():
            for threshold, mask in zip(self._get(1), self._get(2)):
                threshold.fill_(self.threshold_init)
                mask.fill_(True)
            self.retraining.fill_(False)
        self._set_threshold_grad()

    def _set_threshold_grad(self) -> None:
        for threshold in self._get(1):
            threshold.requires_grad_(not self.is_retraining)

    @property
    def is_retraining(self) -> bool:
        r"""Whether the masks are frozen (see :meth:`freeze_masks`)."""
        return bool(self.retraining)

    def initial_state(self) -> Dict[str, Tensor]:
        r"""A copy of the tables by name, for :meth:`freeze_masks`."""
        return {names[0]: table.detach().clone()
                for names, table in zip(self.pruned_names, self._get(0))}

    def pruned_tables(self) -> Tuple[Tensor, ...]:
        r"""The pruned tables :math:`\hat{\mathbf{V}}` (in retrain mode
        :math:`\mathbf{V} \odot \mathbf{M}`)."""
        if self.is_retraining:
            return tuple(t * m for t, m in zip(self._get(0), self._get(2)))
        return tuple(soft_threshold(t, s)
                     for t, s in zip(self._get(0), self._get(1)))

    def quantized_tables(self) -> Tuple[Tensor, ...]:
        r"""The :meth:`pruned_tables` as stored in :obj:`precision` and
        decoded (themselves for :obj:`'float32'`)."""
        tables = self.pruned_tables()
        if self.precision == 'float32':
            return tables
        return tuple(fake_quantize(t, self.precision) for t in tables)

    @torch.no_grad()
    def masks(self) -> Tuple[Tensor, ...]:
        r"""The boolean non-zero patterns of :meth:`pruned_tables`."""
        return tuple(t != 0 for t in self.pruned_tables())

    @torch.no_grad()
    def freeze_masks(
        self,
        masks: Optional[Union[Tensor, Sequence[Tensor]]] = None,
        rewind_to: Optional[Dict[str, Tensor]] = None,
    ) -> None:
        r"""Switches to retrain mode (the thresholds get no gradient).

        Args:
            masks (Sequence[torch.Tensor], optional): A boolean mask per table
                (*e.g.*, a snapshot of :meth:`masks`; a tensor for one table).
                :obj:`None`: the current pattern. (default: :obj:`None`)
            rewind_to (Dict[str, torch.Tensor], optional): Values to rewind
                the tables to (from :meth:`initial_state`). :obj:`None`: the
                current pruned values. (default: :obj:`None`)
        """
        masks = self.masks() if masks is None else masks
        masks = (masks, ) if isinstance(masks, Tensor) else tuple(masks)
        names, tables = [n[0] for n in self.pruned_names], self._get(0)
        if len(masks) != len(names):
            raise ValueError(f"'masks' must hold one mask per table {names} "
                             f"(got {len(masks)})")
        missing = sorted(set(names) - set(rewind_to or names))
        if missing:
            raise KeyError(f"'rewind_to' lacks {missing}")
        values = (self.pruned_tables() if rewind_to is None else
                  [rewind_to[name] for name in names])
        shape = tuple(tables[0].shape)
        for name, mask, value in zip(names, masks, values):
            for what, t in ((f"Mask for '{name}'", mask),
                            (f"'rewind_to[{name!r}]'", value)):
                if tuple(t.shape) != shape:
                    raise ValueError(f"{what} must have shape {shape} (got "
                                     f"{tuple(t.shape)})")
        for table, value in zip(tables, values):
            table.copy_(value)
        for buffer, mask in zip(self._get(2), masks):
            buffer.copy_(mask.to(torch.bool))
        self.retraining.fill_(True)
        self._set_threshold_grad()

    @torch.no_grad()
    def num_nonzero(self) -> int:
        r"""The non-zeros of :meth:`pruned_tables` (a
        :class:`FloatingPointError` for :obj:`nan`, a diverged training)."""
        tables = self.pruned_tables()
        nnz, nan = torch.stack([sum(t.count_nonzero() for t in tables),
                                sum(t.isnan().sum() for t in tables)]).tolist()
        if nan:
            raise FloatingPointError(
                f"{type(self).__name__} holds {nan} nan value(s) in its "
                f"pruned tables (training diverged), so its memory cannot be "
                f"counted. Lower the learning rates or check the inputs.")
        return int(nnz)

    def _config_repr(self) -> str:
        return ''

    def extra_repr(self) -> str:
        precision = ('' if self.precision == 'float32' else
                     f', precision={self.precision}')
        out = (f'{self.num_embeddings}, {self.embedding_dim}'
               f'{self._config_repr()}{precision}, '
               f'mode={"retrain" if self.is_retraining else "prune"}')
        try:
            nnz = self.num_nonzero()
        except FloatingPointError:  # Printing a diverged model must work.
            return out + ', nonzero=nan'
        out += f', nonzero={nnz}'
        if hasattr(self, 'num_meta_params'):
            out += f', meta_density={nnz / self.num_meta_params:.4f}'
        return out + f', full_table_fraction={nnz / self.num_full_params:.4f}'


def _check_sizes_on_load(module: 'CompositionalEmbedding', state_dict: Dict,
                         prefix: str, *args) -> None:
    # The tensors alone cannot tell two embeddings of another N but the same
    # b and d apart, although they hash entities to other rows.
    extra = state_dict.get(prefix + '_extra_state')
    if extra is None:
        return
    mine = module.get_extra_state()
    if isinstance(extra, dict):  # States before 'operation' composed sums.
        extra = dict(dict(operation='add'), **extra)
    diff = {k: (extra.get(k), v) for k, v in mine.items()
            if extra.get(k) != v} if isinstance(extra, dict) else extra
    if diff:
        raise RuntimeError(
            f"Cannot load the state of a CompositionalEmbedding with other "
            f"sizes or operation into '{prefix or 'self'}' (differences as "
            f"(state dict, module): {diff}; expected the sizes {mine}): the "
            f"entities would map to other meta rows or compose otherwise.")


class CompositionalEmbedding(SoftThresholdPruning):
    r"""The compositional embedding with regularized pruning from the
    `"Learning Compact Compositional Embeddings via Regularized Pruning for
    Recommendation" <https://arxiv.org/abs/2309.03518>`_ paper (CERP).

    A drop-in :class:`torch.nn.Embedding`: entity :math:`k < N` sums a row
    of each of two meta tables :math:`\mathbf{P}, \mathbf{Q} \in
    \mathbb{R}^{b \times d}` (see :func:`compose`), pruned by learnable
    soft thresholds (see :class:`SoftThresholdPruning`),

    .. math::
        \mathbf{e}_k = \hat{\mathbf{P}}_{k \bmod b} +
        \hat{\mathbf{Q}}_{\lfloor k / \lceil N/b \rceil \rfloor},
        \qquad \hat{\mathbf{P}} = \mathrm{sign}(\mathbf{P}) \odot
        \mathrm{ReLU}(|\mathbf{P}| - \sigma(\mathbf{S}_P)).

    Rows are unique per entity for :math:`b \geq \sqrt{N}`;
    :meth:`pruning_loss` keeps the zeros of the two tables complementary.
    :attr:`weight` is the differentiable :math:`N \times d` matrix, so
    :obj:`lightgcn.embedding = CompositionalEmbedding(N, 64, 5000)` works.
    With :obj:`operation='mul'` (not in the paper) the rows multiply,
    :math:`\mathbf{e}_k = \hat{\mathbf{P}}_{k \bmod b} \odot
    \hat{\mathbf{Q}}_{\lfloor k / \lceil N/b \rceil \rfloor}`, as in the
    quotient-remainder trick's product (:class:`~pyg_cerp.nn.QREmbedding`,
    whose initialisation it takes).
    With :obj:`precision='int8'` (or :obj:`'float16'`, :obj:`'int4'`),
    :attr:`weight` and
    :meth:`forward` compose the fake-quantised tables
    (:meth:`~SoftThresholdPruning.quantized_tables`), so that the model
    trains on, and scores, what :meth:`to_compact` at that precision serves.

    Args:
        num_embeddings (int): The number of entities :math:`N`.
        embedding_dim (int): The embedding size :math:`d`.
        bucket_size (int): The rows :math:`b` of each meta table,
            :math:`1 \leq b \leq N` (a warning for :math:`b < \sqrt{N}`, where
            some entities get identical embeddings).
        threshold_init (float, optional): The initial threshold logit; the
            official :obj:`-100.` prunes nothing at first.
            (default: :obj:`-100.`)
        check_index (bool, optional): Check that ids lie in :math:`[0, N)` in
            :meth:`forward` (it never synchronises the device).
            (default: :obj:`True`)
        device (torch.device, optional): The device.
        dtype (torch.dtype, optional): The floating point type.
        precision (str, optional): The value precision of the stored form
            that training simulates and :meth:`to_compact` and
            :mod:`pyg_cerp.memory` default to: :obj:`'float32'` (no
            simulation), :obj:`'float16'`, :obj:`'int8'` or :obj:`'int4'`
            (per-row scales, see :mod:`pyg_cerp.nn.quant`). (default: :obj:`'float32'`)
        operation (str, optional): How the two rows compose: :obj:`'add'`
            (CERP) or :obj:`'mul'` (element-wise product).
            (default: :obj:`'add'`)
    """
    pruned_names = (('P', 'threshold_P', 'mask_P'),
                    ('Q', 'threshold_Q', 'mask_Q'))

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 bucket_size: int, threshold_init: float = -100.,
                 check_index: bool = True,
                 device: Optional[torch.device] = None,
                 dtype: Optional[torch.dtype] = None,
                 precision: str = 'float32', operation: str = 'add') -> None:
        super().__init__()
        _check_sizes(num_embeddings, embedding_dim, 'bucket_size', bucket_size)
        self.operation = check_operation(operation)
        if bucket_size * bucket_size < num_embeddings:
            warnings.warn(
                f"'bucket_size'={bucket_size} is below sqrt(num_embeddings)="
                f"{math.sqrt(num_embeddings):.1f}: some entities share both "
                f"rows and get identical embeddings (use bucket_size >= "
                f"{math.ceil(math.sqrt(num_embeddings))})", stacklevel=2)
        self.bucket_size = bucket_size
        #: The number :math:`\lceil N/b \rceil` of entities per row of Q.
        self.rows_per_q = math.ceil(num_embeddings / bucket_size)
        #: The number of rows of Q that are used.
        self.num_q_rows_used = math.ceil(num_embeddings / self.rows_per_q)
        self._init_pruning(num_embeddings, embedding_dim,
                           (bucket_size, embedding_dim), threshold_init,
                           check_index, device, dtype, precision)
        self._register_load_state_dict_pre_hook(_check_sizes_on_load,
                                                with_module=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Re-initialises the tables (Xavier uniform; for
        :obj:`operation='mul'`, :math:`U(-s, s)` as
        :class:`~pyg_cerp.nn.QREmbedding`'s product), sets the threshold
        logits to :obj:`threshold_init` and leaves retrain mode."""
        super().reset_parameters()
        if self.operation == 'mul':
            s = (18. / (self.num_embeddings + self.embedding_dim))**0.25
            for table in self._get(0):
                torch.nn.init.uniform_(table, -s, s)

    def pruning_loss(self, index: Optional[Tensor] = None, K: float = 100.,
                     reduction: str = 'mean',
                     thresholds_only: bool = False) -> Tensor:
        r"""The complementary pruning regulariser of CERP,

        .. math::
            \mathcal{L}_{\textrm{prune}} = -\frac{1}{|\mathcal{B}|}
            \sum_{k \in \mathcal{B}} \| \tanh(K \cdot \mathbf{e}_k) \|_2^2,

        a smooth count of the non-zeros of the embeddings, minimal when the
        zeros of :math:`\hat{\mathbf{P}}, \hat{\mathbf{Q}}` do not overlap
        (in :math:`[-d, 0]` for :obj:`'mean'`; the official code sums). It
        counts the unquantised pruned tables whatever the :obj:`precision`
        (a quantiser keeps the non-zero pattern).

        Args:
            index (torch.Tensor, optional): The entity ids of the batch
                (:obj:`None`: all :math:`N`). (default: :obj:`None`)
            K (float, optional): The sharpness. (default: :obj:`100.`)
            reduction (str, optional): :obj:`'mean'` (over entities) or
                :obj:`'sum'`. (default: :obj:`'mean'`)
            thresholds_only (bool, optional): Detach the values
                :math:`\mathbf{P}, \mathbf{Q}` inside the term, so that its
                gradient reaches the threshold logits only (the same loss
                value; no gradient on the values, which otherwise grow away
                from the thresholds against it). Not official; the
                scheduler's :obj:`thresholds_only`.
                (default: :obj:`False`)
        """
        if reduction not in ('mean', 'sum'):
            raise ValueError(f"'reduction' must be 'mean' or 'sum' "
                             f"(got {reduction!r})")
        tables = self.pruned_tables()
        if thresholds_only and not self.is_retraining:
            tables = tuple(soft_threshold(t.detach(), s) for t, s in zip(
                self._get(0), self._get(1)))
        emb = (compose(*tables, self.num_embeddings, self.rows_per_q,
                       self.operation)
               if index is None else self._lookup(index, tables))
        emb = emb.reshape(-1, self.embedding_dim)
        out = -_TanhSquareSum.apply(emb, float(K))
        return out / max(emb.size(0), 1) if reduction == 'mean' else out

    @property
    def weight(self) -> Tensor:
        r"""The full, differentiable :math:`N \times d` matrix, recomputed on
        every access (see :class:`ComposedWeight`)."""
        return computed_weight(
            compose(*self.quantized_tables(), self.num_embeddings,
                    self.rows_per_q, self.operation), self)

    def hash_index(self, index: Tensor) -> Tuple[Tensor, Tensor]:
        r"""The meta rows :math:`(k \bmod b, \lfloor k / \lceil N/b \rceil
        \rfloor)` of the ids :obj:`index`."""
        return index % self.bucket_size, index // self.rows_per_q

    def forward(self, index: Tensor) -> Tensor:
        r"""The embeddings :obj:`[*index.shape, d]` of the integer ids
        :obj:`index` in :math:`[0, N)`."""
        return self._lookup(index, self.quantized_tables())

    def _lookup(self, index: Tensor, tables: Tuple[Tensor, ...]) -> Tensor:
        _check_ids(index, self.num_embeddings, self.check_index)
        return compose(*tables, index, self.rows_per_q, self.operation)

    @property
    def num_meta_params(self) -> int:
        r"""The size :math:`2bd` of the two meta tables."""
        return 2 * self.bucket_size * self.embedding_dim

    def meta_density(self) -> float:
        r"""Non-zeros over :math:`2bd` (the paper's sparsity is one minus
        it)."""
        return self.num_nonzero() / self.num_meta_params

    def to_compact(self, dtype: Optional[Union[str, torch.dtype]] = None,
                   layout: str = 'auto',
                   decode: str = 'cache') -> 'CompactEmbedding':
        r"""The inference-only :class:`~pyg_cerp.nn.compact.CompactEmbedding`
        (arguments as its :meth:`from_compositional`; :obj:`dtype=None`: the
        :obj:`precision`, whose :attr:`weight` equals this module's, bit for
        bit)."""
        from pyg_cerp.nn.compact import CompactEmbedding
        dtype = self.precision if dtype is None else dtype
        return CompactEmbedding.from_compositional(self, dtype=dtype,
                                                   layout=layout,
                                                   decode=decode)

    def get_extra_state(self) -> Dict[str, Any]:
        r"""The sizes :math:`N, d, b` and the :obj:`operation` (key
        :obj:`'_extra_state'` of the state dict; checked on load, a state
        without :obj:`operation` is :obj:`'add'`)."""
        return dict(num_embeddings=self.num_embeddings,
                    embedding_dim=self.embedding_dim,
                    bucket_size=self.bucket_size, operation=self.operation)

    def set_extra_state(self, state: Any) -> None:
        pass  # Checked, with the key prefix, by `_check_sizes_on_load`.

    def _config_repr(self) -> str:
        op = '' if self.operation == 'add' else f', operation={self.operation}'
        return f', bucket_size={self.bucket_size}{op}'
