r"""pyg-cerp: compact compositional embeddings via regularized pruning (CERP)
for PyTorch Geometric recommenders."""
from .nn import (CompositionalEmbedding, MLPScorer, SymmetricLGConv,
                 use_symmetric_propagation)

__version__ = '0.1.0'

__all__ = [
    'CompositionalEmbedding',
    'MLPScorer',
    'SymmetricLGConv',
    'use_symmetric_propagation',
    '__version__',
]
