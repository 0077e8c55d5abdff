r"""pyg-cerp: compact compositional embeddings via regularized pruning (CERP)
for PyTorch Geometric recommenders."""
from .nn import (CompactEmbedding, CompositionalEmbedding, MLPScorer, SymmetricLGConv,
                 use_symmetric_propagation)

from .datasets import Gowalla, LightGCNDataset, Yelp2020
from .metrics import RankingEvaluator, ranking_metrics, ranking_metrics_from_scores
from .sampling import BPRSampler
from .train import CERPConfig, CERPRunner, PruningScheduler

from . import serving  # noqa: F401 (pyg_cerp.serving as a submodule)
from . import planner  # noqa: F401 (pyg_cerp.planner as a submodule)
from .planner import compositional_for_budget, plan_budget

__version__ = '0.1.0'

__all__ = [
    'CompositionalEmbedding',
    'MLPScorer',
    'CompactEmbedding',
    'SymmetricLGConv',
    'use_symmetric_propagation',
    'LightGCNDataset',
    'Gowalla',
    'Yelp2020',
    'BPRSampler',
    'PruningScheduler',
    'CERPConfig',
    'CERPRunner',
    'ranking_metrics',
    'ranking_metrics_from_scores',
    'RankingEvaluator',
    'plan_budget',
    'compositional_for_budget',
    '__version__',
]
