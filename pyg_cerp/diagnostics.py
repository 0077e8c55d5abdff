r"""Diagnostics of compositional embeddings: how often the two pruned meta
rows of an entity are zero at the same dimension (overlap), and how evenly
the hash functions spread the entities over the meta rows (balance)."""
import math
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Module

from pyg_cerp.utils.validation import check_index


@dataclass(frozen=True)
class OverlapStats:
    r"""The overlap of the zero patterns of the two pruned meta tables.

    Args:
        mean (float): The mean over entities of the fraction of dimensions
            where *both* meta rows are zero (so the composed embedding is).
        zero_p (float): The fraction of zeros of the entities' rows of
            :math:`\hat{\mathbf{P}}` (rows weighted by use).
        zero_q (float): Likewise for :math:`\hat{\mathbf{Q}}`.
        independent (float): The :obj:`mean` of independent zero patterns
            (the mean of the products of the row zero fractions); a lower
            :obj:`mean` means the patterns are complementary.
        composed_zero (float): The fraction of exact zeros of the composed
            embeddings (:obj:`mean`, unless :math:`P` and :math:`Q` entries
            cancel exactly).
    """
    mean: float
    zero_p: float
    zero_q: float
    independent: float
    composed_zero: float


def _zero_patterns(module: Module, index: Optional[Tensor] = None
                   ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    # The pruned meta rows of the entities in `index` (default: all) and
    # their zero masks.
    if not hasattr(module, 'pruned_tables') or \
            not hasattr(module, 'hash_index'):
        raise TypeError(f"Overlap needs a compositional embedding with "
                        f"'pruned_tables()' and 'hash_index()' (got "
                        f"{type(module).__name__})")
    p_hat, q_hat = (t.detach() for t in module.pruned_tables())
    if index is None:
        index = torch.arange(module.num_embeddings, device=p_hat.device)
    else:
        check_index(index, module.num_embeddings, 'index')
    p_row, q_row = module.hash_index(index)
    p, q = p_hat[p_row], q_hat[q_row]
    return p, q, (p == 0).float(), (q == 0).float()


@torch.no_grad()
def overlap_per_entity(module: Module,
                       index: Optional[Tensor] = None) -> Tensor:
    r"""The per-entity overlap rate of a
    :class:`~pyg_cerp.nn.CompositionalEmbedding`,

    .. math::
        o_k = \frac{1}{d} \sum_{j=1}^d
        \mathbb{1}[\hat{P}_{h_P(k), j} = 0 \,\wedge\, \hat{Q}_{h_Q(k), j} = 0].

    Args:
        module (torch.nn.Module): The compositional embedding.
        index (torch.Tensor, optional): The entity ids (:obj:`None`: all
            :math:`N`). (default: :obj:`None`)

    Returns:
        A float tensor of the shape of :obj:`index` (or :obj:`[N]`).
    """
    _, _, zp, zq = _zero_patterns(module, index)
    return (zp * zq).mean(dim=-1)


@torch.no_grad()
def overlap_rate(module: Module) -> OverlapStats:
    r"""The :class:`OverlapStats` of a compositional embedding over all its
    entities (see :func:`overlap_per_entity`).

    Args:
        module (torch.nn.Module): The compositional embedding.
    """
    p, q, zp, zq = _zero_patterns(module)
    return OverlapStats(
        mean=float((zp * zq).mean()),
        zero_p=float(zp.mean()),
        zero_q=float(zq.mean()),
        independent=float((zp.mean(dim=1) * zq.mean(dim=1)).mean()),
        composed_zero=float(((p + q) == 0).float().mean()),
    )


@dataclass(frozen=True)
class TableBalance:
    r"""How often each row of one hashed table is used.

    Args:
        name (str): The table.
        rows (int): The number of rows of the table.
        histogram (Dict[int, int]): Reuse count :math:`\to` number of rows
            with that count (count :obj:`0` = unused rows).
        expected (Tuple[int, int]): :math:`(\lfloor N/r \rfloor,
            \lceil N/r \rceil)`, the counts of a perfectly balanced hash.
        balanced (bool): Whether every row is used
            :math:`\lfloor N/r \rfloor` or :math:`\lceil N/r \rceil` times.
    """
    name: str
    rows: int
    histogram: Dict[int, int]
    expected: Tuple[int, int]
    balanced: bool

    @property
    def unused(self) -> int:
        r"""The number of rows no entity uses."""
        return self.histogram.get(0, 0)

    @property
    def max_count(self) -> int:
        r"""The largest reuse count."""
        return max(self.histogram)

    @property
    def min_used_count(self) -> int:
        r"""The smallest reuse count among used rows."""
        return min(c for c in self.histogram if c > 0)

    def summary(self) -> str:
        r"""A one-line description."""
        hist = ', '.join(f'{c}x:{r}'
                         for c, r in sorted(self.histogram.items()))
        return (f'{self.name}: {self.rows} rows, expected counts '
                f'{self.expected[0]}/{self.expected[1]}, '
                f'{"balanced" if self.balanced else "NOT balanced"} '
                f'(count:rows {hist})')


def _table_rows(module: Module) -> List[Tuple[str, int]]:
    name = type(module).__name__
    if hasattr(module, 'bucket_size') and hasattr(module, 'rows_per_q'):
        return [('P', module.bucket_size), ('Q', module.bucket_size)]
    if hasattr(module, 'num_remainder'):
        return [('R', module.num_remainder), ('Q', module.num_quotient)]
    if hasattr(module, 'num_buckets'):
        return [('W', module.num_buckets)]
    raise TypeError(f"Hash balance needs a hashed embedding "
                    f"(CompositionalEmbedding, QREmbedding or HashEmbedding; "
                    f"got {name})")


@torch.no_grad()
def hash_balance(module: Module) -> List[TableBalance]:
    r"""The reuse counts of the rows of each hashed table of
    :obj:`module`, from its :meth:`hash_index` of all :math:`N` entities.

    For :class:`~pyg_cerp.nn.CompositionalEmbedding`, :math:`h_P(k) = k
    \bmod b` uses every row :math:`\lfloor N/b \rfloor` or
    :math:`\lceil N/b \rceil` times, but :math:`h_Q(k) = \lfloor k /
    \lceil N/b \rceil \rfloor` fills rows of :math:`\lceil N/b \rceil`
    entities, leaving :math:`b - \lceil N / \lceil N/b \rceil \rceil` rows
    unused (:obj:`balanced` tells).

    Args:
        module (torch.nn.Module): A :class:`CompositionalEmbedding`,
            :class:`QREmbedding` or :class:`HashEmbedding`.
    """
    tables = _table_rows(module)
    n = module.num_embeddings
    rows = module.hash_index(torch.arange(n))
    out = []
    for (name, size), row in zip(tables, (rows, ) if isinstance(
            rows, Tensor) else rows):
        counts = torch.bincount(row.cpu(), minlength=size)
        histogram = dict(sorted(Counter(counts.tolist()).items()))
        lo, hi = n // size, math.ceil(n / size)
        out.append(TableBalance(name, size, histogram, (lo, hi),
                                set(histogram) <= {lo, hi}))
    return out
