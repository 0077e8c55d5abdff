r"""Serving a trained recommender from its compact form.

A served model is the *unmodified* backbone with the
:class:`~pyg_cerp.nn.CompactEmbedding` plugged in as :obj:`model.embedding`:
PyG's :class:`~torch_geometric.nn.models.LightGCN` (propagating the compact
:math:`\mathbf{E}^{(0)}` over the training graph with its own
:meth:`get_embedding`, exact in :obj:`float32`) or
:class:`~pyg_cerp.nn.MLPScorer` (its own :meth:`score_all`)::

    served = export(model, dtype='int8')           # or model.embedding =
    save(served, 'model.pt')                       #   emb.to_compact()
    top = recommend(served, users, k=20, exclude=train_edge_index,
                    edge_index=adj, num_users=num_users)   # LightGCN only

The file is :obj:`served.state_dict()` with a SHA-256
(:func:`pyg_cerp.utils.io.save_module`); :func:`load` fills a model of the
same class built as for training, with any :class:`CompactEmbedding` as
embedding (its sizes come from the file). At Gowalla size the file of a
LightGCN at the 1% budget holds 0.25 MB (1.4% of the full :obj:`float32`
table), plus the training graph the server holds anyway.
"""
import copy
import os
from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Module

from pyg_cerp.metrics import deterministic_topk
from pyg_cerp.utils.io import load_module, save_module
from pyg_cerp.utils.validation import check_edge_ids, check_index

__all__ = ['export', 'save', 'load', 'exclude_', 'recommend']

PathLike = Union[str, os.PathLike]


def export(model: Module, dtype: Optional[Union[str, torch.dtype]] = None,
           layout: str = 'auto', decode: str = 'cache') -> Module:
    r"""A copy of :obj:`model` for serving (evaluation mode, no gradients)
    whose :obj:`embedding` is the compact export
    :obj:`model.embedding.to_compact(dtype, layout, decode)` (see
    :meth:`~pyg_cerp.nn.CompositionalEmbedding.to_compact` for the
    arguments; :obj:`dtype=None`: the embedding's training precision); the
    training embedding is not copied."""
    if not hasattr(getattr(model, 'embedding', None), 'to_compact'):
        raise TypeError(f"'model.embedding' must be a CompositionalEmbedding "
                        f"(got {type(getattr(model, 'embedding', None))})")
    compact = model.embedding.to_compact(dtype, layout, decode)
    served = copy.deepcopy(model, {id(model.embedding): compact})
    return served.eval().requires_grad_(False)


def save(model: Module, path: PathLike) -> None:
    r"""Writes the served :obj:`model`'s state atomically with a SHA-256."""
    save_module(model, path)


def load(model: Module, path: PathLike) -> Module:
    r"""Loads a file of :func:`save` into :obj:`model` (same class and
    configuration, any :class:`~pyg_cerp.nn.CompactEmbedding` as
    embedding) and returns it in evaluation mode.

    Raises:
        FileNotFoundError: If the file does not exist.
        FormatError: If it is corrupted, truncated, of another model class
            or version, or does not fit :obj:`model`.
    """
    return load_module(model, path).eval()


def exclude_(scores: Tensor, user: Tensor, edge_index: Tensor) -> Tensor:
    r"""Sets :obj:`scores[r, i]` to :math:`-\infty`, in place, for every
    pair :obj:`(user[r], i)` in :obj:`edge_index`.

    Args:
        scores (torch.Tensor): The :obj:`[U, I]` scores of the users.
        user (torch.Tensor): The :obj:`U` *distinct* user ids of the rows.
        edge_index (torch.Tensor): The :obj:`[2, E]` (user, item) pairs.
    """
    sorted_user, order = user.sort()
    src = edge_index[0].to(user.device)
    pos = torch.searchsorted(sorted_user, src).clamp_(max=user.numel() - 1)
    hit = sorted_user[pos] == src
    scores[order[pos[hit]], edge_index[1].to(user.device)[hit]] = -float('inf')
    return scores


def _scorer(model: Module, edge_index, num_users: Optional[int]
            ) -> Tuple[Callable[[Tensor], Tensor], int, int]:
    if not hasattr(model, 'get_embedding'):  # MLPScorer: score_all
        return model.score_all, model.num_users, model.num_items
    if edge_index is None or num_users is None:
        raise ValueError("Recommending with LightGCN needs 'edge_index' "
                         "(the graph it propagates over) and 'num_users'")
    emb = model.get_embedding(edge_index)
    item_t = emb[num_users:].t()
    return (lambda u: emb[u] @ item_t), num_users, item_t.size(1)


@torch.no_grad()
def recommend(model: Module, user: Tensor, k: int,
              exclude: Optional[Tensor] = None, *,
              edge_index: Optional[Tensor] = None,
              num_users: Optional[int] = None, batch_size: int = 1024,
              return_scores: bool = False
              ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    r"""The :math:`k` items of highest score per user, never an item of
    :obj:`exclude` (its score is :math:`-\infty`), ties broken by increasing
    item id (:func:`pyg_cerp.metrics.deterministic_topk`, as in evaluation).
    A user with fewer than :math:`k` other items gets excluded ones last.

    Args:
        model (torch.nn.Module): A (served) PyG :class:`LightGCN`, scoring
            :math:`\mathbf{e}_u^\top \mathbf{e}_{N_U + i}` with its
            propagated embeddings, or a model with :meth:`score_all`,
            :obj:`num_users` and :obj:`num_items` (:class:`MLPScorer`).
        user (torch.Tensor): The 1-D user ids (duplicates allowed).
        k (int): The number of items per user.
        exclude (torch.Tensor, optional): The :obj:`[2, E]` (user, item)
            pairs never to recommend, typically the training interactions.
        edge_index (torch.Tensor, optional): LightGCN only: the graph for
            :meth:`get_embedding` (as in training).
        num_users (int, optional): LightGCN only: :math:`N_U` (items are
            the nodes :math:`N_U, \ldots, N - 1`).
        batch_size (int, optional): Users scored at once.
            (default: :obj:`1024`)
        return_scores (bool, optional): Also return the scores.
            (default: :obj:`False`)

    Returns:
        The :obj:`[len(user), k]` item ids (and their scores).
    """
    score, num_users, num_items = _scorer(model, edge_index, num_users)
    check_index(user, num_users, 'user')
    if user.dim() != 1 or not 1 <= k <= num_items:
        raise ValueError(f"'user' must be 1-D and 'k' in [1, {num_items}] "
                         f"(got shape {tuple(user.shape)} and k={k})")
    if exclude is not None:
        if exclude.dim() != 2 or exclude.size(0) != 2:
            raise ValueError(f"'exclude' must be a [2, E] tensor of (user, "
                             f"item) ids (got shape {tuple(exclude.shape)})")
        check_edge_ids(exclude, num_users, num_items, 'exclude')
    distinct, inverse = user.unique(return_inverse=True)
    top, val = [], []
    for batch in distinct.split(batch_size):
        scores = score(batch)
        if exclude is not None:
            exclude_(scores, batch.to(scores.device), exclude)
        top.append(deterministic_topk(scores, k))
        val.append(scores.gather(1, top[-1]))
    if not top:
        top, val = [user.new_empty(0, k)], [torch.empty(0, k)]
    inverse = inverse.to(top[0].device)
    top, val = torch.cat(top)[inverse], torch.cat(val)[inverse]
    return (top, val) if return_scores else top
