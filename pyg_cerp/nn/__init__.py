r"""Embedding modules and scorers."""
from .compose import compose
from .compositional import (ComposedWeight, CompositionalEmbedding,
                            SoftThresholdPruning, soft_threshold)
from .pep import PEPEmbedding, magnitude_mask
from .hybrid import HybridEmbedding, most_frequent
from .baselines import FullEmbedding, HashEmbedding, QREmbedding
from .stored import budget_rows, nbytes_rows
from .compact import CompactEmbedding, CompressedTable, FormatError
from .quant import PRECISIONS, fake_quantize, quantize
from .mlp import MLPScorer
from .propagation import (SymmetricLGConv, SymmetricSpMM, check_symmetric,
                          is_symmetric, symmetric_lightgcn_propagation,
                          symmetric_spmm, use_symmetric_propagation)

__all__ = [
    'CompositionalEmbedding',
    'ComposedWeight',
    'SoftThresholdPruning',
    'compose',
    'soft_threshold',
    'MLPScorer',
    'FullEmbedding',
    'PEPEmbedding',
    'QREmbedding',
    'HashEmbedding',
    'HybridEmbedding',
    'most_frequent',
    'budget_rows',
    'nbytes_rows',
    'magnitude_mask',
    'CompactEmbedding',
    'CompressedTable',
    'FormatError',
    'PRECISIONS',
    'fake_quantize',
    'quantize',
    'SymmetricLGConv',
    'SymmetricSpMM',
    'symmetric_spmm',
    'check_symmetric',
    'is_symmetric',
    'use_symmetric_propagation',
    'symmetric_lightgcn_propagation',
]
