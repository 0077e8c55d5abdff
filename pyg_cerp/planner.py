r"""Planning a :class:`~pyg_cerp.nn.CompositionalEmbedding` for a byte
budget: the bucket size :math:`b`, the target density and the value
precision whose stored form (:mod:`pyg_cerp.memory`) fits the budget.

A plan with :math:`z` non-zeros over the :math:`b` rows of
:math:`\hat{\mathbf{P}}` and the :math:`q = \lceil N / \lceil N/b \rceil
\rceil` used rows of :math:`\hat{\mathbf{Q}}` is counted as the cheaper of
both tables stored as bitmaps or both as CSR, with precision :math:`p`,

.. math::
    \textrm{bytes}(z) = \min_{\ell \in \{\textrm{bitmap}, \textrm{csr}\}}
    \sum_{t \in \{P, Q\}} \textrm{layout\_nbytes}(r_t, d, z_t, \ell, p),

which does not depend on how the :math:`z` non-zeros split between the two
tables (both layouts are affine in :math:`z_t`) and bounds the stored bytes
of any split from above (each table takes its cheaper layout). The bucket
size follows the bucket ratio :math:`\rho` (the meta tables hold
:math:`\rho z` values, pruned to meta density :math:`1 / \rho`, as in
:func:`~pyg_cerp.train.methods.bucket_candidates`),

.. math::
    b(z) = \min\left(N, \max\left(\lceil \sqrt{N} \rceil, \left\lceil
    \frac{\rho z}{2d} \right\rceil\right)\right),

so that :math:`\textrm{bytes}(z)` is non-decreasing and the plan is the
largest :math:`z` within the budget (a larger budget never gives a smaller
plan). The target density is :math:`z / (Nd)`, the unit of
:class:`~pyg_cerp.train.ConvergedRunner`'s budgets and of
:obj:`CERPConfig(target_unit='full')`.

**Without a table** the rule is the one the converged Gowalla LightGCN runs
selected on validation NDCG@20 (budgets in bytes, int8 and int4; the
measurements are in ``docs/training.md``, section *Precision, byte targets,
distillation, the budget planner*, and
``benchmarks/results/gowalla_lightgcn_bytes.md``):
:data:`RULE_METHODS` plans :obj:`'cerp-mul'` (the rows multiplied,
:obj:`operation='mul'`, trained without the regulariser; not in the paper)
from 3% of the full :obj:`float32` table's bytes and :obj:`'cerp'` below,
and :data:`RULE_BUCKET_RATIOS` its :math:`\rho`: for :obj:`'cerp'` 1.5
from 7.5%, 1.25 from 3% and 4 below; for :obj:`'cerp-mul'` 1.1 from 3% and
1.25 below (larger ratios collapsed its pruning at 1%); at int4
(:data:`RULE_PRECISION_BUCKET_RATIOS`) :obj:`'cerp'` takes 2 below 3%,
as selected on validation at 1%. :obj:`methods`
can restrict it (:obj:`('cerp', )`: the paper's method). Among
:obj:`precisions` (by default every one) the rule takes the one storing the
most non-zeros (ties to the earlier one): int4, which scored above int8 on
validation for every pyg-cerp configuration measured at both (10%, 5%, 1%
and 0.5% of the bytes, distilled, seed 1), as int8 did above float32 for
every method measured at both. On other data, pass a measured table.

The planner plans the compositional methods only: :obj:`'cerp'` and its
variants :obj:`'cerp-noreg'`, :obj:`'cerp-ft'` and :obj:`'cerp-mul'`, which
a :class:`Plan` names in :obj:`method`. At 5% of the bytes and more the
same benchmark measured baselines above them (magnitude pruning of the
trained full table at 10%, QR-mul at 5%): read the report before choosing
CERP there.

**With a table** (rows measured by the benchmark, see :func:`load_table`)
the compositional rows whose stored bytes meet the budget are ranked by
validation NDCG@20 and the best one's method, precision and bucket ratio are
planned for :obj:`num_embeddings`, :obj:`embedding_dim` and the budget. Rows
trained with ranking distillation from the full table (a :obj:`distill`
weight above 0) take part only with :obj:`distillation=True`, since they
need the trained full-table teacher; the plan then carries the chosen row's
weight.
"""
import csv
import math
import os
from dataclasses import dataclass
from typing import (Any, Iterable, List, Mapping, Optional, Sequence, Tuple,
                    Union)

from pyg_cerp.memory import DTYPES, dtype_name, layout_nbytes
from pyg_cerp.nn.compose import check_operation
from pyg_cerp.utils.validation import check_float, check_int

__all__ = ['Plan', 'PlanRow', 'plan_budget', 'compositional_for_budget',
           'load_table', 'full_table_nbytes', 'plan_nbytes',
           'rule_bucket_ratio', 'rule_method']

#: The rule's bucket ratios per method: (from this fraction of the full
#: float32 table's bytes, rho), largest first (selected on validation on
#: Gowalla; switching between the measured budgets).
RULE_BUCKET_RATIOS = {'cerp': ((0.075, 1.5), (0.03, 1.25), (0., 4.)),
                      'cerp-mul': ((0.03, 1.1), (0., 1.25))}
#: Where a precision's rule ratios differ from :data:`RULE_BUCKET_RATIOS`
#: (precision -> method -> entries as there): int4's bitmap bit is a
#: quarter of a value, so it wants denser tables, rho 2 below 3% (at 1%,
#: cerp-noreg int4 distilled, seed 1: validation NDCG@20 0.0662 against
#: 0.0594 at int8's rho 4).
RULE_PRECISION_BUCKET_RATIOS = {
    'int4': {'cerp': ((0.075, 1.5), (0.03, 1.25), (0., 2.))}}
#: The rule's methods: (from this fraction of the full float32 table's
#: bytes, the methods by validation NDCG@20 there), largest first.
RULE_METHODS = ((0.03, ('cerp-mul', 'cerp')), (0., ('cerp', 'cerp-mul')))
#: The methods whose measured rows plan a CompositionalEmbedding, with the
#: composition operation of each (pyg_cerp.train.METHODS).
CERP_METHODS = {'cerp': 'add', 'cerp-noreg': 'add', 'cerp-ft': 'add',
                'cerp-mul': 'mul'}


@dataclass(frozen=True)
class Plan:
    r"""A configuration of :class:`~pyg_cerp.nn.CompositionalEmbedding`
    for a byte budget.

    Args:
        bucket_size (int): :math:`b`.
        target_density (float): The non-zeros over :math:`Nd` to prune to
            (the runner's budget, unit :obj:`'full'`).
        precision (str): The value precision of the stored form
            (:obj:`'float32'`, :obj:`'float16'`, :obj:`'int8'` or
            :obj:`'int4'`).
        expected_bytes (int): The stored bytes at :attr:`num_nonzero`
            non-zeros (an upper bound, see the module docstring).
        num_nonzero (int): :math:`z`, the non-zeros kept.
        bucket_ratio (float): :math:`\rho`.
        source (str): :obj:`'rule'` or :obj:`'table'`.
        valid (float, optional): The validation metric of the chosen row
            (with a table).
        distill (float): The ranking-distillation weight of the chosen row
            (:class:`~pyg_cerp.train.RankingDistillation`; 0: none).
        method (str): The training method of the chosen row (a key of
            :data:`CERP_METHODS` and of :data:`pyg_cerp.train.METHODS`:
            :obj:`'cerp'` with the regulariser, :obj:`'cerp-mul'` with the
            rows multiplied and :math:`\gamma = 0`, ...).
    """
    bucket_size: int
    target_density: float
    precision: str
    expected_bytes: int
    num_nonzero: int = 0
    bucket_ratio: float = RULE_BUCKET_RATIOS['cerp'][0][1]
    source: str = 'rule'
    valid: Optional[float] = None
    distill: float = 0.
    method: str = 'cerp'

    def __post_init__(self) -> None:
        dtype_name(self.precision)
        _check_method(self.method)

    @property
    def operation(self) -> str:
        r"""How :attr:`method` composes the two rows (:obj:`'add'` or
        :obj:`'mul'`), the :obj:`operation` of
        :class:`~pyg_cerp.nn.CompositionalEmbedding`."""
        return CERP_METHODS[self.method]


@dataclass(frozen=True)
class PlanRow:
    r"""One measured configuration.

    Args:
        method (str): The method (only rows of :data:`CERP_METHODS`
            plan).
        budget_bytes (int): Its stored bytes.
        precision (str): Its value precision.
        bucket_ratio (float): Its :math:`\rho = 2bd / z` (:math:`= 2b /
            (fN)`).
        valid (float): Its validation metric (NDCG@20).
        distill (float): Its ranking-distillation weight (0: none).
    """
    method: str
    budget_bytes: int
    precision: str
    bucket_ratio: float
    valid: float
    distill: float = 0.


def _check_method(method: str) -> str:
    if method not in CERP_METHODS:
        raise ValueError(f"'method' must be one of {list(CERP_METHODS)} "
                         f"(got {method!r})")
    return method


def _rule_entry(num_embeddings: int, embedding_dim: int,
                budget_bytes: int, entries: Sequence[Tuple[float, Any]]
                ) -> Any:
    # The first entry whose fraction of the full table the budget reaches.
    full = full_table_nbytes(num_embeddings, embedding_dim)
    return next(value for fraction, value in entries
                if budget_bytes >= fraction * full)


def rule_bucket_ratio(num_embeddings: int, embedding_dim: int,
                      budget_bytes: int, method: str = 'cerp',
                      precision: Optional[str] = None) -> float:
    r"""The rule's :math:`\rho` for :obj:`method` (:obj:`'cerp'` or
    :obj:`'cerp-mul'`) at :obj:`precision` from
    :data:`RULE_PRECISION_BUCKET_RATIOS` where it has them, else from
    :data:`RULE_BUCKET_RATIOS`: the first whose fraction of
    :func:`full_table_nbytes` the budget reaches."""
    if method not in RULE_BUCKET_RATIOS:
        raise ValueError(_rule_only(method))
    own = RULE_PRECISION_BUCKET_RATIOS.get(
        dtype_name(precision) if precision is not None else '', {})
    return _rule_entry(num_embeddings, embedding_dim, budget_bytes,
                       own.get(method, RULE_BUCKET_RATIOS[method]))


def rule_method(num_embeddings: int, embedding_dim: int, budget_bytes: int,
                methods: Sequence[str] = tuple(CERP_METHODS)) -> str:
    r"""The rule's method among :obj:`methods` from :data:`RULE_METHODS`:
    the one with the best validation NDCG@20 measured at the budget's
    fraction of :func:`full_table_nbytes`."""
    order = _rule_entry(num_embeddings, embedding_dim, budget_bytes,
                        RULE_METHODS)
    method = next((m for m in order if m in methods), None)
    if method is None:
        raise ValueError(_rule_only(list(methods)))
    return method


def _rule_only(methods: Any) -> str:
    return (f"The rule plans {list(RULE_BUCKET_RATIOS)} only (its bucket "
            f"ratios were selected for them); pass a measured 'table' to "
            f"plan {methods}")


def full_table_nbytes(num_embeddings: int, embedding_dim: int) -> int:
    r"""The bytes of the full :math:`N \times d` :obj:`float32` table (the
    unit of budgets given as a fraction)."""
    n, d = int(num_embeddings), int(embedding_dim)
    return layout_nbytes(n, d, n * d, 'dense', 'float32')


def _q_rows(num_embeddings: int, bucket_size: int) -> int:
    # The used rows of Q (CompositionalEmbedding.num_q_rows_used).
    return math.ceil(num_embeddings / math.ceil(num_embeddings / bucket_size))


def _bucket_size(num_embeddings: int, embedding_dim: int, nonzero: int,
                 ratio: float) -> int:
    low = math.isqrt(num_embeddings - 1) + 1  # ceil(sqrt(N))
    b = math.ceil(ratio * nonzero / (2 * embedding_dim))
    return min(num_embeddings, max(low, b))


def plan_nbytes(num_embeddings: int, embedding_dim: int, bucket_size: int,
                nonzero: int, precision: str = 'float32') -> int:
    r"""The stored bytes of a :class:`~pyg_cerp.nn.CompositionalEmbedding`
    with :obj:`nonzero` non-zeros (the bound of the module docstring,
    counted by :func:`pyg_cerp.memory.layout_nbytes`)."""
    rows = (bucket_size, _q_rows(num_embeddings, bucket_size))
    z_p = nonzero * rows[0] // sum(rows)
    z = (z_p, nonzero - z_p)  # Any split: both totals are affine in z_t.
    return min(sum(layout_nbytes(r, embedding_dim, zt, layout, precision)
                   for r, zt in zip(rows, z))
               for layout in ('bitmap', 'csr'))


def _solve(n: int, d: int, budget: int, ratio: float,
           precision: str) -> Optional[Tuple[int, int, int]]:
    # The largest z in [1, N d) with bytes(z) <= budget (bytes(z) is
    # non-decreasing), as (z, b, bytes); None if even z = 1 does not fit.
    def size(z: int) -> Tuple[int, int]:
        b = _bucket_size(n, d, z, ratio)
        cap = (b + _q_rows(n, b)) * d
        return b, (plan_nbytes(n, d, b, z, precision) if z <= cap else
                   budget + 1)

    if size(1)[1] > budget:
        return None
    lo, hi = 1, n * d - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if size(mid)[1] <= budget:
            lo = mid
        else:
            hi = mid - 1
    b, nbytes = size(lo)
    return lo, b, nbytes


def _plan(n: int, d: int, budget: int, ratio: float, precision: str,
          row: Optional[PlanRow] = None,
          method: str = 'cerp') -> Optional[Plan]:
    out = _solve(n, d, budget, ratio, precision)
    if out is None:
        return None
    z, b, nbytes = out
    if row is None:
        return Plan(b, z / (n * d), precision, nbytes, z, ratio,
                    method=method)
    return Plan(b, z / (n * d), precision, nbytes, z, ratio, 'table',
                row.valid, row.distill, row.method)


def _check(num_embeddings: int, embedding_dim: int, budget_bytes: int,
           precisions: Sequence[str]) -> List[str]:
    check_int('num_embeddings', num_embeddings, minimum=2)
    check_int('embedding_dim', embedding_dim)
    check_int('budget_bytes', budget_bytes)
    names = [dtype_name(p) for p in precisions]
    if not names:
        raise ValueError("'precisions' must not be empty")
    return names


def _too_small(n: int, d: int, budget: int,
               ratios: Mapping[str, float]) -> ValueError:
    # ratios: precision -> rho.
    names = list(ratios)
    least = min(plan_nbytes(n, d, _bucket_size(n, d, 1, ratio), 1, p)
                for p, ratio in ratios.items())
    return ValueError(
        f"'budget_bytes'={budget} is below the smallest "
        f"CompositionalEmbedding({n}, {d}) with one non-zero and "
        f"b >= ceil(sqrt(N)) in {list(names)}: {least} bytes")


def plan_budget(num_embeddings: int, embedding_dim: int, budget_bytes: int,
                table: Optional[Iterable[Union[PlanRow, Mapping]]] = None,
                precisions: Optional[Sequence[str]] = None,
                bucket_ratio: Optional[float] = None,
                distillation: bool = False,
                methods: Sequence[str] = tuple(CERP_METHODS)) -> Plan:
    r"""The :class:`Plan` of a
    :class:`~pyg_cerp.nn.CompositionalEmbedding` for :obj:`budget_bytes`
    (see the module docstring).

    Args:
        num_embeddings (int): :math:`N \geq 2`.
        embedding_dim (int): :math:`d`.
        budget_bytes (int): The stored bytes allowed (a fraction :math:`f`
            of the full table: :obj:`int(f * full_table_nbytes(N, d))`).
        table (Iterable[PlanRow or dict], optional): Measured rows (see
            :func:`load_table`); :obj:`None`: the rule.
            (default: :obj:`None`)
        precisions (Sequence[str], optional): The precisions allowed
            (:obj:`None`: every one). (default: :obj:`None`)
        bucket_ratio (float, optional): :math:`\rho \geq 1` instead of the
            rule's (:func:`rule_bucket_ratio`, per precision).
            (default: :obj:`None`)
        distillation (bool, optional): Whether rows of :obj:`table`
            measured with ranking distillation may be chosen (the plan's
            :obj:`distill` is then the weight to train with).
            (default: :obj:`False`)
        methods (Sequence[str], optional): The methods that may be
            planned (*e.g.* :obj:`('cerp', )` for the paper's method only;
            without :obj:`table` they must include :obj:`'cerp'` or
            :obj:`'cerp-mul'`, the rule's, see :func:`rule_method`).
            (default: all of :data:`CERP_METHODS`)

    Raises:
        ValueError: If the budget is below the smallest representable
            embedding, no measured row of :obj:`table` meets it, or
            :obj:`methods` has neither of the rule's methods without a
            table.
    """
    if precisions is None:
        precisions = tuple(DTYPES)
    names = _check(num_embeddings, embedding_dim, budget_bytes, precisions)
    n, d, budget = int(num_embeddings), int(embedding_dim), int(budget_bytes)
    methods = [_check_method(m) for m in methods]
    if not methods:
        raise ValueError("'methods' must not be empty")
    method = 'cerp' if table is not None else rule_method(n, d, budget,
                                                           methods)
    if bucket_ratio is not None:
        check_float('bucket_ratio', bucket_ratio, low=1.)
    ratios = {name: float(bucket_ratio) if bucket_ratio is not None else
              rule_bucket_ratio(n, d, budget, method, name) for name in names}
    if table is not None:
        rows = [r if isinstance(r, PlanRow) else _row(r) for r in table]
        fits = [r for r in rows if r.method in methods
                and r.precision in names and r.budget_bytes <= budget
                and (distillation or not r.distill)]
        if not fits:
            kind = '' if distillation else ' without distillation'
            raise ValueError(f"No measured row of 'table' of {methods} in "
                             f"{list(names)}{kind} meets budget_bytes="
                             f"{budget} (of {len(rows)} rows)")
        # Best validation first; among equals the smaller one.
        for row in sorted(fits, key=lambda r: (-r.valid, r.budget_bytes)):
            plan = _plan(n, d, budget, max(row.bucket_ratio, 1.),
                         row.precision, row)
            if plan is not None:
                return plan
        raise _too_small(n, d, budget, ratios)
    plans = [p for p in (_plan(n, d, budget, ratios[name], name,
                               method=method)
                         for name in names) if p is not None]
    if not plans:
        raise _too_small(n, d, budget, ratios)
    return max(plans, key=lambda p: p.num_nonzero)  # First among ties.


def compositional_for_budget(num_embeddings: int, embedding_dim: int,
                             budget_bytes: int,
                             table: Optional[Iterable] = None,
                             precisions: Optional[Sequence[str]] = None,
                             distillation: bool = False,
                             methods: Sequence[str] = tuple(CERP_METHODS),
                             **kwargs: Any) -> Tuple[Any, Plan]:
    r"""A :class:`~pyg_cerp.nn.CompositionalEmbedding` planned for
    :obj:`budget_bytes` in one call, with its :class:`Plan` (train it with
    :obj:`plan.method`, prune it to :obj:`plan.target_density`, unit
    :obj:`'full'`, and export it with
    :obj:`to_compact(dtype=plan.precision)`). Its :obj:`operation` is the
    plan's; an :obj:`operation` in :obj:`kwargs` restricts the plan to the
    methods of that operation.

    Args:
        num_embeddings (int): :math:`N`.
        embedding_dim (int): :math:`d`.
        budget_bytes (int): The stored bytes allowed.
        table (Iterable, optional): See :func:`plan_budget`.
        precisions (Sequence[str], optional): See :func:`plan_budget`.
        distillation (bool, optional): See :func:`plan_budget`.
        methods (Sequence[str], optional): See :func:`plan_budget`.
        **kwargs: Further arguments of
            :class:`~pyg_cerp.nn.CompositionalEmbedding`.
    """
    from pyg_cerp.nn import CompositionalEmbedding
    if 'operation' in kwargs:
        operation = check_operation(kwargs['operation'])
        methods = [m for m in methods if CERP_METHODS.get(m) == operation]
    plan = plan_budget(num_embeddings, embedding_dim, budget_bytes, table,
                       precisions, distillation=distillation,
                       methods=methods)
    kwargs['operation'] = plan.operation
    return CompositionalEmbedding(num_embeddings, embedding_dim,
                                  plan.bucket_size, **kwargs), plan


def _float(value: Any) -> Optional[float]:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _row(raw: Mapping, embedding_dim: Optional[int] = None) -> PlanRow:
    # A PlanRow from a dict: explicit 'bucket_ratio', else 2b / (f N) from
    # the converged CSV's bucket_size, full_table_fraction, nonzero_params
    # (N = nonzero / (f d)).
    budget = _float(raw.get('budget_bytes', raw.get('bytes')))
    valid = _float(raw.get('valid', raw.get('valid_ndcg@20')))
    ratio = _float(raw.get('bucket_ratio'))
    if ratio is None:
        b, nnz = _float(raw.get('bucket_size')), _float(
            raw.get('nonzero_params'))
        d = _float(raw.get('embedding_dim', embedding_dim))
        if None not in (b, nnz, d) and nnz > 0:
            ratio = 2 * b * d / nnz
    if budget is None or valid is None or ratio is None:
        raise ValueError(f"A table row needs the bytes ('budget_bytes' or "
                         f"'bytes'), the validation metric ('valid' or "
                         f"'valid_ndcg@20') and 'bucket_ratio' (or "
                         f"'bucket_size', 'nonzero_params' and the "
                         f"embedding size); got "
                         f"{dict(raw)}")
    return PlanRow(str(raw['method']), int(budget),
                   dtype_name(raw.get('precision') or 'float32'), ratio,
                   valid, _float(raw.get('distill')) or 0.)


def load_table(path: Union[str, os.PathLike],
               embedding_dim: Optional[int] = None) -> List[PlanRow]:
    r"""The measured compositional rows of a benchmark CSV (*e.g.*
    ``benchmarks/results/gowalla_lightgcn_converged.csv``) for
    :func:`plan_budget`: columns :obj:`method`, :obj:`bytes` (or
    :obj:`budget_bytes`), :obj:`valid_ndcg@20` (or :obj:`valid`), optional
    :obj:`precision` (default :obj:`'float32'`) and :obj:`bucket_ratio`
    (else :math:`\rho = 2bd / z` from :obj:`bucket_size` and
    :obj:`nonzero_params`, which needs :obj:`embedding_dim`, an argument or
    a column: the byte-budget CSV ``<name>_<backbone>_bytes.csv`` of
    ``benchmarks/memory_vs_ndcg.py`` has every column) and :obj:`distill`
    (the distillation weight, default 0). Rows of other
    methods or without a model (no bytes or validation metric) are left
    out.

    Args:
        path (str): The CSV file.
        embedding_dim (int, optional): :math:`d` of the measured runs.
    """
    out = []
    with open(path, newline='') as f:
        for raw in csv.DictReader(f):
            if raw.get('method') not in CERP_METHODS or None in (
                    _float(raw.get('budget_bytes', raw.get('bytes'))),
                    _float(raw.get('valid', raw.get('valid_ndcg@20')))):
                continue  # No model (an infeasible budget, a missed target).
            out.append(_row(raw, embedding_dim))
    return out
