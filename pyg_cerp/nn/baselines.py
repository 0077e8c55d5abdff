r"""Baseline embeddings for the memory-vs-accuracy benchmark of CERP.

Each has the interface of :class:`~pyg_cerp.nn.CompositionalEmbedding`
(:attr:`weight`, :meth:`forward`, :meth:`num_nonzero`,
:meth:`full_table_fraction`) plus :meth:`stored_tables` for
:mod:`pyg_cerp.memory`:

* :class:`FullEmbedding`: the full table, the accuracy ceiling;
* :class:`PEPEmbedding`: PEP, soft-threshold pruning of the full table;
  :meth:`PEPEmbedding.from_magnitude` is the magnitude-pruning baseline
  (both in :mod:`pyg_cerp.nn.pep`, re-exported here);
* :class:`QREmbedding`: the quotient-remainder trick (sum or product);
* :class:`HashEmbedding`: the hashing trick.

CERP without its regulariser is :class:`~pyg_cerp.nn.CompositionalEmbedding`
trained with :math:`\gamma = 0`.

Each takes a :obj:`precision` (:obj:`'float32'`, :obj:`'float16'`, or
:obj:`'int8'` or :obj:`'int4'` with per-row scales): :attr:`weight` and :meth:`forward` then
see the stored tables fake-quantised to it
(:func:`~pyg_cerp.nn.quant.fake_quantize`, straight-through gradient), what
the stored form at that precision decodes to, and :mod:`pyg_cerp.memory`
counts that precision's bytes (:mod:`pyg_cerp.nn.stored`: the stored tables
and the rows a budget buys).
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Module, Parameter

from pyg_cerp.nn.compose import check_operation, compose
from pyg_cerp.nn.compositional import _check_ids, _check_sizes, computed_weight
from pyg_cerp.nn.pep import PEPEmbedding, magnitude_mask
from pyg_cerp.nn.quant import check_precision
from pyg_cerp.nn.stored import _Stored, budget_rows, nbytes_rows

__all__ = ['FullEmbedding', 'PEPEmbedding', 'QREmbedding', 'HashEmbedding',
           'budget_rows', 'nbytes_rows', 'magnitude_mask']


class FullEmbedding(_Stored, torch.nn.Embedding):
    r"""The full :math:`N \times d` table: a :class:`torch.nn.Embedding`
    with Xavier-uniform initialisation (as :class:`CompositionalEmbedding`
    and PyG's :class:`~torch_geometric.nn.models.LightGCN`), the id check
    and the counting helpers. With a reduced :obj:`precision`,
    :attr:`weight` is the fake-quantised table, computed on access (see
    :class:`~pyg_cerp.nn.compositional.ComposedWeight`); the parameter stays
    :obj:`state_dict()['weight']`.

    Args:
        num_embeddings (int): The number of entities :math:`N`.
        embedding_dim (int): The embedding size :math:`d`.
        check_index (bool, optional): Whether :meth:`forward` checks the ids.
            (default: :obj:`True`)
        device (torch.device, optional): The device of the table.
        dtype (torch.dtype, optional): The floating point type of the table.
        precision (str, optional): The simulated value precision, as for
            :class:`~pyg_cerp.nn.CompositionalEmbedding`.
            (default: :obj:`'float32'`)
    """
    _stored = ('weight', )

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 check_index: bool = True,
                 device: Optional[torch.device] = None,
                 dtype: Optional[torch.dtype] = None,
                 precision: str = 'float32') -> None:
        _check_sizes(num_embeddings, embedding_dim)
        self.check_index = check_index
        self.precision = check_precision(precision)
        super().__init__(num_embeddings, embedding_dim, device=device,
                         dtype=dtype)

    @property  # type: ignore[override]
    def weight(self) -> Tensor:
        r"""The table (the parameter itself for :obj:`'float32'`)."""
        weight = self._parameters.get('weight')
        if weight is None:  # During torch.nn.Embedding.__init__.
            raise AttributeError('weight')
        if self.precision == 'float32':
            return weight
        return computed_weight(self._quantize(weight), self)

    def reset_parameters(self) -> None:
        r"""Re-initialises the table (Xavier uniform)."""
        torch.nn.init.xavier_uniform_(self._parameters['weight'])

    def forward(self, index: Tensor) -> Tensor:
        r"""The embeddings :obj:`[*index.shape, d]` of the integer ids
        :obj:`index` in :math:`[0, N)`."""
        _check_ids(index, self.num_embeddings,
                   getattr(self, 'check_index', True))
        if self.precision == 'float32':
            return super().forward(index)
        return self._quantize(self._parameters['weight'][index])

    def extra_repr(self) -> str:
        return (f'{self.num_embeddings}, {self.embedding_dim}'
                f'{self._precision_repr()}')


class QREmbedding(_Stored, Module):
    r"""The quotient-remainder trick from the `"Compositional Embeddings Using
    Complementary Partitions for Memory-Efficient Recommendation Systems"
    <https://arxiv.org/abs/1909.02107>`_ paper, unpruned (see
    :func:`~pyg_cerp.nn.compose.compose`):

    .. math::
        \mathbf{e}_k = \mathbf{R}_{k \bmod m} \circ
        \mathbf{Q}_{\lfloor k / m \rfloor}, \qquad \circ \in \{+, \odot\},

    with :math:`\mathbf{R} \in \mathbb{R}^{m \times d}`, :math:`\mathbf{Q}
    \in \mathbb{R}^{\lceil N/m \rceil \times d}`: unique rows per entity,
    :math:`(m + \lceil N/m \rceil) d` stored values. :meth:`for_budget` picks
    :math:`m`. Tables are Xavier uniform for :obj:`'add'`; for :obj:`'mul'`
    both are :math:`U(-s, s)`, :math:`s = (3 t^2)^{1/4}`, :math:`t =
    \sqrt{6 / (N + d)}`, so that the product has the variance :math:`t^2/3`
    of a Xavier-uniform :math:`N \times d` table.

    Args:
        num_embeddings (int): The number of entities :math:`N`.
        embedding_dim (int): The embedding size :math:`d`.
        num_remainder (int): The rows :math:`m` of :math:`\mathbf{R}`,
            :math:`1 \leq m \leq N`.
        operation (str, optional): :obj:`'add'` or :obj:`'mul'`.
            (default: :obj:`'add'`)
        check_index (bool, optional): Check the ids in :meth:`forward`.
            (default: :obj:`True`)
        device (torch.device, optional): The device of the tables.
        dtype (torch.dtype, optional): Their floating point type.
        precision (str, optional): The simulated value precision, as for
            :class:`~pyg_cerp.nn.CompositionalEmbedding`.
            (default: :obj:`'float32'`)
    """
    _stored = ('R', 'Q')

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 num_remainder: int, operation: str = 'add',
                 check_index: bool = True,
                 device: Optional[torch.device] = None,
                 dtype: Optional[torch.dtype] = None,
                 precision: str = 'float32') -> None:
        super().__init__()
        self._set_sizes(num_embeddings, embedding_dim, 'num_remainder',
                        num_remainder, check_index, precision)
        self.operation = check_operation(operation)
        #: The rows :math:`\lceil N/m \rceil` of the quotient table.
        self.num_quotient = math.ceil(num_embeddings / num_remainder)
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
        :math:`m + \lceil N/m \rceil` rows fit in :obj:`fraction` of
        :math:`N` (found by bisection: non-decreasing for :math:`m \geq
        \sqrt{N}`, whose :math:`\approx 2 \sqrt{N}` rows bound the budgets QR
        can meet; a :class:`ValueError` below).

        Args:
            num_embeddings (int): The number of entities :math:`N`.
            embedding_dim (int): The embedding size :math:`d`.
            fraction (float): The budget :math:`f \in (0, 1]`.
            **kwargs: Passed on to the constructor.
        """
        return cls._for_rows(num_embeddings, embedding_dim,
                             budget_rows(num_embeddings, fraction),
                             f'fraction={fraction}', **kwargs)

    @classmethod
    def for_nbytes(cls, num_embeddings: int, embedding_dim: int, nbytes: int,
                   precision: str = 'float32', **kwargs) -> 'QREmbedding':
        r"""The :class:`QREmbedding` with the largest :math:`m` whose two
        tables take at most :obj:`nbytes` stored bytes at :obj:`precision`
        (see :func:`nbytes_rows` and :meth:`for_budget`).

        Args:
            num_embeddings (int): The number of entities :math:`N`.
            embedding_dim (int): The embedding size :math:`d`.
            nbytes (int): The byte budget.
            precision (str, optional): The value precision.
                (default: :obj:`'float32'`)
            **kwargs: Passed on to the constructor.
        """
        rows = nbytes_rows(embedding_dim, nbytes, precision)
        return cls._for_rows(num_embeddings, embedding_dim, rows,
                             f'nbytes={nbytes} ({precision})',
                             precision=precision, **kwargs)

    @classmethod
    def _for_rows(cls, num_embeddings: int, embedding_dim: int, rows: int,
                  what: str, **kwargs) -> 'QREmbedding':
        lo = math.isqrt(num_embeddings - 1) + 1 if num_embeddings > 1 else 1
        need = cls.num_rows(num_embeddings, lo)
        if need > rows:
            raise ValueError(
                f"A QREmbedding of {num_embeddings} entities needs at least "
                f"{need} rows (fraction {need / num_embeddings:.5f}), more "
                f"than the budget {what} allows ({rows} rows)")
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

    def hash_index(self, index: Tensor) -> Tuple[Tensor, Tensor]:
        r"""The rows :math:`(k \bmod m, \lfloor k/m \rfloor)` of
        :obj:`index`."""
        return index % self.num_remainder, index // self.num_remainder

    @property
    def weight(self) -> Tensor:
        r"""The differentiable :math:`N \times d` matrix."""
        return computed_weight(
            compose(self._quantize(self.R), self._quantize(self.Q),
                    self.num_embeddings, self.num_remainder,
                    self.operation, pad_grad=True), self)

    def forward(self, index: Tensor) -> Tensor:
        r"""The embeddings :obj:`[*index.shape, d]` of the integer ids
        :obj:`index` in :math:`[0, N)`."""
        _check_ids(index, self.num_embeddings, self.check_index)
        return compose(self._quantize(self.R), self._quantize(self.Q), index,
                       self.num_remainder, self.operation)

    def extra_repr(self) -> str:
        return (f'{self.num_embeddings}, {self.embedding_dim}, '
                f'num_remainder={self.num_remainder}, '
                f'num_quotient={self.num_quotient}, '
                f'operation={self.operation}{self._precision_repr()}, '
                f'full_table_fraction={self.full_table_fraction():.4f}')


class HashEmbedding(_Stored, Module):
    r"""The hashing trick: :math:`\mathbf{e}_k = \mathbf{W}_{h(k)}` with one
    shared table :math:`\mathbf{W} \in \mathbb{R}^{m \times d}` and, for
    :obj:`hash='universal'`, the universal hash of Carter and Wegman,

    .. math::
        h(k) = ((a k + c) \bmod p) \bmod m, \qquad p = 2^{31} - 1,

    with :math:`a \in [1, p)`, :math:`c \in [0, p)` drawn from :obj:`seed`
    (buffers :obj:`hash_a`, :obj:`hash_c`), or :math:`h(k) = k \bmod m` for
    :obj:`hash='mod'` (which makes consecutive users and items collide
    regularly). :meth:`for_budget` picks :math:`m`.

    Args:
        num_embeddings (int): The number of entities :math:`N < 2^{31} - 1`.
        embedding_dim (int): The embedding size :math:`d`.
        num_buckets (int): The rows :math:`m`, :math:`1 \leq m \leq N`.
        hash (str, optional): :obj:`'universal'` or :obj:`'mod'`.
            (default: :obj:`'universal'`)
        seed (int, optional): The seed of :math:`a, c`. (default: :obj:`0`)
        check_index (bool, optional): Check the ids in :meth:`forward`.
            (default: :obj:`True`)
        device (torch.device, optional): The device of :math:`\mathbf{W}`.
        dtype (torch.dtype, optional): Its floating point type.
        precision (str, optional): The simulated value precision, as for
            :class:`~pyg_cerp.nn.CompositionalEmbedding`.
            (default: :obj:`'float32'`)
    """
    PRIME = 2**31 - 1
    _stored = ('W', )

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 num_buckets: int, hash: str = 'universal', seed: int = 0,
                 check_index: bool = True,
                 device: Optional[torch.device] = None,
                 dtype: Optional[torch.dtype] = None,
                 precision: str = 'float32') -> None:
        super().__init__()
        self._set_sizes(num_embeddings, embedding_dim, 'num_buckets',
                        num_buckets, check_index, precision)
        if num_embeddings >= self.PRIME:
            raise ValueError(f"'num_embeddings' must be below 2^31 - 1 "
                             f"(got {num_embeddings})")
        if hash not in ('universal', 'mod'):
            raise ValueError(f"'hash' must be 'universal' or 'mod' "
                             f"(got {hash!r})")
        self.hash = hash
        self.seed = seed
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
        r"""The :class:`HashEmbedding` of :math:`m = \lfloor f N \rfloor`
        rows (arguments as :meth:`QREmbedding.for_budget`)."""
        rows = budget_rows(num_embeddings, fraction)
        if rows < 1:
            raise ValueError(f"The budget fraction={fraction} of "
                             f"{num_embeddings} entities buys no row")
        return cls(num_embeddings, embedding_dim, rows, **kwargs)

    @classmethod
    def for_nbytes(cls, num_embeddings: int, embedding_dim: int, nbytes: int,
                   precision: str = 'float32', **kwargs) -> 'HashEmbedding':
        r"""The :class:`HashEmbedding` of the most rows (at most :math:`N`)
        that :obj:`nbytes` stored bytes buy at :obj:`precision` (arguments as
        :meth:`QREmbedding.for_nbytes`)."""
        rows = min(nbytes_rows(embedding_dim, nbytes, precision),
                   num_embeddings)
        if rows < 1:
            raise ValueError(f"The budget nbytes={nbytes} ({precision}) buys "
                             f"no row of {embedding_dim} values")
        return cls(num_embeddings, embedding_dim, rows, precision=precision,
                   **kwargs)

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
        return computed_weight(self._quantize(self.W)[rows], self)

    def forward(self, index: Tensor) -> Tensor:
        r"""The embeddings :obj:`[*index.shape, d]` of the integer ids
        :obj:`index` in :math:`[0, N)`."""
        _check_ids(index, self.num_embeddings, self.check_index)
        # Row-local quantiser: the rows of `weight`, bit for bit.
        return self._quantize(self.W[self.hash_index(index)])

    def extra_repr(self) -> str:
        return (f'{self.num_embeddings}, {self.embedding_dim}, '
                f'num_buckets={self.num_buckets}, hash={self.hash}'
                f'{self._precision_repr()}, '
                f'full_table_fraction={self.full_table_fraction():.4f}')
