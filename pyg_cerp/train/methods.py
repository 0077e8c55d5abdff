r"""The methods of the equal-memory comparison as first-class objects, and
training to convergence (early stopping on a validation split).

Every method is sized to a **budget** :math:`f`, a fraction of the
:math:`N \times d` values of the full table (the unit of
:mod:`pyg_cerp.memory`'s callers and of ``benchmarks/memory_vs_ndcg.py``):
*stored values* for the unpruned structures (:class:`QREmbedding`:
:math:`(m + \lceil N/m \rceil) d \leq fNd`; :class:`HashEmbedding`:
:math:`\lfloor fN \rfloor d`), *non-zeros* for the pruned ones (CERP, PEP,
magnitude: at most :math:`fNd`, the scheduler's :obj:`target_unit='full'`).
The stored bytes (:func:`pyg_cerp.memory.stored_nbytes`, with sparse
formats for pruned tables) are reported next to it.

================  =========  ====================================================
name              kind       what
================  =========  ====================================================
``full``          fixed      the full table, :class:`FullEmbedding` (budget 1)
``cerp``          threshold  :class:`CompositionalEmbedding`, phase 1 with the
                             regulariser, then retrained (rewound, masks frozen)
``cerp-noreg``    threshold  the same with :math:`\gamma = 0`
``cerp-ft``       threshold  CERP fine-tuned from its values at the target
                             (masks frozen, no rewind: one-phase CERP)
``pep``           threshold  :class:`PEPEmbedding`, the same two phases
``qr-mul``        fixed      :class:`QREmbedding`, element-wise product
``qr-add``        fixed      :class:`QREmbedding`, sum
``hash``          fixed      :class:`HashEmbedding`, universal hash
``magnitude``     magnitude  the trained full table, its :math:`\lfloor fNd
                             \rfloor` largest entries kept
                             (:meth:`PEPEmbedding.from_magnitude`), fine-tuned
                             with the mask frozen
================  =========  ====================================================
"""
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

from torch.nn import Module

from pyg_cerp.nn import CompositionalEmbedding
from pyg_cerp.nn.baselines import (FullEmbedding, HashEmbedding,
                                   PEPEmbedding, QREmbedding)
from pyg_cerp.train.config import CERPConfig
from pyg_cerp.utils.validation import check_int

__all__ = ['Method', 'METHODS', 'get_method', 'build_embedding',
           'bucket_candidates']


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
    """
    name: str
    kind: str
    regularized: bool = False
    description: str = ''
    rewind: bool = True

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
    Method('pep', 'threshold', False, 'PEP (learned element-wise thresholds)'),
    Method('qr-mul', 'fixed', description='quotient-remainder, product'),
    Method('qr-add', 'fixed', description='quotient-remainder, sum'),
    Method('hash', 'fixed', description='hashing trick'),
    Method('magnitude', 'magnitude',
           description='magnitude pruning of the trained full table'),
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


def build_embedding(method: str, num_entities: int, dim: int, budget: float,
                    bucket_size: Optional[int] = None,
                    threshold_init: float = -100.) -> Module:
    r"""A fresh embedding of :obj:`method` sized to :obj:`budget` (for the
    pruning methods, the unpruned start of phase 1; for
    :obj:`'magnitude'`, the full table it is pruned from).

    Args:
        method (str): A name of :data:`METHODS`.
        num_entities (int): :math:`N`.
        dim (int): :math:`d`.
        budget (float): :math:`f \in (0, 1]`.
        bucket_size (int, optional): :math:`b` of CERP (required for
            :obj:`'cerp'`, :obj:`'cerp-noreg'`, :obj:`'cerp-ft'`).
        threshold_init (float, optional): The initial threshold logit of
            CERP and PEP. (default: :obj:`-100.`)

    Raises:
        ValueError: If the method cannot meet the budget (*e.g.*, QR needs
            about :math:`2\sqrt{N}` rows).
    """
    m = get_method(method)
    n, d = int(num_entities), int(dim)
    if not 0. < float(budget) <= 1.:
        raise ValueError(f"'budget' must be in (0, 1] (got {budget})")
    if m.name in ('full', 'magnitude'):
        return FullEmbedding(n, d, check_index=False)
    if m.compositional:
        if bucket_size is None:
            raise ValueError(f"Method {m.name!r} needs a 'bucket_size'")
        check_int('bucket_size', bucket_size, minimum=1)
        return CompositionalEmbedding(n, d, int(bucket_size),
                                      threshold_init=threshold_init,
                                      check_index=False)
    if m.name == 'pep':
        return PEPEmbedding(n, d, threshold_init=threshold_init,
                            check_index=False)
    if m.name in ('qr-mul', 'qr-add'):
        return QREmbedding.for_budget(n, d, budget, operation=m.name[3:],
                                      check_index=False)
    return HashEmbedding.for_budget(n, d, budget, check_index=False)


def bucket_candidates(num_entities: int, budget: float,
                      ratios: Sequence[float] = (1.5, 2., 4.)) -> List[int]:
    r"""The bucket sizes swept for CERP at :obj:`budget`: :math:`b =
    \lceil \rho f N / 2 \rceil` for each ratio :math:`\rho`, so that the two
    meta tables hold :math:`\rho f` of the full table and must be pruned to
    meta density :math:`1/\rho` (:math:`0.67, 0.5, 0.25` by default). Capped
    at :math:`N`, deduplicated, ascending."""
    n = int(num_entities)
    out = sorted({max(1, min(n, math.ceil(r * budget * n / 2.)))
                  for r in ratios})
    return out
