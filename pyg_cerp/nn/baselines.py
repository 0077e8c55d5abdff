r"""Baseline embedding modules for the memory-vs-accuracy benchmark of CERP.

Every class has the interface of
:class:`~pyg_cerp.nn.CompositionalEmbedding`: it plugs into PyG's
:class:`~torch_geometric.nn.models.LightGCN` through :attr:`weight` (the
differentiable :math:`N \times d` matrix) and into
:class:`~pyg_cerp.nn.MLPScorer` through :meth:`forward`, and it reports
:meth:`num_nonzero`, :attr:`num_full_params`, :meth:`full_table_fraction`
and, through :meth:`stored_tables`, the bytes of its stored form (see
:mod:`pyg_cerp.memory`).

* :class:`FullEmbedding`: the full table (a :class:`torch.nn.Embedding`
  with counting helpers), the accuracy ceiling;
* :class:`PEPEmbedding`: PEP, element-wise learnable soft-threshold pruning
  of the full table; :meth:`PEPEmbedding.from_magnitude` builds the
  magnitude-pruning baseline (a trained full table, its largest entries
  kept, the mask frozen for fine-tuning);
* :class:`QREmbedding`: the quotient-remainder trick (unpruned; sum or
  element-wise product);
* :class:`HashEmbedding`: the hashing trick (one shared table, one hash).

CERP without its regulariser is :class:`~pyg_cerp.nn.CompositionalEmbedding`
trained with :math:`\gamma = 0`; it needs no class.
"""
import math
import weakref
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Module, Parameter

from pyg_cerp.nn.compositional import ComposedWeight, soft_threshold
from pyg_cerp.utils.validation import (check_float, check_index,
                                       check_index_dtype, check_int)

__all__ = [
    'FullEmbedding',
    'PEPEmbedding',
    'QREmbedding',
    'HashEmbedding',
    'budget_rows',
    'magnitude_mask',
]


class ComputedWeight(ComposedWeight):
    r"""The :math:`N \times d` matrix returned by :attr:`weight` of the
    baselines that compute it (:class:`PEPEmbedding`, :class:`QREmbedding`,
    :class:`HashEmbedding`).

    The same mechanism as :class:`~pyg_cerp.nn.compositional.ComposedWeight`
    (an in-place initialiser, *e.g.* PyG's :meth:`LightGCN.reset_parameters`,
    re-initialises the owning module; any other in-place operation raises),
    with an error message naming the owning class.
    """
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        try:
            return super().__torch_function__(func, types, args, kwargs)
        except RuntimeError as error:
            if "'CompositionalEmbedding.weight' in place" not in str(error):
                raise
            owner = args[0]._owner() if args[0]._owner is not None else None
            name = type(owner).__name__ if owner is not None else 'module'
            raise RuntimeError(
                f"'{getattr(func, '__name__', func)}' modifies "
                f"'{name}.weight' in place, but this matrix is computed "
                f"from the stored tables on every access, so the change "
                f"would be lost. Modify the tables instead, or call "
                f"'reset_parameters()' to re-initialise the embedding."
            ) from None


def _computed_weight(tensor: Tensor, owner: Module) -> Tensor:
    out = tensor.as_subclass(ComputedWeight)
    out._owner = weakref.ref(owner)
    return out


def budget_rows(num_embeddings: int, fraction: float) -> int:
    r"""The number of :math:`d`-dimensional rows a budget of
    :obj:`fraction` :math:`\cdot N d` values buys: :math:`\lfloor f N
    \rfloor`.

    Args:
        num_embeddings (int): The number of entities :math:`N`.
        fraction (float): The budget :math:`f \in (0, 1]` as a fraction of
            the full table.
    """
    check_int('num_embeddings', num_embeddings)
    if not 0. < float(fraction) <= 1.:
        raise ValueError(f"'fraction' must be in (0, 1] (got {fraction})")
    # The small epsilon protects against 0.1 * 100 = 10.000000000000002.
    return int(math.floor(fraction * num_embeddings + 1e-9))


@torch.no_grad()
def magnitude_mask(weight: Tensor, num_values: int) -> Tensor:
    r"""The boolean mask of the :obj:`num_values` largest :math:`|w|` of
    :obj:`weight` (exactly that many; among equal magnitudes, the first in
    row-major order). Entries that are exactly zero are kept only if fewer
    non-zeros exist, so a mask may hold zeros of the table.

    Args:
        weight (torch.Tensor): The table.
        num_values (int): How many entries to keep, in
            :math:`[0, \text{weight.numel()}]`.
    """
    numel = weight.numel()
    if not 0 <= int(num_values) <= numel:
        raise ValueError(f"'num_values' must be in [0, {numel}] "
                         f"(got {num_values})")
    flat = weight.detach().abs().flatten()
    # A stable descending sort: exact count, deterministic ties.
    order = torch.sort(flat, descending=True, stable=True).indices
    mask = torch.zeros(numel, dtype=torch.bool, device=weight.device)
    mask[order[:int(num_values)]] = True
    return mask.view_as(weight)


class _CountingMixin:
    r"""Counting shared by the baselines (the tables are given by
    :meth:`stored_tables`)."""
    num_embeddings: int
    embedding_dim: int

    @torch.no_grad()
    def num_nonzero(self) -> int:
        r"""The number of non-zero stored values (a :class:`FloatingPointError`
        if a table holds :obj:`nan`, which would count as non-zero)."""
        nnz = nan = 0
        for name, t, _ in self.stored_tables():
            n, bad = torch.stack([t.count_nonzero(), t.isnan().sum()]).tolist()
            nnz, nan = nnz + n, nan + bad
        if nan:
            raise FloatingPointError(
                f"{type(self).__name__} holds {nan} nan value(s) (training "
                f"diverged), so its memory cannot be counted. Lower the "
                f"learning rates or check the inputs for nan/inf.")
        return nnz

    @property
    def num_full_params(self) -> int:
        r"""The size :math:`Nd` of the full embedding table."""
        return self.num_embeddings * self.embedding_dim

    def full_table_fraction(self) -> float:
        r"""Non-zeros over :math:`Nd`."""
        return self.num_nonzero() / self.num_full_params

    def nbytes(self) -> int:
        r"""The bytes of the stored form (see :mod:`pyg_cerp.memory`)."""
        from pyg_cerp.memory import stored_nbytes
        return stored_nbytes(self)


class FullEmbedding(_CountingMixin, torch.nn.Embedding):
    r"""The full :math:`N \times d` embedding table: a plain
    :class:`torch.nn.Embedding` (it *is* one) with the counting helpers of the
    compressed embeddings, the accuracy ceiling of the benchmark.

    Its stored form is the dense table, :math:`4Nd` bytes.

    Unlike :class:`torch.nn.Embedding` (standard normal),
    :meth:`reset_parameters` uses Xavier uniform initialisation, as
    :class:`~pyg_cerp.nn.CompositionalEmbedding` and PyG's
    :class:`~torch_geometric.nn.models.LightGCN` do, so that the backbones
    start from the same scale whatever embedding they use.

    Args:
        num_embeddings (int): The number of entities :math:`N`.
        embedding_dim (int): The embedding size :math:`d`.
        check_index (bool, optional): If set to :obj:`False`, does not check
            ids in :meth:`forward`. (default: :obj:`True`)
        device (torch.device, optional): The device of the table.
        dtype (torch.dtype, optional): The floating point type of the table.
    """
    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        check_index: bool = True,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        check_int('num_embeddings', num_embeddings)
        check_int('embedding_dim', embedding_dim)
        self.check_index = check_index
        super().__init__(num_embeddings, embedding_dim, device=device,
                         dtype=dtype)

    def reset_parameters(self) -> None:
        r"""Re-initialises the table (Xavier uniform)."""
        torch.nn.init.xavier_uniform_(self.weight)

    def forward(self, index: Tensor) -> Tensor:
        r"""Looks up the rows :obj:`index` (integer ids in :math:`[0, N)` of
        any shape); returns :obj:`[*index.shape, d]`."""
        if getattr(self, 'check_index', True):
            check_index(index, self.num_embeddings, 'index')
        else:
            check_index_dtype(index, 'index')
        return super().forward(index)

    def stored_tables(self) -> List[Tuple[str, Tensor, bool]]:
        r"""The stored tables as :obj:`(name, table, pruned)` triples."""
        return [('weight', self.weight.detach(), False)]

    def num_nonzero(self) -> int:
        r"""The number :math:`Nd` of stored values (stored densely, zeros
        included)."""
        return self.num_full_params

    def extra_repr(self) -> str:
        return f'{self.num_embeddings}, {self.embedding_dim}'


class PEPEmbedding(_CountingMixin, Module):
    r"""Element-wise learnable soft-threshold pruning of the full table, from
    the `"Learnable Embedding Sizes for Recommender Systems"
    <https://arxiv.org/abs/2101.07577>`_ paper (PEP), with the
    element-wise ("feature-dimension") threshold granularity:

    .. math::
        \hat{\mathbf{V}} = \mathrm{sign}(\mathbf{V}) \odot
        \mathrm{ReLU}(|\mathbf{V}| - \sigma(\mathbf{S})),
        \qquad \mathbf{e}_k = \hat{\mathbf{V}}_k,

    with :math:`\mathbf{V}, \mathbf{S} \in \mathbb{R}^{N \times d}`: the same
    threshold form as :class:`~pyg_cerp.nn.CompositionalEmbedding`, applied
    to the full table instead of two meta tables. Like PEP (and CERP),
    after pruning, :meth:`freeze_masks` freezes the non-zero pattern and can
    rewind the values to their initial state (lottery-ticket retraining).

    PEP has no complementarity regulariser, so the class has no
    :meth:`pruning_loss`: a training loop that adds
    :math:`\gamma \mathcal{L}_{\textrm{prune}}` must skip it.

    Its stored form is the pruned table :math:`\hat{\mathbf{V}}` (dense, CSR
    or bitmap, whichever is smallest; see :mod:`pyg_cerp.memory`).

    Args:
        num_embeddings (int): The number of entities :math:`N`.
        embedding_dim (int): The embedding size :math:`d`.
        threshold_init (float, optional): The initial value of every
            threshold logit; the default :obj:`-100.` matches
            :class:`~pyg_cerp.nn.CompositionalEmbedding` (nothing pruned at
            first), so that both are driven alike. (default: :obj:`-100.`)
        check_index (bool, optional): If set to :obj:`False`, does not check
            ids in :meth:`forward`. (default: :obj:`True`)
        device (torch.device, optional): The device of the parameters.
        dtype (torch.dtype, optional): The floating point type of the
            parameters.
    """
    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        threshold_init: float = -100.,
        check_index: bool = True,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        check_int('num_embeddings', num_embeddings)
        check_int('embedding_dim', embedding_dim)
        check_float('threshold_init', threshold_init)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.threshold_init = float(threshold_init)
        self.check_index = check_index
        shape = (num_embeddings, embedding_dim)
        factory = dict(device=device, dtype=dtype)
        self.V = Parameter(torch.empty(shape, **factory))
        self.threshold = Parameter(torch.empty(shape, **factory))
        self.register_buffer('mask',
                             torch.ones(shape, dtype=torch.bool, device=device))
        self.register_buffer('retraining',
                             torch.zeros((), dtype=torch.bool, device=device))
        self.register_load_state_dict_post_hook(self._sync_mode_on_load)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Re-initialises :math:`\mathbf{V}` (Xavier uniform), sets every
        threshold logit to :obj:`threshold_init` and leaves retrain mode."""
        torch.nn.init.xavier_uniform_(self.V)
        with torch.no_grad():
            self.threshold.fill_(self.threshold_init)
            self.mask.fill_(True)
            self.retraining.fill_(False)
        self.threshold.requires_grad_(True)

    @property
    def is_retraining(self) -> bool:
        r"""Whether the mask is frozen (see :meth:`freeze_masks`)."""
        return bool(self.retraining)

    def initial_state(self) -> Dict[str, Tensor]:
        r"""A copy of :math:`\mathbf{V}` (key :obj:`'V'`), to be passed as
        :obj:`rewind_to` in :meth:`freeze_masks` later."""
        return {'V': self.V.detach().clone()}

    def pruned_table(self) -> Tensor:
        r"""The pruned table :math:`\hat{\mathbf{V}}` (in retrain mode,
        :math:`\mathbf{V} \odot \mathbf{M}`)."""
        if self.is_retraining:
            return self.V * self.mask
        return soft_threshold(self.V, self.threshold)

    @torch.no_grad()
    def masks(self) -> Tuple[Tensor]:
        r"""The boolean non-zero pattern of :math:`\hat{\mathbf{V}}`, as a
        one-element tuple (the masks of
        :class:`~pyg_cerp.nn.CompositionalEmbedding` are a pair)."""
        return (self.pruned_table() != 0, )

    @torch.no_grad()
    def freeze_masks(
        self,
        masks: Optional[Tuple[Tensor]] = None,
        rewind_to: Optional[Dict[str, Tensor]] = None,
    ) -> None:
        r"""Switches to retrain mode: freezes the non-zero pattern as a binary
        mask :math:`\mathbf{M}` and switches the thresholds off.

        Args:
            masks ((torch.Tensor,), optional): The mask to freeze, as returned
                by :meth:`masks` (a bare tensor is accepted too). If
                :obj:`None`, the current pattern. (default: :obj:`None`)
            rewind_to (Dict[str, torch.Tensor], optional): Values for
                :math:`\mathbf{V}` (key :obj:`'V'`, as returned by
                :meth:`initial_state`). If :obj:`None`, the current pruned
                values are kept. (default: :obj:`None`)
        """
        if masks is None:
            masks = self.masks()
        mask = masks if isinstance(masks, Tensor) else masks[0]
        if not isinstance(masks, Tensor) and len(masks) != 1:
            raise ValueError(f"'masks' must hold exactly one mask for "
                             f"PEPEmbedding (got {len(masks)})")
        shape = (self.num_embeddings, self.embedding_dim)
        if tuple(mask.shape) != shape:
            raise ValueError(f"Mask must have shape {shape} "
                             f"(got {tuple(mask.shape)})")
        if rewind_to is None:
            self.V.copy_(self.pruned_table())
        else:
            if 'V' not in rewind_to:
                raise KeyError(f"'rewind_to' lacks ['V'] (got keys "
                               f"{sorted(rewind_to)})")
            if tuple(rewind_to['V'].shape) != shape:
                raise ValueError(f"'rewind_to['V']' must have shape {shape} "
                                 f"(got {tuple(rewind_to['V'].shape)})")
            self.V.copy_(rewind_to['V'])
        self.mask.copy_(mask.to(torch.bool))
        self.retraining.fill_(True)
        self.threshold.requires_grad_(False)

    @classmethod
    @torch.no_grad()
    def from_magnitude(cls, weight: Tensor, fraction: float,
                       **kwargs) -> 'PEPEmbedding':
        r"""Magnitude pruning of a trained full table: a
        :class:`PEPEmbedding` in retrain mode holding :obj:`weight` with its
        :math:`k = \lfloor f N d \rfloor` largest-magnitude entries kept
        (exactly :math:`k`, ties broken by position, see
        :func:`magnitude_mask`) and the mask frozen, ready for fine-tuning
        (the "magnitude" baseline).

        Args:
            weight (torch.Tensor): The trained :math:`N \times d` table.
            fraction (float): The budget :math:`f \in (0, 1]` of the
                :math:`Nd` values.
            **kwargs: Passed on to the constructor (*e.g.*,
                :obj:`check_index`).
        """
        if weight.dim() != 2:
            raise ValueError(f"'weight' must be an N x d table (got shape "
                             f"{tuple(weight.shape)})")
        n, d = weight.shape
        k = budget_rows(n * d, fraction)
        if k < 1:
            raise ValueError(f"The budget fraction={fraction} of {n * d} "
                             f"values keeps none")
        kwargs.setdefault('device', weight.device)
        kwargs.setdefault('dtype', weight.dtype)
        out = cls(n, d, **kwargs)
        out.freeze_magnitude(weight, fraction)
        return out

    @torch.no_grad()
    def freeze_magnitude(self, weight: Tensor, fraction: float) -> None:
        r"""Loads the trained table :obj:`weight` into :math:`\mathbf{V}`
        and freezes the mask of its :math:`\lfloor f N d \rfloor`
        largest-magnitude entries (retrain mode), in place (*e.g.*, after a
        backbone's :meth:`reset_parameters`); see :meth:`from_magnitude`.

        Args:
            weight (torch.Tensor): The trained :math:`N \times d` table.
            fraction (float): The budget :math:`f \in (0, 1]`.
        """
        shape = (self.num_embeddings, self.embedding_dim)
        if tuple(weight.shape) != shape:
            raise ValueError(f"'weight' must have shape {shape} (got "
                             f"{tuple(weight.shape)})")
        k = budget_rows(weight.numel(), fraction)
        if k < 1:
            raise ValueError(f"The budget fraction={fraction} of "
                             f"{weight.numel()} values keeps none")
        self.freeze_masks((magnitude_mask(weight, k), ),
                          rewind_to={'V': weight.detach().to(self.V)})

    @staticmethod
    def _sync_mode_on_load(module: 'PEPEmbedding', incompatible_keys) -> None:
        module.threshold.requires_grad_(not module.is_retraining)

    @property
    def weight(self) -> Tensor:
        r"""The pruned, differentiable :math:`N \times d` matrix
        :math:`\hat{\mathbf{V}}`."""
        return _computed_weight(self.pruned_table(), self)

    def forward(self, index: Tensor) -> Tensor:
        r"""Looks up the pruned rows :obj:`index` (integer ids in
        :math:`[0, N)` of any shape); returns :obj:`[*index.shape, d]`."""
        if self.check_index:
            check_index(index, self.num_embeddings, 'index')
        else:
            check_index_dtype(index, 'index')
        if self.is_retraining:
            return self.V[index] * self.mask[index]
        return soft_threshold(self.V[index], self.threshold[index])

    def stored_tables(self) -> List[Tuple[str, Tensor, bool]]:
        r"""The stored tables as :obj:`(name, table, pruned)` triples."""
        return [('V', self.pruned_table().detach(), True)]

    def extra_repr(self) -> str:
        mode = 'retrain' if self.is_retraining else 'prune'
        return (f'{self.num_embeddings}, {self.embedding_dim}, mode={mode}, '
                f'nonzero={self.num_nonzero()}, '
                f'full_table_fraction={self.full_table_fraction():.4f}')


class QREmbedding(_CountingMixin, Module):
    r"""The quotient-remainder trick from the `"Compositional Embeddings Using
    Complementary Partitions for Memory-Efficient Recommendation Systems"
    <https://arxiv.org/abs/1909.02107>`_ paper (Shi et al.), unpruned, with
    the sum or the element-wise product (the paper's default) combiner:

    .. math::
        \mathbf{e}_k = \mathbf{R}_{k \bmod m} +
        \mathbf{Q}_{\lfloor k / m \rfloor}
        \quad \text{or} \quad
        \mathbf{e}_k = \mathbf{R}_{k \bmod m} \odot
        \mathbf{Q}_{\lfloor k / m \rfloor},

    with :math:`\mathbf{R} \in \mathbb{R}^{m \times d}` and
    :math:`\mathbf{Q} \in \mathbb{R}^{\lceil N/m \rceil \times d}`. Every
    entity gets a unique pair of rows. It stores
    :math:`(m + \lceil N/m \rceil) d` values densely.

    Use :meth:`for_budget` to pick :math:`m` for a memory budget.

    Initialisation: with :obj:`operation='add'`, both tables Xavier uniform.
    With :obj:`operation='mul'`, a product of two Xavier-uniform values
    would start :math:`\sim 10^{-3}` times smaller than a full table, so
    both tables are drawn from :math:`U(-s, s)` with :math:`s =
    (3 t^2)^{1/4}`, :math:`t = \sqrt{6 / (N + d)}`: the product then has
    the variance :math:`t^2/3` of a Xavier-uniform :math:`N \times d`
    table.

    Args:
        num_embeddings (int): The number of entities :math:`N`.
        embedding_dim (int): The embedding size :math:`d`.
        num_remainder (int): The rows :math:`m` of the remainder table,
            :math:`1 \leq m \leq N`.
        operation (str, optional): :obj:`'add'` or :obj:`'mul'`.
            (default: :obj:`'add'`)
        check_index (bool, optional): If set to :obj:`False`, does not check
            ids in :meth:`forward`. (default: :obj:`True`)
        device (torch.device, optional): The device of the parameters.
        dtype (torch.dtype, optional): The floating point type of the
            parameters.
    """
    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        num_remainder: int,
        operation: str = 'add',
        check_index: bool = True,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        check_int('num_embeddings', num_embeddings)
        check_int('embedding_dim', embedding_dim)
        check_int('num_remainder', num_remainder)
        if operation not in ('add', 'mul'):
            raise ValueError(f"'operation' must be 'add' or 'mul' "
                             f"(got {operation!r})")
        self.operation = operation
        if num_remainder > num_embeddings:
            raise ValueError(f"'num_remainder' must be in [1, num_embeddings="
                             f"{num_embeddings}] (got {num_remainder})")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.num_remainder = num_remainder
        #: The rows :math:`\lceil N/m \rceil` of the quotient table.
        self.num_quotient = math.ceil(num_embeddings / num_remainder)
        self.check_index = check_index
        factory = dict(device=device, dtype=dtype)
        self.R = Parameter(torch.empty(num_remainder, embedding_dim,
                                       **factory))
        self.Q = Parameter(torch.empty(self.num_quotient, embedding_dim,
                                       **factory))
        self.reset_parameters()

    @staticmethod
    def num_rows(num_embeddings: int, num_remainder: int) -> int:
        r"""The stored rows :math:`m + \lceil N/m \rceil`."""
        return num_remainder + math.ceil(num_embeddings / num_remainder)

    @classmethod
    def for_budget(cls, num_embeddings: int, embedding_dim: int,
                   fraction: float, **kwargs) -> 'QREmbedding':
        r"""The :class:`QREmbedding` with the largest :math:`m` whose
        :math:`(m + \lceil N/m \rceil) d` values fit in :obj:`fraction`
        :math:`\cdot Nd`, *i.e.*, that uses the budget as fully as the
        structure allows. For :math:`m \geq \sqrt{N}`,
        :math:`m + \lceil N/m \rceil` is non-decreasing in :math:`m`, so it is
        found by bisection; the smallest possible size,
        :math:`\approx 2\sqrt{N}` rows at :math:`m = \lceil \sqrt{N} \rceil`,
        bounds the budgets QR can meet.

        Args:
            num_embeddings (int): The number of entities :math:`N`.
            embedding_dim (int): The embedding size :math:`d`.
            fraction (float): The budget :math:`f \in (0, 1]`.
            **kwargs: Passed on to the constructor.

        Raises:
            ValueError: If even :math:`m = \lceil \sqrt{N} \rceil` exceeds the
                budget.
        """
        rows = budget_rows(num_embeddings, fraction)
        lo = math.isqrt(num_embeddings - 1) + 1 if num_embeddings > 1 else 1
        if cls.num_rows(num_embeddings, lo) > rows:
            need = cls.num_rows(num_embeddings, lo) / num_embeddings
            raise ValueError(
                f"A QREmbedding of {num_embeddings} entities needs at least "
                f"{cls.num_rows(num_embeddings, lo)} rows (fraction "
                f"{need:.5f}), more than the budget fraction={fraction} "
                f"allows ({rows} rows)")
        hi = num_embeddings
        while lo < hi:  # Largest m in [lo, hi] with num_rows(m) <= rows.
            mid = (lo + hi + 1) // 2
            if cls.num_rows(num_embeddings, mid) <= rows:
                lo = mid
            else:
                hi = mid - 1
        return cls(num_embeddings, embedding_dim, lo, **kwargs)

    def reset_parameters(self) -> None:
        r"""Re-initialises both tables (see the class docstring)."""
        if self.operation == 'add':
            torch.nn.init.xavier_uniform_(self.R)
            torch.nn.init.xavier_uniform_(self.Q)
            return
        t2 = 6. / (self.num_embeddings + self.embedding_dim)
        s = (3. * t2)**0.25
        torch.nn.init.uniform_(self.R, -s, s)
        torch.nn.init.uniform_(self.Q, -s, s)

    def _combine(self, r: Tensor, q: Tensor) -> Tensor:
        return r * q if self.operation == 'mul' else r + q

    def hash_index(self, index: Tensor) -> Tuple[Tensor, Tensor]:
        r"""The rows :math:`(k \bmod m, \lfloor k/m \rfloor)` of
        :obj:`index`."""
        return index % self.num_remainder, index // self.num_remainder

    @property
    def weight(self) -> Tensor:
        r"""The differentiable :math:`N \times d` matrix."""
        n, m, q, d = (self.num_embeddings, self.num_remainder,
                      self.num_quotient, self.embedding_dim)
        # Entity k = i * m + j uses R[j] and Q[i]: tile R, repeat rows of Q.
        r_part = self.R.unsqueeze(0).expand(q, m, d).reshape(q * m, d)[:n]
        q_part = self.Q.unsqueeze(1).expand(q, m, d).reshape(q * m, d)[:n]
        return _computed_weight(self._combine(r_part, q_part), self)

    def forward(self, index: Tensor) -> Tensor:
        r"""Looks up the embeddings of :obj:`index` (integer ids in
        :math:`[0, N)` of any shape); returns :obj:`[*index.shape, d]`."""
        if self.check_index:
            check_index(index, self.num_embeddings, 'index')
        else:
            check_index_dtype(index, 'index')
        r_row, q_row = self.hash_index(index)
        return self._combine(self.R[r_row], self.Q[q_row])

    def stored_tables(self) -> List[Tuple[str, Tensor, bool]]:
        r"""The stored tables as :obj:`(name, table, pruned)` triples."""
        return [('R', self.R.detach(), False), ('Q', self.Q.detach(), False)]

    def num_nonzero(self) -> int:
        r"""The number :math:`(m + \lceil N/m \rceil) d` of stored values
        (stored densely, zeros included)."""
        return (self.num_remainder + self.num_quotient) * self.embedding_dim

    def extra_repr(self) -> str:
        return (f'{self.num_embeddings}, {self.embedding_dim}, '
                f'num_remainder={self.num_remainder}, '
                f'num_quotient={self.num_quotient}, '
                f'operation={self.operation}, '
                f'full_table_fraction={self.full_table_fraction():.4f}')


class HashEmbedding(_CountingMixin, Module):
    r"""The hashing trick: every entity reads one row of a single shared
    table :math:`\mathbf{W} \in \mathbb{R}^{m \times d}`,

    .. math::
        \mathbf{e}_k = \mathbf{W}_{h(k)},

    with, for :obj:`hash='universal'` (default), the universal hash of
    Carter and Wegman,

    .. math::
        h(k) = ((a k + c) \bmod p) \bmod m, \qquad p = 2^{31} - 1,

    where :math:`a \in [1, p)` and :math:`c \in [0, p)` are drawn once from
    :obj:`seed` (and stored as buffers), or, for :obj:`hash='mod'`,
    :math:`h(k) = k \bmod m`. (With users and items numbered consecutively,
    :math:`k \bmod m` makes entity :math:`k` collide exactly with
    :math:`k \pm m, k \pm 2m, \ldots`; the universal hash scatters the
    collisions.) Entities that collide share their embedding. It stores
    :math:`md` values densely (:math:`a, c` are ignored).

    Use :meth:`for_budget` to pick :math:`m` for a memory budget.

    Args:
        num_embeddings (int): The number of entities :math:`N`
            (:math:`N < 2^{31} - 1`).
        embedding_dim (int): The embedding size :math:`d`.
        num_buckets (int): The rows :math:`m` of the table,
            :math:`1 \leq m \leq N`.
        hash (str, optional): :obj:`'universal'` or :obj:`'mod'`.
            (default: :obj:`'universal'`)
        seed (int, optional): The seed for :math:`a` and :math:`c`.
            (default: :obj:`0`)
        check_index (bool, optional): If set to :obj:`False`, does not check
            ids in :meth:`forward`. (default: :obj:`True`)
        device (torch.device, optional): The device of the parameters.
        dtype (torch.dtype, optional): The floating point type of the
            parameters.
    """
    PRIME = 2**31 - 1

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        num_buckets: int,
        hash: str = 'universal',
        seed: int = 0,
        check_index: bool = True,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        check_int('num_embeddings', num_embeddings)
        check_int('embedding_dim', embedding_dim)
        check_int('num_buckets', num_buckets)
        if num_buckets > num_embeddings:
            raise ValueError(f"'num_buckets' must be in [1, num_embeddings="
                             f"{num_embeddings}] (got {num_buckets})")
        if num_embeddings >= self.PRIME:
            raise ValueError(f"'num_embeddings' must be below 2^31 - 1 "
                             f"(got {num_embeddings})")
        if hash not in ('universal', 'mod'):
            raise ValueError(f"'hash' must be 'universal' or 'mod' "
                             f"(got {hash!r})")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.num_buckets = num_buckets
        self.hash = hash
        self.seed = seed
        self.check_index = check_index
        gen = torch.Generator().manual_seed(seed)
        a = int(torch.randint(1, self.PRIME, (), generator=gen))
        c = int(torch.randint(0, self.PRIME, (), generator=gen))
        self.register_buffer('hash_a', torch.tensor(a, device=device))
        self.register_buffer('hash_c', torch.tensor(c, device=device))
        self.W = Parameter(torch.empty(num_buckets, embedding_dim,
                                       device=device, dtype=dtype))
        self.reset_parameters()

    @classmethod
    def for_budget(cls, num_embeddings: int, embedding_dim: int,
                   fraction: float, **kwargs) -> 'HashEmbedding':
        r"""The :class:`HashEmbedding` with
        :math:`m = \lfloor f N \rfloor` rows, *i.e.*, :math:`f \cdot Nd`
        values.

        Args:
            num_embeddings (int): The number of entities :math:`N`.
            embedding_dim (int): The embedding size :math:`d`.
            fraction (float): The budget :math:`f \in (0, 1]`.
            **kwargs: Passed on to the constructor.
        """
        rows = budget_rows(num_embeddings, fraction)
        if rows < 1:
            raise ValueError(f"The budget fraction={fraction} of "
                             f"{num_embeddings} entities buys no row")
        return cls(num_embeddings, embedding_dim, rows, **kwargs)

    def reset_parameters(self) -> None:
        r"""Re-initialises the table (Xavier uniform); the hash stays."""
        torch.nn.init.xavier_uniform_(self.W)

    def hash_index(self, index: Tensor) -> Tensor:
        r"""The rows :math:`h(k)` of the ids :obj:`index`."""
        index = index.long()
        if self.hash == 'mod':
            return index % self.num_buckets
        # a, k < 2^31, so a * k + c < 2^63: no int64 overflow.
        return (self.hash_a * index + self.hash_c) % self.PRIME % \
            self.num_buckets

    @property
    def weight(self) -> Tensor:
        r"""The differentiable :math:`N \times d` matrix."""
        rows = self.hash_index(
            torch.arange(self.num_embeddings, device=self.W.device))
        return _computed_weight(self.W[rows], self)

    def forward(self, index: Tensor) -> Tensor:
        r"""Looks up the embeddings of :obj:`index` (integer ids in
        :math:`[0, N)` of any shape); returns :obj:`[*index.shape, d]`."""
        if self.check_index:
            check_index(index, self.num_embeddings, 'index')
        else:
            check_index_dtype(index, 'index')
        return self.W[self.hash_index(index)]

    def stored_tables(self) -> List[Tuple[str, Tensor, bool]]:
        r"""The stored tables as :obj:`(name, table, pruned)` triples."""
        return [('W', self.W.detach(), False)]

    def num_nonzero(self) -> int:
        r"""The number :math:`md` of stored values (stored densely, zeros
        included)."""
        return self.num_buckets * self.embedding_dim

    def extra_repr(self) -> str:
        return (f'{self.num_embeddings}, {self.embedding_dim}, '
                f'num_buckets={self.num_buckets}, hash={self.hash}, '
                f'full_table_fraction={self.full_table_fraction():.4f}')
