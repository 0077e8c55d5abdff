r"""PEP, learnable soft-threshold pruning of the full table, and magnitude
pruning (:meth:`PEPEmbedding.from_magnitude`): the pruning baselines of the
memory-vs-accuracy benchmark (see :mod:`pyg_cerp.nn.baselines`)."""
import math
from typing import Optional

import torch
from torch import Tensor

from pyg_cerp.nn.compositional import (SoftThresholdPruning, _check_ids,
                                       _check_sizes, computed_weight,
                                       soft_threshold)
from pyg_cerp.nn.stored import StoredTables, _Stored, budget_rows
from pyg_cerp.utils.validation import check_int

__all__ = ['PEPEmbedding', 'magnitude_mask']


@torch.no_grad()
def magnitude_mask(weight: Tensor, num_values: int) -> Tensor:
    r"""The boolean mask of the :obj:`num_values` largest :math:`|w|` of
    :obj:`weight`: exactly that many, ties broken by row-major position
    (zeros are kept only if fewer non-zeros exist).

    Args:
        weight (torch.Tensor): The table.
        num_values (int): How many entries to keep, in
            :math:`[0, \text{weight.numel()}]`.
    """
    numel = weight.numel()
    if not 0 <= int(num_values) <= numel:
        raise ValueError(f"'num_values' must be in [0, {numel}] "
                         f"(got {num_values})")
    order = torch.sort(weight.detach().abs().flatten(), descending=True,
                       stable=True).indices
    mask = torch.zeros(numel, dtype=torch.bool, device=weight.device)
    mask[order[:int(num_values)]] = True
    return mask.view_as(weight)


class PEPEmbedding(SoftThresholdPruning, _Stored):
    r"""Element-wise learnable soft-threshold pruning of the full table, from
    the `"Learnable Embedding Sizes for Recommender Systems"
    <https://arxiv.org/abs/2101.07577>`_ paper (PEP):

    .. math::
        \mathbf{e}_k = \hat{\mathbf{V}}_k, \qquad
        \hat{\mathbf{V}} = \mathrm{sign}(\mathbf{V}) \odot
        \mathrm{ReLU}(|\mathbf{V}| - \sigma(\mathbf{S})),

    with :math:`\mathbf{V}, \mathbf{S} \in \mathbb{R}^{N \times d}`: the
    pruning of :class:`~pyg_cerp.nn.CompositionalEmbedding` (see
    :class:`~pyg_cerp.nn.compositional.SoftThresholdPruning`, also for
    :meth:`freeze_masks`) on the full table. PEP has no
    :meth:`pruning_loss`. Its stored form is :math:`\hat{\mathbf{V}}`.

    Args:
        num_embeddings (int): The number of entities :math:`N`.
        embedding_dim (int): The embedding size :math:`d`.
        threshold_init (float, optional): The initial threshold logit, as
            for CERP. (default: :obj:`-100.`)
        check_index (bool, optional): Check the ids in :meth:`forward`.
            (default: :obj:`True`)
        device (torch.device, optional): The device of :math:`\mathbf{V}`.
        dtype (torch.dtype, optional): Its floating point type.
        precision (str, optional): The simulated value precision, as for
            :class:`~pyg_cerp.nn.CompositionalEmbedding`.
            (default: :obj:`'float32'`)
    """
    pruned_names = (('V', 'threshold', 'mask'), )

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 threshold_init: float = -100., check_index: bool = True,
                 device: Optional[torch.device] = None,
                 dtype: Optional[torch.dtype] = None,
                 precision: str = 'float32') -> None:
        super().__init__()
        _check_sizes(num_embeddings, embedding_dim)
        self._init_pruning(num_embeddings, embedding_dim,
                           (num_embeddings, embedding_dim), threshold_init,
                           check_index, device, dtype, precision)
        self.reset_parameters()

    def pruned_table(self) -> Tensor:
        r"""The pruned table :math:`\hat{\mathbf{V}}`."""
        return self.pruned_tables()[0]

    @classmethod
    @torch.no_grad()
    def from_magnitude(cls, weight: Tensor, fraction: Optional[float] = None,
                       nbytes: Optional[int] = None,
                       **kwargs) -> 'PEPEmbedding':
        r"""Magnitude pruning: a :class:`PEPEmbedding` in retrain mode that
        holds the trained table :obj:`weight` with its :math:`\lfloor f N d
        \rfloor` largest-magnitude entries kept (see :func:`magnitude_mask`),
        ready for fine-tuning.

        Args:
            weight (torch.Tensor): The trained :math:`N \times d` table.
            fraction (float, optional): The budget :math:`f \in (0, 1]` of
                the :math:`Nd` values.
            nbytes (int, optional): Instead, a budget of stored bytes at the
                :obj:`precision` (values, best sparse layout's index, int8
                scales): the most entries that fit.
            **kwargs: Passed on to the constructor.
        """
        if weight.dim() != 2:
            raise ValueError(f"'weight' must be an N x d table (got shape "
                             f"{tuple(weight.shape)})")
        kwargs.setdefault('device', weight.device)
        kwargs.setdefault('dtype', weight.dtype)
        out = cls(*weight.shape, **kwargs)
        out.freeze_magnitude(weight, fraction, nbytes)
        return out

    @torch.no_grad()
    def freeze_magnitude(self, weight: Tensor,
                         fraction: Optional[float] = None,
                         nbytes: Optional[int] = None) -> None:
        r"""Loads :obj:`weight` into :math:`\mathbf{V}` and freezes the mask
        of its largest entries, in place (see :meth:`from_magnitude`)."""
        if (fraction is None) == (nbytes is None):
            raise ValueError("Give exactly one of 'fraction' and 'nbytes'")
        if fraction is not None:
            k = budget_rows(weight.numel(), fraction)
            what = f'fraction={fraction}'
        else:
            from pyg_cerp.memory import density_for_nbytes
            check_int('nbytes', nbytes, minimum=0)
            density = density_for_nbytes([(*weight.shape, True)], nbytes,
                                         self.precision)
            k = 0 if density is None else math.floor(density *
                                                     weight.numel())
            what = f'nbytes={nbytes} ({self.precision})'
        if k < 1:
            raise ValueError(f"The budget {what} of "
                             f"{weight.numel()} values keeps none")
        self.freeze_masks(magnitude_mask(weight, k),
                          rewind_to={'V': weight.detach().to(self.V)})

    @property
    def weight(self) -> Tensor:
        r"""The pruned, differentiable :math:`N \times d` matrix."""
        return computed_weight(self.quantized_tables()[0], self)

    def forward(self, index: Tensor) -> Tensor:
        r"""The embeddings :obj:`[*index.shape, d]` of the integer ids
        :obj:`index` in :math:`[0, N)`."""
        _check_ids(index, self.num_embeddings, self.check_index)
        if self.is_retraining:
            out = self.V[index] * self.mask[index]
        else:
            out = soft_threshold(self.V[index], self.threshold[index])
        return self._quantize(out)  # Row-local: as rows of `weight`.

    def stored_tables(self) -> StoredTables:
        return [('V', self.pruned_table().detach(), True)]
