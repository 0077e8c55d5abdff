r"""Embedding modules and scorers."""
from .compositional import (ComposedWeight, CompositionalEmbedding,
                            soft_threshold)
from .mlp import MLPScorer

__all__ = [
    'CompositionalEmbedding',
    'ComposedWeight',
    'soft_threshold',
    'MLPScorer',
]
