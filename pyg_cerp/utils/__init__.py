r"""Utilities."""
from .adjacency import lightgcn_adjacency
from .io import atomic_save, safe_load
from .validation import check_index

__all__ = ['atomic_save', 'safe_load', 'check_index', 'lightgcn_adjacency']
