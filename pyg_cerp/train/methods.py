r"""The methods of the equal-memory comparison as first-class objects, sized
to a budget (trained to convergence by
:class:`~pyg_cerp.train.ConvergedRunner`).

Every method is sized to a **budget** :math:`f`, a fraction of the
:math:`N \times d` values of the full table (the unit of
:mod:`pyg_cerp.memory`'s callers and of ``benchmarks/memory_vs_ndcg.py``):
*stored values* for the unpruned structures (:class:`QREmbedding`:
:math:`(m + \lceil N/m \rceil) d \leq fNd`; :class:`HashEmbedding`:
:math:`\lfloor fN \rfloor d`), *non-zeros* for the pruned ones (CERP, PEP,
magnitude: at most :math:`fNd`, the scheduler's :obj:`target_unit='full'`).
The stored bytes (:func:`pyg_cerp.memory.stored_nbytes`, with sparse
formats for pruned tables) are reported next to it.

With :obj:`budget_unit='bytes'` the budget :math:`f` is instead a fraction
of the full table's :obj:`float32` bytes :math:`4Nd` (:func:`budget_nbytes`)
and every method is built at a value :obj:`precision` (:obj:`'float32'`,
:obj:`'float16'`, :obj:`'int8'` or :obj:`'int4'`, simulated in training by fake
quantisation): :class:`QREmbedding` and :class:`HashEmbedding` by their
:meth:`for_nbytes`, the pruned ones pruned to a byte target
(:obj:`CERPConfig(target_unit='bytes')`, counted by :mod:`pyg_cerp.memory`
in the stored form at that precision: values, sparse index, integer scales),
magnitude pruning by :meth:`PEPEmbedding.freeze_magnitude` with
:obj:`nbytes`, and CERP's :math:`b` by the budget planner
(:func:`bucket_candidates`).

================  =========  ====================================================
name              kind       what
================  =========  ====================================================
``full``          fixed      the full table, :class:`FullEmbedding` (budget 1)
``cerp``          threshold  :class:`CompositionalEmbedding`, phase 1 with the
                             regulariser, then retrained (rewound, masks frozen)
``cerp-noreg``    threshold  the same with :math:`\gamma = 0`
``cerp-ft``       threshold  CERP fine-tuned from its values at the target
                             (masks frozen, no rewind: one-phase CERP)
``cerp-mul``      threshold  CERP with the two rows multiplied
                             (:obj:`operation='mul'`, not in the paper),
                             :math:`\gamma = 0`: a product is non-zero where
                             both rows are, so complementary zeros are not
                             its aim (with the regulariser, Gowalla's 5%
                             int8 run collapsed to BPR loss
                             :math:`\ln 2` in its first regularised epoch)
``pep``           threshold  :class:`PEPEmbedding`, the same two phases
``qr-mul``        fixed      :class:`QREmbedding`, element-wise product
``qr-add``        fixed      :class:`QREmbedding`, sum
``hash``          fixed      :class:`HashEmbedding`, universal hash
``magnitude``     magnitude  the trained full table, its :math:`\lfloor fNd
                             \rfloor` largest entries kept
                             (:meth:`PEPEmbedding.from_magnitude`), fine-tuned
                             with the mask frozen
``*-hybrid``      as base    ``cerp-mul`` or ``qr-mul`` for all but the most
                             frequent entities, which get exact rows
                             (:class:`~pyg_cerp.nn.HybridEmbedding`, not in
                             the paper; byte budgets only): a share of the
                             budget's bytes (:func:`hybrid_budget`)
================  =========  ====================================================
"""
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from torch import Tensor
from torch.nn import Module

from pyg_cerp.nn import CompositionalEmbedding
from pyg_cerp.nn.baselines import (FullEmbedding, HashEmbedding,
                                   PEPEmbedding, QREmbedding)
from pyg_cerp.memory import (density_for_nbytes, fixed_nbytes,
                             module_table_shapes, tables_nbytes)
from pyg_cerp.nn.hybrid import (HybridEmbedding, exact_nbytes,
                                exact_rows_for_nbytes)
from pyg_cerp.nn.quant import check_precision
from pyg_cerp.planner import full_table_nbytes, plan_budget
from pyg_cerp.train.config import CERPConfig
from pyg_cerp.utils.validation import check_int

__all__ = ['Method', 'METHODS', 'get_method', 'build_embedding',
           'bucket_candidates', 'budget_nbytes', 'bytes_infeasible',
           'hybrid_budget',
           'check_budget_unit', 'BUDGET_UNITS']

#: The units of a budget :math:`f`: :obj:`'full'` (a fraction of the
#: :math:`Nd` values of the full table) or :obj:`'bytes'` (a fraction of its
#: :obj:`float32` bytes :math:`4Nd`, the stored form at a precision).
BUDGET_UNITS = ('full', 'bytes')


@dataclass(frozen=True)
class Method:
    r"""One method of the comparison.

    Args:
        name (str): The name (a key of :data:`METHODS`).
        kind (str): :obj:`'fixed'` (a structure of the budget's size, trained
            once), :obj:`'threshold'` (learned-threshold pruning, phase 1 then
            retraining) or :obj:`'magnitude'` (a trained full table pruned by
            magnitude, then fine-tuned).
        regularized (bool): Whether phase 1 adds CERP's complementarity
            regulariser (:math:`\gamma > 0`).
        description (str): One line.
        rewind (bool): For :obj:`'threshold'` methods, whether the pruned
            model is retrained from the initial values (lottery-ticket
            rewind, two-phase CERP) or fine-tuned from its values at the
            target. (default: :obj:`True`)
        operation (str): For the compositional methods, how the two rows
            compose (:obj:`'add'` or :obj:`'mul'`). (default: :obj:`'add'`)
        base (str, optional): For a hybrid (exact rows for the most
            frequent entities, :class:`~pyg_cerp.nn.HybridEmbedding`), the
            method of the other entities. (default: :obj:`None`)
    """
    name: str
    kind: str
    regularized: bool = False
    description: str = ''
    rewind: bool = True
    operation: str = 'add'
    base: Optional[str] = None

    def config(self, base: CERPConfig, **overrides: Any) -> CERPConfig:
        r"""The configuration of this method: :obj:`base` with
        :obj:`overrides`, and :math:`\gamma_0 = 0` unless
        :obj:`regularized`.

        Args:
            base (CERPConfig): The shared configuration.
            **overrides: Fields to change.
        """
        values = dict(base.to_dict(), **overrides)
        if not self.regularized:
            values['gamma_init'] = 0.
        return CERPConfig.from_dict(values)

    @property
    def compositional(self) -> bool:
        r"""Whether the method is a :class:`CompositionalEmbedding`."""
        return self.name.startswith('cerp')

    @property
    def sweeps_bucket_size(self) -> bool:
        r"""Whether :math:`b` is swept per budget (the compositional
        methods)."""
        return self.compositional


METHODS: Dict[str, Method] = {m.name: m for m in (
    Method('full', 'fixed', description='full table'),
    Method('cerp', 'threshold', True, 'CERP (two-phase, regulariser)'),
    Method('cerp-noreg', 'threshold', False, 'CERP without regulariser'),
    Method('cerp-ft', 'threshold', True,
           'CERP fine-tuned from the pruned values (one phase)',
           rewind=False),
    Method('cerp-mul', 'threshold', False,
           'CERP with the rows multiplied, no regulariser (not in the paper)',
           operation='mul'),
    Method('pep', 'threshold', False, 'PEP (learned element-wise thresholds)'),
    Method('qr-mul', 'fixed', description='quotient-remainder, product'),
    Method('qr-add', 'fixed', description='quotient-remainder, sum'),
    Method('hash', 'fixed', description='hashing trick'),
    Method('magnitude', 'magnitude',
           description='magnitude pruning of the trained full table'),
    Method('cerp-mul-hybrid', 'threshold', False,
           'exact rows for the most frequent entities, cerp-mul for the '
           'rest (not in the paper)', operation='mul', base='cerp-mul'),
    Method('qr-mul-hybrid', 'fixed',
           description='exact rows for the most frequent entities, qr-mul '
           'for the rest', base='qr-mul'),
)}


def get_method(name: Union[str, Method]) -> Method:
    r"""The :class:`Method` called :obj:`name` (a :class:`ValueError`
    listing the choices otherwise)."""
    if isinstance(name, Method):
        return name
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r} (choose from "
                         f"{', '.join(METHODS)})")
    return METHODS[name]


def check_budget_unit(budget_unit: str) -> str:
    r""":obj:`budget_unit` if it is one of :data:`BUDGET_UNITS` (a
    :class:`ValueError` otherwise)."""
    if budget_unit not in BUDGET_UNITS:
        raise ValueError(f"'budget_unit' must be one of {BUDGET_UNITS} (got "
                         f"{budget_unit!r})")
    return budget_unit


def budget_nbytes(num_entities: int, dim: int, budget: float) -> int:
    r"""The stored bytes that a byte budget :math:`f` allows:
    :math:`\lfloor f \cdot 4Nd \rfloor`, a fraction of the full table's
    :obj:`float32` bytes (:func:`pyg_cerp.planner.full_table_nbytes`).

    Args:
        num_entities (int): :math:`N`.
        dim (int): :math:`d`.
        budget (float): :math:`f \in (0, 1]`.
    """
    if not 0. < float(budget) <= 1.:
        raise ValueError(f"'budget' must be in (0, 1] (got {budget})")
    full = full_table_nbytes(num_entities, dim)
    return int(math.floor(float(budget) * full))


def bytes_infeasible(embedding: Module, nbytes: int) -> str:
    r"""Why a pruned :obj:`embedding` cannot be stored in :obj:`nbytes`
    bytes at its :obj:`precision`, or :obj:`''` if it can keep at least one
    value: the sparse index (and int8 scales) of its tables alone exceed
    the budget (counted by :mod:`pyg_cerp.memory`).

    Args:
        embedding (torch.nn.Module): A pruned embedding (CERP, PEP).
        nbytes (int): The byte budget.
    """
    precision = embedding.precision
    shapes = [s for s in module_table_shapes(embedding) if s[2]]
    fixed = fixed_nbytes(embedding, precision)
    density = density_for_nbytes(shapes, nbytes - fixed, precision)
    if density is not None and max(
            math.floor(density * r * c) for r, c, _ in shapes) >= 1:
        return ''
    floor = tables_nbytes(shapes, [0] * len(shapes), precision) + fixed
    return (f'infeasible: the stored form of {type(embedding).__name__} at '
            f'{precision} takes {floor} bytes with no value kept (sparse '
            f'index and scales), the budget allows {nbytes} bytes')


def build_embedding(method: str, num_entities: int, dim: int, budget: float,
                    bucket_size: Optional[int] = None,
                    threshold_init: float = -100.,
                    precision: str = 'float32',
                    budget_unit: str = 'full',
                    exact_index: Optional[Tensor] = None) -> Module:
    r"""A fresh embedding of :obj:`method` sized to :obj:`budget` (for the
    pruning methods, the unpruned start of phase 1; for
    :obj:`'magnitude'`, the full table it is pruned from), trained and
    stored at :obj:`precision`.

    Args:
        method (str): A name of :data:`METHODS`.
        num_entities (int): :math:`N`.
        dim (int): :math:`d`.
        budget (float): :math:`f \in (0, 1]`, in :obj:`budget_unit`.
        bucket_size (int, optional): :math:`b` of CERP (required for
            :obj:`'cerp'` and its variants :obj:`'cerp-*'`).
        threshold_init (float, optional): The initial threshold logit of
            CERP and PEP. (default: :obj:`-100.`)
        precision (str, optional): The value precision of the stored form,
            simulated in training: :obj:`'float32'`, :obj:`'float16'` or
            :obj:`'int8'` or :obj:`'int4'` (per-row scales).
            (default: :obj:`'float32'`)
        budget_unit (str, optional): :obj:`'full'` (:math:`f` of the
            :math:`Nd` values) or :obj:`'bytes'` (:math:`f` of the full
            table's :obj:`float32` bytes, :func:`budget_nbytes`; QR and
            hashing sized by their :meth:`for_nbytes` at :obj:`precision`).
            (default: :obj:`'full'`)
        exact_index (torch.Tensor, optional): For a hybrid method
            (:obj:`'*-hybrid'`, byte budgets only), the ids with exact rows
            (*e.g.* :func:`~pyg_cerp.nn.hybrid.most_frequent`); its base
            gets the bytes they leave. (default: :obj:`None`)

    Raises:
        ValueError: If the method cannot meet the budget (*e.g.*, QR needs
            about :math:`2\sqrt{N}` rows).
    """
    m = get_method(method)
    n, d = int(num_entities), int(dim)
    if not 0. < float(budget) <= 1.:
        raise ValueError(f"'budget' must be in (0, 1] (got {budget})")
    precision = check_precision(precision)
    check_budget_unit(budget_unit)
    if m.base is not None:
        if budget_unit != 'bytes' or exact_index is None:
            raise ValueError(f"Method {m.name!r} needs budget_unit='bytes' "
                             f"and an 'exact_index'")
        k = exact_index.numel()
        base = build_embedding(m.base, n - k, d,
                               _base_budget(n, d, budget, k, precision),
                               bucket_size, threshold_init, precision,
                               'bytes')
        return HybridEmbedding(base, exact_index, n, check_index=False)
    if m.name in ('full', 'magnitude'):
        return FullEmbedding(n, d, check_index=False, precision=precision)
    if m.compositional:
        if bucket_size is None:
            raise ValueError(f"Method {m.name!r} needs a 'bucket_size'")
        check_int('bucket_size', bucket_size, minimum=1)
        return CompositionalEmbedding(n, d, int(bucket_size),
                                      threshold_init=threshold_init,
                                      check_index=False, precision=precision,
                                      operation=m.operation)
    if m.name == 'pep':
        return PEPEmbedding(n, d, threshold_init=threshold_init,
                            check_index=False, precision=precision)
    cls = HashEmbedding if m.name == 'hash' else QREmbedding
    kwargs: Dict[str, Any] = dict(check_index=False)
    if m.name != 'hash':
        kwargs['operation'] = m.name[3:]
    if budget_unit == 'bytes':
        return cls.for_nbytes(n, d, budget_nbytes(n, d, budget),
                              precision=precision, **kwargs)
    return cls.for_budget(n, d, budget, precision=precision, **kwargs)


def hybrid_budget(num_entities: int, dim: int, budget: float,
                  exact_share: float,
                  precision: str = 'float32') -> Tuple[int, int, float]:
    r"""The split of a byte budget :math:`f` for a hybrid method: the most
    exact rows :math:`k` whose stored form fits :obj:`exact_share` of
    :func:`budget_nbytes` (:func:`~pyg_cerp.nn.hybrid.exact_rows_for_nbytes`),
    and, for the base's :math:`N - k` entities, the bytes left as a budget
    :math:`f'` of their own full table's :math:`4(N - k)d` bytes.

    Returns:
        :obj:`(k, N - k, f')`.

    Args:
        num_entities (int): :math:`N`.
        dim (int): :math:`d`.
        budget (float): :math:`f \in (0, 1]`, of the full table's bytes.
        exact_share (float): The share of the bytes for exact rows, in
            :math:`(0, 1)`.
        precision (str, optional): The value precision.
            (default: :obj:`'float32'`)
    """
    if not 0. < float(exact_share) < 1.:
        raise ValueError(f"'exact_share' must be in (0, 1) (got "
                         f"{exact_share})")
    n, d = int(num_entities), int(dim)
    nbytes = budget_nbytes(n, d, budget)
    k = exact_rows_for_nbytes(n, d, math.floor(exact_share * nbytes),
                              precision)
    if k < 1:
        raise ValueError(f"{exact_share:g} of {nbytes} bytes buys no exact "
                         f"row at {precision}")
    return k, n - k, _base_budget(n, d, budget, k, precision)


def _base_budget(n: int, d: int, budget: float, k: int,
                 precision: str) -> float:
    # The budget f' of a hybrid's base: the bytes that k exact rows leave of
    # budget_nbytes, over the base's own full table.
    rest = budget_nbytes(n, d, budget) - exact_nbytes(n, d, k, precision)
    if rest <= 0 or k >= n:
        raise ValueError(f"{k} exact rows leave no bytes of the budget for "
                         f"the other entities")
    return min(1., rest / full_table_nbytes(n - k, d))


def bucket_candidates(num_entities: int, budget: float,
                      ratios: Sequence[float] = (1.5, 2., 4.),
                      budget_unit: str = 'full',
                      dim: Optional[int] = None,
                      precision: str = 'float32') -> List[int]:
    r"""The bucket sizes swept for CERP at :obj:`budget`.

    For :obj:`budget_unit='full'`: :math:`b = \lceil \rho f N / 2 \rceil`
    for each ratio :math:`\rho`, so that the two meta tables hold
    :math:`\rho f` of the full table and must be pruned to meta density
    :math:`1/\rho` (:math:`0.67, 0.5, 0.25` by default).

    For :obj:`budget_unit='bytes'`: the :math:`b` of the budget planner
    (:func:`pyg_cerp.planner.plan_budget` with :obj:`bucket_ratio`
    :math:`\rho` and :obj:`precision`): :math:`b = \lceil \rho z / (2d)
    \rceil` (at least :math:`\lceil \sqrt{N} \rceil`) for the most
    non-zeros :math:`z` whose stored form at :obj:`precision` (values,
    sparse index, int8 scales) fits :func:`budget_nbytes`, so that a
    narrower value keeps more of them; ratios no embedding fits are left
    out.

    Capped at :math:`N`, deduplicated, ascending.

    Args:
        num_entities (int): :math:`N`.
        budget (float): :math:`f \in (0, 1]`, in :obj:`budget_unit`.
        ratios (Sequence[float], optional): The ratios :math:`\rho`.
            (default: :obj:`(1.5, 2., 4.)`)
        budget_unit (str, optional): :obj:`'full'` or :obj:`'bytes'` (see
            :func:`build_embedding`). (default: :obj:`'full'`)
        dim (int, optional): :math:`d` (required for :obj:`'bytes'`).
        precision (str, optional): The value precision (for
            :obj:`'bytes'`). (default: :obj:`'float32'`)
    """
    n = int(num_entities)
    if check_budget_unit(budget_unit) == 'full':
        return sorted({max(1, min(n, math.ceil(r * budget * n / 2.)))
                       for r in ratios})
    if dim is None:
        raise ValueError("budget_unit='bytes' needs the embedding size "
                         "'dim'")
    nbytes = budget_nbytes(n, dim, budget)
    out = set()
    for r in ratios:
        try:
            plan = plan_budget(n, int(dim), nbytes,
                               precisions=(check_precision(precision), ),
                               bucket_ratio=max(1., float(r)))
        except ValueError:  # Below the smallest embedding at this ratio.
            continue
        out.add(plan.bucket_size)
    return sorted(out)
