r"""Exact rows for the most frequent entities, a compressed embedding for the
rest (not in the paper): :class:`HybridEmbedding`."""
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Module, Parameter

from pyg_cerp.memory import TableBytes, layout_nbytes, stored_tables
from pyg_cerp.nn.compositional import _check_ids, _Counts, computed_weight
from pyg_cerp.nn.quant import fake_quantize
from pyg_cerp.utils.validation import check_int

__all__ = ['HybridEmbedding', 'exact_ids_nbytes', 'exact_nbytes',
           'exact_rows_for_nbytes', 'most_frequent']

# Read from the base embedding when this module lacks them: the pruning
# interface of PruningScheduler (`P`, `Q`, `masks`, ...) and its sizes.
_DELEGATED = frozenset({
    'P', 'Q', 'V', 'pruned_tables', 'quantized_tables', 'masks',
    'is_retraining', 'num_meta_params', 'meta_density', 'bucket_size',
    'rows_per_q', 'operation', 'threshold_init'
})


def exact_ids_nbytes(num_embeddings: int, num_exact: int) -> int:
    r"""The stored bytes of which :math:`k` of :math:`N` entities have exact
    rows: the cheaper of :math:`k` :obj:`int32` ids and a bitmap of
    :math:`\lceil N/8 \rceil` bytes (the row of an entity is the rank of its
    bit, derived at load); :obj:`0` for :math:`k = 0`."""
    if num_exact == 0:
        return 0
    return min(4 * int(num_exact), (int(num_embeddings) + 7) // 8)


def exact_nbytes(num_embeddings: int, embedding_dim: int, num_exact: int,
                 precision: str = 'float32') -> int:
    r"""The stored bytes of :math:`k` exact rows of :math:`N`: dense rows at
    :obj:`precision` (int8: a :obj:`float32` scale each) and
    :func:`exact_ids_nbytes`."""
    return layout_nbytes(num_exact, embedding_dim, num_exact * embedding_dim,
                         'dense', precision) + exact_ids_nbytes(
                             num_embeddings, num_exact)


def exact_rows_for_nbytes(num_embeddings: int, embedding_dim: int,
                          nbytes: int, precision: str = 'float32') -> int:
    r"""The most exact rows :math:`k < N` whose stored form (dense rows at
    :obj:`precision`, int8 scales, :func:`exact_ids_nbytes`) fits
    :obj:`nbytes`.

    Args:
        num_embeddings (int): :math:`N`.
        embedding_dim (int): :math:`d`.
        nbytes (int): The bytes given to the exact rows.
        precision (str, optional): The value precision.
            (default: :obj:`'float32'`)
    """
    def size(k: int) -> int:
        return exact_nbytes(num_embeddings, embedding_dim, k, precision)

    lo, hi = 0, int(num_embeddings) - 1  # Bytes grow with k: the largest fit.
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if size(mid) <= nbytes else (lo, mid - 1)
    return lo


def most_frequent(degree: Tensor, k: int) -> Tensor:
    r"""The ids of the :math:`k` entities of largest :obj:`degree` (ties to
    the smaller id), ascending.

    Args:
        degree (torch.Tensor): The training degree of each entity,
            :obj:`[N]`.
        k (int): :math:`k \leq N`.
    """
    check_int('k', k, minimum=0)
    if k > degree.numel():
        raise ValueError(f"'k' must be at most the {degree.numel()} entities "
                         f"(got {k})")
    order = torch.sort(degree, descending=True, stable=True).indices
    return order[:k].sort().values


def _sync_rows_on_load(module: 'HybridEmbedding', _) -> None:
    module._set_rows()


class HybridEmbedding(_Counts, Module):
    r"""An embedding in which :math:`k` chosen entities (*e.g.*,
    :func:`most_frequent`) have rows of their own, :math:`\mathbf{X} \in
    \mathbb{R}^{k \times d}`, and the other :math:`N - k` share a compressed
    :obj:`base` embedding (a :class:`~pyg_cerp.nn.CompositionalEmbedding`,
    a :class:`~pyg_cerp.nn.QREmbedding`, ...) over ids :math:`[0, N - k)`:

    .. math::
        \mathbf{e}_j = \begin{cases} \mathbf{X}_{r(j)} & j \in
        \mathcal{X} \\ \mathrm{base}(r(j)) & \textrm{otherwise,}
        \end{cases}

    where :math:`r(j)` is the rank of :math:`j` among the ids of its part.
    Not in the paper: a compressed table spends its rows evenly, while the
    ranking loss is dominated by frequent entities.

    The stored form is the base's plus the dense exact rows at the base's
    :obj:`precision` (int8: a scale per row) and the id set
    (:func:`exact_ids_nbytes`), all counted by :mod:`pyg_cerp.memory`.
    The pruning interface of a pruned base (:meth:`masks`,
    :meth:`freeze_masks`, :meth:`pruning_loss`, the tables :obj:`P`,
    :obj:`Q`, ...) is the base's, so :class:`~pyg_cerp.train.PruningScheduler`
    prunes the base to a byte target with the exact rows counted; the exact
    rows are never pruned, and :meth:`freeze_masks` rewinds them with the
    tables. :attr:`weight` is the differentiable :math:`N \times d` matrix,
    as for :class:`~pyg_cerp.nn.CompositionalEmbedding`.

    Args:
        base (torch.nn.Module): The embedding of the other :math:`N - k`
            entities (a :attr:`weight` and :meth:`forward` over
            :math:`[0, N - k)`; its :obj:`precision` is the exact rows').
        exact_index (torch.Tensor): The :math:`k \geq 1` distinct ids in
            :math:`[0, N)` with rows of their own.
        num_embeddings (int): :math:`N`, the base's size plus :math:`k`.
        check_index (bool, optional): Check that ids lie in :math:`[0, N)` in
            :meth:`forward`. (default: :obj:`True`)
    """
    def __init__(self, base: Module, exact_index: Tensor,
                 num_embeddings: int, check_index: bool = True) -> None:
        super().__init__()
        check_int('num_embeddings', num_embeddings)
        if not isinstance(exact_index, Tensor) or exact_index.dim() != 1 \
                or exact_index.dtype != torch.long:
            raise TypeError("'exact_index' must be a 1-D torch.long tensor")
        k = exact_index.numel()
        ids = exact_index.unique()
        if k == 0 or ids.numel() != k or int(ids[0]) < 0 or \
                int(ids[-1]) >= num_embeddings:
            raise ValueError(f"'exact_index' must hold between 1 and "
                             f"{num_embeddings - 1} distinct ids in [0, "
                             f"{num_embeddings}) (got {k} ids, "
                             f"{ids.numel()} distinct)")
        rest = getattr(base, 'num_embeddings', None)
        if rest != num_embeddings - k:
            raise ValueError(f"'base' must embed the other num_embeddings - "
                             f"k = {num_embeddings - k} entities (got "
                             f"{rest})")
        self.base = base
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(base.embedding_dim)
        self.check_index = check_index
        weight = base.weight
        self.exact = Parameter(torch.empty(k, self.embedding_dim,
                                           device=weight.device,
                                           dtype=weight.dtype))
        self.register_buffer('exact_index', ids)
        self.register_buffer('row_of', torch.empty(0, dtype=torch.long),
                             persistent=False)
        self._set_rows()
        self.register_load_state_dict_post_hook(_sync_rows_on_load)
        self._reset_exact()

    def _set_rows(self) -> None:
        # row_of[j]: r(j) for the base's entities, N - k + r(j) for the
        # exact ones (rows of cat([base rows, exact rows])).
        n, ids = self.num_embeddings, self.exact_index
        is_exact = torch.zeros(n, dtype=torch.bool, device=ids.device)
        is_exact[ids] = True
        rank = torch.empty(n, dtype=torch.long, device=ids.device)
        rank[~is_exact] = torch.arange(n - ids.numel(), device=ids.device)
        rank[ids] = torch.arange(n - ids.numel(), n, device=ids.device)
        self.row_of = rank

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _DELEGATED:
                return getattr(self._modules['base'], name)
            raise

    @property
    def num_exact(self) -> int:
        r"""The number :math:`k` of exact rows."""
        return self.exact.size(0)

    @property
    def precision(self) -> str:
        r"""The value precision (the base's)."""
        return getattr(self.base, 'precision', 'float32')

    def _reset_exact(self) -> None:
        # The full table's Xavier uniform over N x d.
        bound = math.sqrt(6. / (self.num_embeddings + self.embedding_dim))
        torch.nn.init.uniform_(self.exact, -bound, bound)

    def reset_parameters(self) -> None:
        r"""Resets the base and the exact rows (Xavier uniform of the
        :math:`N \times d` table)."""
        self.base.reset_parameters()
        self._reset_exact()

    def _exact_rows(self) -> Tensor:
        if self.precision == 'float32':
            return self.exact
        return fake_quantize(self.exact, self.precision)

    @property
    def weight(self) -> Tensor:
        r"""The full, differentiable :math:`N \times d` matrix, recomputed on
        every access."""
        rows = torch.cat([self.base.weight, self._exact_rows()])
        return computed_weight(rows.index_select(0, self.row_of), self)

    def forward(self, index: Tensor) -> Tensor:
        r"""The embeddings :obj:`[*index.shape, d]` of the ids
        :obj:`index` in :math:`[0, N)`."""
        _check_ids(index, self.num_embeddings, self.check_index)
        rows = self.row_of[index]
        rest = self.num_embeddings - self.num_exact
        is_exact = (rows >= rest).unsqueeze(-1)
        return torch.where(is_exact,
                           self._exact_rows()[(rows - rest).clamp(min=0)],
                           self.base(rows.clamp(max=rest - 1)))

    def pruning_loss(self, index: Optional[Tensor] = None,
                     **kwargs: Any) -> Tensor:
        r"""The base's :meth:`pruning_loss` over the batch's entities
        that it embeds (:obj:`None`: all of them); the exact rows are not
        pruned."""
        if index is not None:
            rows = self.row_of[index.reshape(-1)]
            index = rows[rows < self.num_embeddings - self.num_exact]
        return self.base.pruning_loss(index, **kwargs)

    def initial_state(self) -> Dict[str, Tensor]:
        r"""The base's :meth:`initial_state` and the exact rows
        (:obj:`'exact'`)."""
        return dict(self.base.initial_state(),
                    exact=self.exact.detach().clone())

    @torch.no_grad()
    def freeze_masks(self, masks: Optional[Union[Tensor,
                                                 Sequence[Tensor]]] = None,
                     rewind_to: Optional[Dict[str, Tensor]] = None) -> None:
        r"""The base's :meth:`freeze_masks`; the exact rows are rewound to
        :obj:`rewind_to['exact']` where given."""
        self.base.freeze_masks(masks, rewind_to)
        if rewind_to is not None and 'exact' in rewind_to:
            self.exact.copy_(rewind_to['exact'])

    @torch.no_grad()
    def num_nonzero(self) -> int:
        r"""The non-zeros stored: the base's and the exact rows'."""
        base = self.base
        nnz = (int(base.num_nonzero()) if hasattr(base, 'num_nonzero') else
               sum(int(t.count_nonzero()) for _, t, _ in stored_tables(base)))
        return nnz + int(self.exact.count_nonzero())

    def stored_tables(self) -> List[Tuple[str, Tensor, bool]]:
        r"""The base's stored tables and the dense exact rows
        (:obj:`'exact'`)."""
        return stored_tables(self.base) + [('exact', self.exact.detach(),
                                            False)]

    def index_tables(self) -> Dict[str, TableBytes]:
        r"""The stored id set (:func:`exact_ids_nbytes`), counted by
        :func:`pyg_cerp.memory.memory_report`."""
        k, n = self.num_exact, self.num_embeddings
        nbytes = exact_ids_nbytes(n, k)
        layout = 'ids' if nbytes == 4 * k else 'bitmap'
        return {'exact_ids': TableBytes(k, 1, 0, layout, nbytes)}

    def extra_repr(self) -> str:
        return (f'{self.num_embeddings}, {self.embedding_dim}, '
                f'exact_rows={self.num_exact}')
