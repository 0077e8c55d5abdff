r"""pyg-cerp: compact compositional embeddings via regularized pruning (CERP)
for PyTorch Geometric recommenders."""
from .nn import CompositionalEmbedding, MLPScorer

__version__ = '0.1.0'

__all__ = [
    'CompositionalEmbedding',
    'MLPScorer',
    '__version__',
]
