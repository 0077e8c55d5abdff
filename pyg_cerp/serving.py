r"""Top-:math:`k` recommendation served from the compact form of a CERP
model (see :class:`~pyg_cerp.nn.compact.CompactEmbedding`).

Two backbones:

* :class:`CompactMLPRecommender`: the compact embedding plus the MLP weights
  of an :class:`~pyg_cerp.nn.MLPScorer`.
* :class:`CompactLightGCNRecommender`: LightGCN's scores depend on the
  *propagated* embeddings, a function of the whole training graph; the
  recommender stores either the compact :math:`\mathbf{E}^{(0)}` plus the
  graph and propagates at load (:obj:`mode='propagate'`), or the final
  propagated embeddings, dense and optionally quantised
  (:obj:`mode='final'`). See its docstring for the trade-off.

Both write one self-describing, checksummed file (:meth:`save`) that is read
back with :obj:`torch.load(..., weights_only=True)` and validated
(:meth:`load`).
"""
import os
import warnings
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Linear, Module, ModuleList

from pyg_cerp.metrics import deterministic_topk
from pyg_cerp.nn.compact import (CompactEmbedding, DenseTable, FormatError,
                                 _nbytes, check_header, read_file,
                                 write_file)
from pyg_cerp.utils.validation import check_index

PathLike = Union[str, os.PathLike]


def topk_deterministic(scores: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    r"""Row-wise top-:math:`k` of :obj:`scores` ordered by decreasing score
    and, among equal scores, by increasing column id, so ties are broken the
    same way on every run and platform (:func:`torch.topk` leaves the order
    of ties unspecified).

    The indices come from :func:`pyg_cerp.metrics.deterministic_topk`,
    so serving and evaluation break ties identically.

    Args:
        scores (torch.Tensor): A :obj:`[U, I]` score matrix (no NaN).
        k (int): The number of columns to return, :math:`1 \leq k \leq I`.

    Returns:
        :obj:`(values, indices)`, each of shape :obj:`[U, k]`.
    """
    # One tie-breaking rule for evaluation and serving: reuse the metrics'.
    idx = deterministic_topk(scores, k) if scores.size(0) else \
        scores.new_empty(0, k, dtype=torch.long)
    if scores.size(0) == 0 and not 1 <= k <= scores.size(-1):
        raise ValueError(f"'k' must be in [1, {scores.size(-1)}] (got {k})")
    return scores.gather(-1, idx), idx


class InteractionIndex:
    r"""A user-sorted CSR index of (user, item) interactions, to fetch the
    items of a batch of users in :math:`O(\textrm{their interactions})`.

    Build it once with :meth:`from_edge_index` and pass it as
    :obj:`exclude` to :meth:`CompactRecommender.recommend` to avoid
    re-indexing the training graph on every call (passing the
    :obj:`[2, E]` tensor re-builds it each time). Item ids are kept as
    :obj:`uint16` when :math:`N_I \leq 65{,}536`, else :obj:`int32`.

    Args:
        ptr (torch.Tensor): The :math:`N_U + 1` row pointers.
        items (torch.Tensor): The items, grouped by user.
        num_items (int): :math:`N_I`.
    """
    def __init__(self, ptr: Tensor, items: Tensor, num_items: int) -> None:
        self.ptr = ptr
        self.items = items
        self.num_users = ptr.numel() - 1
        self.num_items = num_items

    @staticmethod
    def item_dtype(num_items: int) -> torch.dtype:
        r"""The item-id type used for :obj:`num_items` items."""
        return torch.uint16 if num_items <= 2**16 else torch.int32

    @classmethod
    def from_edge_index(cls, edge_index: Tensor, num_users: int,
                        num_items: int,
                        name: str = 'edge_index') -> 'InteractionIndex':
        r"""Indexes a :obj:`[2, E]` (user, item) tensor (order within a user
        is kept; duplicates are kept); :obj:`name` is used in errors."""
        _check_edge_index(edge_index, num_users, num_items, name)
        user, item = edge_index[0].long(), edge_index[1]
        perm = torch.argsort(user, stable=True)
        count = torch.bincount(user, minlength=num_users)
        ptr = torch.cat([count.new_zeros(1), count.cumsum(0)])
        return cls(ptr.to(torch.int32 if ptr[-1] < 2**31 else torch.long),
                   item[perm].to(cls.item_dtype(num_items)), num_items)

    def gather(self, users: Tensor) -> Tuple[Tensor, Tensor]:
        r"""Returns :obj:`(row, item)`: the position in :obj:`users` and the
        item of every interaction of those users."""
        start = self.ptr[users].long()
        length = self.ptr[users + 1].long() - start
        total = int(length.sum())
        row = torch.repeat_interleave(
            torch.arange(users.numel(), device=users.device), length,
            output_size=total)
        offset = torch.cumsum(length, 0) - length
        src = torch.arange(total, device=users.device) - offset[row] + \
            start[row]
        return row, self.items[src].long()

    def to_edge_index(self) -> Tensor:
        r"""The :obj:`[2, E]` (user, item) tensor, grouped by user."""
        user = torch.repeat_interleave(
            torch.arange(self.num_users),
            (self.ptr[1:] - self.ptr[:-1]).long())
        return torch.stack([user, self.items.long()])

    @property
    def nbytes(self) -> int:
        r"""The bytes of the pointers and item ids."""
        return _nbytes(self.ptr, self.items)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_users={self.num_users}, '
                f'num_items={self.num_items}, '
                f'num_interactions={self.items.numel()})')


def _check_edge_index(edge_index: Tensor, num_users: int, num_items: int,
                      name: str) -> None:
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or \
            edge_index.size(0) != 2:
        raise ValueError(f"'{name}' must be a [2, E] tensor of (user, item) "
                         f"ids (got "
                         f"{getattr(edge_index, 'shape', edge_index)})")
    check_index(edge_index[0], num_users, f'{name}[0] (users)')
    check_index(edge_index[1], num_items, f'{name}[1] (items)')


class CompactRecommender(Module):
    r"""Base class of the compact recommenders: subclasses implement
    :meth:`score_all`; this class adds :meth:`recommend` (top-:math:`k` with
    exclusion and deterministic ties) and the file header handling.

    Args:
        num_users (int): The number of users :math:`N_U`.
        num_items (int): The number of items :math:`N_I`.
    """
    FORMAT_NAME: str = ''
    FORMAT_VERSION: int = 1

    def __init__(self, num_users: int, num_items: int) -> None:
        super().__init__()
        self.num_users = num_users
        self.num_items = num_items

    def score_all(self, user: Tensor) -> Tensor:
        r"""Scores every item for the users :obj:`user` (local ids).

        Returns:
            A :obj:`float32` tensor of shape :obj:`[len(user), num_items]`.
        """
        raise NotImplementedError

    @torch.no_grad()
    def recommend(
        self,
        user_ids: Tensor,
        k: int,
        exclude: Optional[Union[Tensor, 'InteractionIndex']] = None,
        return_scores: bool = False,
        user_batch_size: int = 1024,
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        r"""Recommends the :math:`k` best items to each user: the items of
        highest score, excluding the user's items in :obj:`exclude` (their
        score is set to :math:`-\infty`), with ties broken by increasing item
        id (:func:`topk_deterministic`).

        Args:
            user_ids (torch.Tensor): The 1-D local user ids (duplicates
                allowed).
            k (int): The number of items per user.
            exclude (torch.Tensor or InteractionIndex, optional): The
                (user, item) pairs never to recommend, typically the training
                interactions: a :obj:`[2, E]` tensor or, faster for repeated
                calls, an :class:`InteractionIndex` built once.
                (default: :obj:`None`)
            return_scores (bool, optional): If set to :obj:`True`, also
                returns the scores. (default: :obj:`False`)
            user_batch_size (int, optional): Users scored at once (memory is
                :math:`4 \cdot \textrm{batch} \cdot N_I` bytes).
                (default: :obj:`1024`)

        Returns:
            The :obj:`[len(user_ids), k]` item ids (and scores, if
            :obj:`return_scores`). A user with fewer than :math:`k`
            non-excluded items gets excluded ones (score :math:`-\infty`)
            last.
        """
        check_index(user_ids, self.num_users, 'user_ids')
        if user_ids.dim() != 1:
            raise ValueError(f"'user_ids' must be 1-D (got shape "
                             f"{tuple(user_ids.shape)})")
        if not 1 <= k <= self.num_items:
            raise ValueError(f"'k' must be in [1, {self.num_items}] "
                             f"(got {k})")
        csr = exclude
        if isinstance(exclude, Tensor):
            csr = InteractionIndex.from_edge_index(exclude, self.num_users,
                                                   self.num_items, 'exclude')
        elif exclude is not None:
            if not isinstance(exclude, InteractionIndex) or \
                    exclude.num_users != self.num_users or \
                    exclude.num_items != self.num_items:
                raise ValueError(
                    f"'exclude' must be a [2, E] tensor or an "
                    f"InteractionIndex over {self.num_users} users and "
                    f"{self.num_items} items (got {exclude!r})")
        user_ids = user_ids.long()
        values: List[Tensor] = []
        items: List[Tensor] = []
        for start in range(0, user_ids.numel(), user_batch_size):
            users = user_ids[start:start + user_batch_size]
            scores = self.score_all(users)
            if csr is not None:
                row, item = csr.gather(users)
                scores[row, item] = float('-inf')
            val, idx = topk_deterministic(scores, k)
            values.append(val)
            items.append(idx)
        if not items:
            items, values = [torch.empty(0, k, dtype=torch.long)], \
                [torch.empty(0, k)]
        top = torch.cat(items)
        return (top, torch.cat(values)) if return_scores else top

    # Files ###################################################################

    def to_dict(self) -> Dict[str, Any]:
        r"""The file content (plain tensors and python scalars)."""
        raise NotImplementedError

    def save(self, path: PathLike) -> None:
        r"""Writes the recommender to one checksummed file, atomically."""
        write_file(self.to_dict(), path)

    @classmethod
    def _read(cls, path: PathLike) -> Dict[str, Any]:
        data = read_file(path)
        check_header(data, cls.FORMAT_NAME, cls.FORMAT_VERSION, f"'{path}'")
        for key in ('num_users', 'num_items'):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or \
                    value < 1:
                raise FormatError(f"'{path}': '{key}' must be a positive int "
                                  f"(got {value!r})")
        return data

    @property
    def nbytes(self) -> int:
        r"""The bytes of the stored representation (what :meth:`save`
        writes, without the container overhead)."""
        raise NotImplementedError

    @property
    def resident_nbytes(self) -> int:
        r"""The bytes of the tensors held in memory for serving."""
        raise NotImplementedError


class CompactMLPRecommender(CompactRecommender):
    r"""Serves an :class:`~pyg_cerp.nn.MLPScorer` from its compact form: a
    :class:`~pyg_cerp.nn.compact.CompactEmbedding` over the
    :math:`N_U + N_I` entities (users first) plus the :obj:`float32` MLP
    weights, scoring

    .. math::
        \hat{y}_{ui} = \mathrm{MLP}\left([\mathbf{e}_u \,\|\,
        \mathbf{e}_{N_U + i}]\right).

    The first layer is split into its user and item halves, so each user and
    item half-activation is computed once per call, then the rest of the MLP
    runs on :obj:`[users, item_batch_size, hidden]` blocks.

    Args:
        num_users (int): :math:`N_U`.
        num_items (int): :math:`N_I`.
        embedding (CompactEmbedding): The compact embedding of the
            :math:`N_U + N_I` entities.
        lins (List[torch.nn.Linear]): The MLP's linear layers, ReLU between
            them, the last with one output.
        item_batch_size (int, optional): Items scored per block in
            :meth:`score_all`. (default: :obj:`4096`)
    """
    FORMAT_NAME = 'pyg_cerp.CompactMLPRecommender'

    def __init__(self, num_users: int, num_items: int,
                 embedding: CompactEmbedding, lins: List[Linear],
                 item_batch_size: int = 4096) -> None:
        super().__init__(num_users, num_items)
        if embedding.num_embeddings != num_users + num_items:
            raise ValueError(
                f"'embedding' holds {embedding.num_embeddings} entities, but "
                f"num_users + num_items = {num_users + num_items}")
        dims = [2 * embedding.embedding_dim]
        for lin in lins:
            if lin.in_features != dims[-1]:
                raise ValueError(f"MLP layer sizes do not chain: "
                                 f"{lin.in_features} after {dims[-1]}")
            dims.append(lin.out_features)
        if len(lins) == 0 or dims[-1] != 1:
            raise ValueError("The MLP must end in one output")
        self.embedding = embedding
        self.lins = ModuleList(lins)
        self.item_batch_size = item_batch_size

    @classmethod
    @torch.no_grad()
    def from_scorer(cls, scorer: Module,
                    dtype: Union[str, torch.dtype] = torch.float32,
                    layout: str = 'auto', decode: str = 'cache',
                    item_batch_size: int = 4096) -> 'CompactMLPRecommender':
        r"""Exports a trained :class:`~pyg_cerp.nn.MLPScorer` whose embedding
        is a :class:`~pyg_cerp.nn.CompositionalEmbedding`.

        Args:
            scorer (MLPScorer): The trained model.
            dtype, layout, decode: See
                :meth:`CompactEmbedding.from_compositional`.
            item_batch_size (int, optional): See the class.
        """
        if not hasattr(scorer.embedding, 'to_compact'):
            raise TypeError(f"The scorer's embedding must be a "
                            f"CompositionalEmbedding (got "
                            f"{type(scorer.embedding).__name__})")
        mlp = scorer.mlp
        if getattr(mlp, 'norms', None) is not None and any(
                not isinstance(n, torch.nn.Identity) for n in mlp.norms):
            raise ValueError("MLPs with normalisation layers are not "
                             "supported")
        if getattr(scorer, 'normalize_input', False):
            raise ValueError("MLPs that divide their input by its non-zero "
                             "count (normalize_input=True) are not supported")
        lins = []
        for lin in mlp.lins:
            out_features, in_features = lin.weight.shape
            new = Linear(in_features, out_features,
                         bias=lin.bias is not None)
            new.weight.data.copy_(lin.weight.detach().float().cpu())
            if lin.bias is not None:
                new.bias.data.copy_(lin.bias.detach().float().cpu())
            lins.append(new.requires_grad_(False))
        return cls(scorer.num_users, scorer.num_items,
                   scorer.embedding.to_compact(dtype, layout, decode), lins,
                   item_batch_size)

    @torch.no_grad()
    def score_all(self, user: Tensor) -> Tensor:
        check_index(user, self.num_users, 'user')
        emb = self.embedding
        d = emb.embedding_dim
        first = self.lins[0]
        e_u = emb(user)
        items = torch.arange(self.num_items) + self.num_users
        h_u = e_u @ first.weight[:, :d].t()
        outs: List[Tensor] = []
        for start in range(0, self.num_items, self.item_batch_size):
            e_i = emb(items[start:start + self.item_batch_size])
            h_i = e_i @ first.weight[:, d:].t()
            if first.bias is not None:
                h_i = h_i + first.bias
            h = h_u.unsqueeze(1) + h_i
            for lin in self.lins[1:]:
                h = lin(torch.relu(h))
            outs.append(h.squeeze(-1))
        return torch.cat(outs, dim=1)

    @property
    def nbytes(self) -> int:
        return self.embedding.nbytes + sum(
            _nbytes(lin.weight, lin.bias) for lin in self.lins)

    @property
    def resident_nbytes(self) -> int:
        return self.embedding.resident_nbytes + sum(
            _nbytes(lin.weight, lin.bias) for lin in self.lins)

    def to_dict(self) -> Dict[str, Any]:
        return {
            'format': self.FORMAT_NAME,
            'version': self.FORMAT_VERSION,
            'num_users': self.num_users,
            'num_items': self.num_items,
            'embedding': self.embedding.to_dict(),
            'weights': [lin.weight.detach() for lin in self.lins],
            'biases': [lin.bias.detach() if lin.bias is not None else None
                       for lin in self.lins],
            'act': 'relu',
        }

    @classmethod
    def load(cls, path: PathLike, decode: str = 'cache',
             item_batch_size: int = 4096) -> 'CompactMLPRecommender':
        r"""Reads and validates a file written by :meth:`save`.

        Raises:
            FileNotFoundError: If the file does not exist.
            FormatError: (a :class:`ValueError`) If it is corrupted,
                truncated, of another format or version, or inconsistent.
        """
        data = cls._read(path)
        emb = CompactEmbedding.from_dict(data.get('embedding'), decode,
                                         where=f"'{path}' embedding")
        weights, biases = data.get('weights'), data.get('biases')
        if data.get('act') != 'relu' or not isinstance(weights, list) or \
                not isinstance(biases, list) or len(weights) != len(biases) \
                or not weights:
            raise FormatError(f"'{path}': invalid MLP description")
        lins = []
        for i, (w, b) in enumerate(zip(weights, biases)):
            ok = isinstance(w, Tensor) and w.dtype == torch.float32 and \
                w.dim() == 2 and bool(torch.isfinite(w).all())
            ok = ok and (b is None or (
                isinstance(b, Tensor) and b.dtype == torch.float32 and
                tuple(b.shape) == (w.size(0), ) and
                bool(torch.isfinite(b).all())))
            if not ok:
                raise FormatError(f"'{path}': invalid MLP layer {i}")
            lin = Linear(w.size(1), w.size(0), bias=b is not None)
            lin.weight.data = w.contiguous()
            if b is not None:
                lin.bias.data = b.contiguous()
            lins.append(lin.requires_grad_(False))
        try:
            return cls(data['num_users'], data['num_items'], emb, lins,
                       item_batch_size)
        except ValueError as e:
            raise FormatError(f"'{path}': {e}") from e

    def __repr__(self) -> str:
        dims = [self.lins[0].in_features] + [
            lin.out_features for lin in self.lins]
        return (f'{self.__class__.__name__}(num_users={self.num_users}, '
                f'num_items={self.num_items}, embedding={self.embedding}, '
                f'mlp={dims}, nbytes={self.nbytes})')


def normalized_adjacency(edge_index: Union[Tensor, 'InteractionIndex'],
                         num_users: int, num_items: int) -> Tensor:
    r"""The symmetrically normalised adjacency :math:`\mathbf{D}^{-1/2}
    \mathbf{A} \mathbf{D}^{-1/2}` of the bipartite graph as a sparse CSR
    :math:`(N_U + N_I) \times (N_U + N_I)` matrix (items offset by
    :math:`N_U`, both directions, no self-loops, duplicate edges kept as
    separate entries), matching PyG's :obj:`gcn_norm(...,
    add_self_loops=False)`.

    Args:
        edge_index (torch.Tensor or InteractionIndex): The (user, item)
            interactions.
        num_users (int): :math:`N_U`.
        num_items (int): :math:`N_I`.
    """
    n = num_users + num_items
    if isinstance(edge_index, InteractionIndex):
        edge_index = edge_index.to_edge_index()
    user = edge_index[0].long()
    item = edge_index[1].long() + num_users
    row = torch.cat([user, item])
    col = torch.cat([item, user])
    deg = torch.bincount(col, minlength=n).float()
    dis = deg.pow(-0.5)
    dis.masked_fill_(deg == 0, 0.)
    value = dis[row] * dis[col]
    # Message passing to `col` from `row`: out[col] += value * x[row], as a
    # CSR matrix with rows `col` (duplicates kept as separate entries).
    perm = torch.argsort(col * n + row)
    crow = torch.cat([col.new_zeros(1), deg.long().cumsum(0)])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # "beta" notices
        return torch.sparse_csr_tensor(crow, row[perm], value[perm], (n, n),
                                       check_invariants=False)


def lightgcn_propagate(x: Tensor,
                       edge_index: Union[Tensor, InteractionIndex],
                       num_users: int, num_items: int,
                       alpha: Tensor) -> Tensor:
    r"""LightGCN propagation over the symmetrised user-item graph, as PyG's
    :class:`~torch_geometric.nn.models.LightGCN` computes it,

    .. math::
        \mathbf{E} = \sum_{l=0}^{L} \alpha_l \mathbf{E}^{(l)}, \qquad
        \mathbf{E}^{(l+1)} = \mathbf{D}^{-1/2} \mathbf{A} \mathbf{D}^{-1/2}
        \mathbf{E}^{(l)},

    where :math:`\mathbf{A}` holds both directions of every (user, item)
    edge (items offset by :math:`N_U`; no self-loops; duplicates count).

    Args:
        x (torch.Tensor): :math:`\mathbf{E}^{(0)}`, :obj:`[N_U + N_I, d]`.
        edge_index (torch.Tensor or InteractionIndex): The :obj:`[2, E]`
            (user, item) training interactions (local ids).
        num_users (int): :math:`N_U`.
        num_items (int): :math:`N_I`.
        alpha (torch.Tensor): The :math:`L + 1` layer weights.
    """
    adj = normalized_adjacency(edge_index, num_users, num_items)
    out = x * alpha[0]
    for a in alpha[1:]:
        x = adj @ x
        out = out + x * a
    return out


class CompactLightGCNRecommender(CompactRecommender):
    r"""Serves a LightGCN model with a CERP embedding from a compact form,
    scoring :math:`\hat{y}_{ui} = \mathbf{e}_u^\top \mathbf{e}_{N_U + i}`
    with the *propagated* embeddings :math:`\mathbf{E}` (see
    :func:`lightgcn_propagate`).

    :math:`\mathbf{E}` is a function of the whole training graph, so two
    storage modes are offered:

    * :obj:`mode='propagate'`: store the compact :math:`\mathbf{E}^{(0)}`
      (:class:`~pyg_cerp.nn.compact.CompactEmbedding`), the training graph
      as a user-sorted CSR (:class:`InteractionIndex`: :obj:`uint16` item
      ids for :math:`N_I \leq 65{,}536`, :math:`2E + 4(N_U + 1)` bytes) and
      :math:`\alpha`, and propagate once at load. Exact in :obj:`float32`
      (same scores as the training model up to summation order), the graph
      doubles as the exclusion set (:attr:`train_index`), but the file is
      dominated by the graph and loading costs one propagation.
    * :obj:`mode='final'`: store :math:`\mathbf{E}` itself, dense (it is not
      sparse), as :class:`~pyg_cerp.nn.compact.DenseTable` in
      :obj:`float32`/:obj:`float16`/:obj:`int8`: :math:`(N_U + N_I) d s_v`
      bytes, no graph, instant load, no CERP compression.

    Measured at Gowalla size (:math:`N_U + N_I = 29{,}858 + 40{,}981`,
    :math:`d = 64`, :math:`E = 810{,}128`; :obj:`benchmarks/compact_export.py`)
    the graph costs 1.74 MB, so a :obj:`'propagate'` file is 2.0 MB at the 1%
    budget (11% of the 18.1 MB full :obj:`float32` table; 3.6 MB at 10%),
    against 4.8 MB (:obj:`int8`), 9.1 MB (:obj:`float16`) and 18.1 MB
    (:obj:`float32`) for :obj:`'final'`. :obj:`'propagate'` is therefore the
    default: the smallest file *and* exact scores, for 0.4 to 1 s of
    propagation at load. :obj:`'final'` suits serving without the graph,
    with a load-time budget, or with :obj:`decode='lookup'` and
    :obj:`int8` when resident memory matters (4.8 MB instead of 20 MB).

    In memory, :obj:`'propagate'` keeps the dense :obj:`float32`
    :math:`\mathbf{E}` it computed (plus the compact :math:`\mathbf{E}^{(0)}`
    and the graph, for :meth:`save` and :attr:`train_edge_index`);
    :obj:`'final'` keeps a decoded :obj:`float32` copy with
    :obj:`decode='cache'`, or only the quantised tables with
    :obj:`decode='lookup'` (the item table is then decoded on every
    :meth:`score_all` call).

    Args:
        num_users (int): :math:`N_U`.
        num_items (int): :math:`N_I`.
        user (DenseTable): The propagated user embeddings.
        item (DenseTable): The propagated item embeddings.
        embedding (CompactEmbedding, optional): :math:`\mathbf{E}^{(0)}`
            (:obj:`mode='propagate'`).
        train_edge_index (torch.Tensor, optional): The (user, item) training
            graph (:obj:`mode='propagate'`).
        alpha (torch.Tensor, optional): The layer weights
            (:obj:`mode='propagate'`).
        decode (str, optional): :obj:`'cache'` or :obj:`'lookup'`, see above
            (:obj:`'final'` only). (default: :obj:`'cache'`)
    """
    FORMAT_NAME = 'pyg_cerp.CompactLightGCNRecommender'
    MODES = ('propagate', 'final')

    def __init__(self, num_users: int, num_items: int, user: DenseTable,
                 item: DenseTable,
                 embedding: Optional[CompactEmbedding] = None,
                 train_edge_index: Optional[Tensor] = None,
                 alpha: Optional[Tensor] = None,
                 decode: str = 'cache') -> None:
        super().__init__(num_users, num_items)
        if user.num_rows != num_users or item.num_rows != num_items or \
                user.num_cols != item.num_cols:
            raise ValueError(
                f"Embedding tables of shapes ({user.num_rows}, "
                f"{user.num_cols}) and ({item.num_rows}, {item.num_cols}) do "
                f"not match num_users={num_users}, num_items={num_items}")
        self.mode = 'final' if embedding is None else 'propagate'
        self.user = user
        self.item = item
        self.embedding = embedding
        self.register_buffer('alpha', alpha)
        self.train_index: Optional[InteractionIndex] = None
        if isinstance(train_edge_index, InteractionIndex):
            self.train_index = train_edge_index
        elif train_edge_index is not None:
            self.train_index = InteractionIndex.from_edge_index(
                train_edge_index, num_users, num_items, 'train_edge_index')
        if decode not in ('cache', 'lookup'):
            raise ValueError(f"'decode' must be 'cache' or 'lookup' "
                             f"(got {decode!r})")
        self.decode = decode
        self._user_dense = user.to_dense() if decode == 'cache' else None
        self._item_dense = item.to_dense() if decode == 'cache' else None

    @classmethod
    @torch.no_grad()
    def from_embedding(
        cls,
        embedding: Module,
        train_edge_index: Tensor,
        num_users: int,
        num_items: int,
        num_layers: int = 3,
        alpha: Optional[Union[float, Tensor]] = None,
        mode: str = 'propagate',
        dtype: Union[str, torch.dtype] = torch.float32,
        layout: str = 'auto',
        decode: str = 'cache',
        deduplicate: bool = False,
    ) -> 'CompactLightGCNRecommender':
        r"""Exports a trained LightGCN whose :math:`\mathbf{E}^{(0)}` is the
        :class:`~pyg_cerp.nn.CompositionalEmbedding` :obj:`embedding`.

        Args:
            embedding (CompositionalEmbedding): :math:`\mathbf{E}^{(0)}` over
                :math:`N_U + N_I` entities, users first.
            train_edge_index (torch.Tensor): The :obj:`[2, E]` (user, item)
                training interactions the model propagates over.
            num_users (int): :math:`N_U`.
            num_items (int): :math:`N_I`.
            num_layers (int, optional): :math:`L`. (default: :obj:`3`)
            alpha (float or torch.Tensor, optional): The layer weights, as in
                PyG's :class:`LightGCN` (:obj:`None`: :math:`1/(L+1)` each).
            mode (str, optional): :obj:`'propagate'` or :obj:`'final'`.
                (default: :obj:`'propagate'`)
            dtype (str or torch.dtype, optional): The precision of the stored
                :math:`\mathbf{E}^{(0)}` (:obj:`'propagate'`) or
                :math:`\mathbf{E}` (:obj:`'final'`).
                (default: :obj:`torch.float32`)
            layout (str, optional): The sparse layout of
                :math:`\mathbf{E}^{(0)}` (:obj:`'propagate'` only).
            decode (str, optional): :obj:`'cache'` or :obj:`'lookup'`
                (:obj:`'final'` only, see the class).
                (default: :obj:`'cache'`)
            deduplicate (bool, optional): If set to :obj:`True`, repeated
                (user, item) pairs count once, as in
                :obj:`pyg_cerp.utils.adjacency.lightgcn_adjacency` (binary
                interaction matrix); by default they count as often as they
                appear, as in PyG's :class:`LightGCN` on a raw
                :obj:`edge_index`. No difference when pairs are unique (as in
                Gowalla). (default: :obj:`False`)
        """
        if mode not in cls.MODES:
            raise ValueError(f"'mode' must be one of {cls.MODES} "
                             f"(got {mode!r})")
        if embedding.num_embeddings != num_users + num_items:
            raise ValueError(
                f"'embedding' holds {embedding.num_embeddings} entities, but "
                f"num_users + num_items = {num_users + num_items}")
        _check_edge_index(train_edge_index, num_users, num_items,
                          'train_edge_index')
        if alpha is None:
            alpha = 1. / (num_layers + 1)
        if not isinstance(alpha, Tensor):
            alpha = torch.full((num_layers + 1, ), float(alpha))
        alpha = alpha.detach().float().cpu().reshape(-1)
        if alpha.numel() != num_layers + 1:
            raise ValueError(f"'alpha' must hold num_layers + 1 = "
                             f"{num_layers + 1} weights")
        train_edge_index = train_edge_index.cpu()
        if deduplicate:
            key = train_edge_index[0].long() * num_items + \
                train_edge_index[1].long()
            key = torch.unique(key)
            train_edge_index = torch.stack([key // num_items,
                                            key % num_items])
        if mode == 'propagate':
            compact = embedding.to_compact(dtype, layout, 'cache')
            return cls._propagated(compact, train_edge_index, num_users,
                                   num_items, alpha)
        x = embedding.weight.detach().float().cpu()
        out = lightgcn_propagate(x, train_edge_index, num_users, num_items,
                                 alpha)
        return cls(num_users, num_items,
                   DenseTable.from_dense(out[:num_users], dtype),
                   DenseTable.from_dense(out[num_users:], dtype),
                   decode=decode)

    @classmethod
    def from_lightgcn(cls, model: Module, train_edge_index: Tensor,
                      num_users: int, num_items: int,
                      **kwargs: Any) -> 'CompactLightGCNRecommender':
        r"""Exports PyG's :class:`~torch_geometric.nn.models.LightGCN` with
        :obj:`model.embedding` a
        :class:`~pyg_cerp.nn.CompositionalEmbedding` (it must have been
        trained on the symmetrised :obj:`train_edge_index`, items offset by
        :math:`N_U`). :obj:`kwargs` go to :meth:`from_embedding`."""
        return cls.from_embedding(model.embedding, train_edge_index,
                                  num_users, num_items,
                                  num_layers=model.num_layers,
                                  alpha=model.alpha, **kwargs)

    @classmethod
    def _propagated(cls, compact: CompactEmbedding,
                    graph: Union[Tensor, InteractionIndex], num_users: int,
                    num_items: int,
                    alpha: Tensor) -> 'CompactLightGCNRecommender':
        if compact.decode != 'cache':
            compact.set_decode('cache')
        if not isinstance(graph, InteractionIndex):
            graph = InteractionIndex.from_edge_index(graph, num_users,
                                                     num_items)
        out = lightgcn_propagate(compact.weight, graph, num_users,
                                 num_items, alpha)
        # Serving reads only the propagated tables: drop E^(0)'s dense cache.
        compact.set_decode('lookup')
        return cls(num_users, num_items, DenseTable(out[:num_users]),
                   DenseTable(out[num_users:]), embedding=compact,
                   train_edge_index=graph, alpha=alpha, decode='cache')

    @property
    def train_edge_index(self) -> Optional[Tensor]:
        r"""The stored (user, item) training graph as a :obj:`[2, E]` tensor
        (:obj:`mode='propagate'`; :obj:`None` otherwise). To exclude training
        items in :meth:`recommend`, pass :attr:`train_index` (no copy)."""
        if self.train_index is None:
            return None
        return self.train_index.to_edge_index()

    @torch.no_grad()
    def embeddings(self) -> Tuple[Tensor, Tensor]:
        r"""The propagated :obj:`float32` (user, item) embeddings."""
        if self._user_dense is not None:
            return self._user_dense, self._item_dense
        return self.user.to_dense(), self.item.to_dense()

    @torch.no_grad()
    def score_all(self, user: Tensor) -> Tensor:
        check_index(user, self.num_users, 'user')
        if self._user_dense is not None:
            return self._user_dense[user] @ self._item_dense.t()
        return self.user.rows(user) @ self.item.to_dense().t()

    @property
    def nbytes(self) -> int:
        if self.mode == 'final':
            return self.user.nbytes + self.item.nbytes
        return (self.embedding.nbytes + self.train_index.nbytes +
                _nbytes(self.alpha))

    @property
    def resident_nbytes(self) -> int:
        out = _nbytes(self._user_dense, self._item_dense, self.alpha)
        if self.mode == 'final':
            out += self.user.nbytes + self.item.nbytes
        else:  # user/item *are* the dense propagated tables (cached).
            out = _nbytes(self.user.values, self.item.values, self.alpha)
            out += self.embedding.resident_nbytes + self.train_index.nbytes
        return out

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            'format': self.FORMAT_NAME,
            'version': self.FORMAT_VERSION,
            'num_users': self.num_users,
            'num_items': self.num_items,
            'mode': self.mode,
        }
        if self.mode == 'final':
            out['user'] = self.user.to_dict()
            out['item'] = self.item.to_dict()
        else:
            out['embedding'] = self.embedding.to_dict()
            out['indptr'] = self.train_index.ptr
            out['items'] = self.train_index.items
            out['alpha'] = self.alpha
        return out

    @classmethod
    def load(cls, path: PathLike,
             decode: str = 'cache') -> 'CompactLightGCNRecommender':
        r"""Reads and validates a file written by :meth:`save`; with
        :obj:`mode='propagate'`, propagates :math:`\mathbf{E}^{(0)}` over
        the stored graph.

        Raises:
            FileNotFoundError: If the file does not exist.
            FormatError: (a :class:`ValueError`) If it is corrupted,
                truncated, of another format or version, or inconsistent.
        """
        data = cls._read(path)
        nu, ni = data['num_users'], data['num_items']
        mode = data.get('mode')
        if mode == 'final':
            user, item = data.get('user'), data.get('item')
            values = user.get('values') if isinstance(user, dict) else None
            if not isinstance(values, Tensor) or values.dim() != 2:
                raise FormatError(f"'{path}': invalid user table")
            d = values.size(1)
            return cls(nu, ni,
                       DenseTable.from_dict(user, (nu, d), f"'{path}' user"),
                       DenseTable.from_dict(item, (ni, d), f"'{path}' item"),
                       decode=decode)
        if mode != 'propagate':
            raise FormatError(f"'{path}': unknown mode {mode!r}")
        emb = CompactEmbedding.from_dict(data.get('embedding'), 'cache',
                                         where=f"'{path}' embedding")
        if emb.num_embeddings != nu + ni:
            raise FormatError(f"'{path}': the embedding holds "
                              f"{emb.num_embeddings} entities, expected "
                              f"{nu + ni}")
        ptr, items, alpha = (data.get('indptr'), data.get('items'),
                             data.get('alpha'))
        if not (isinstance(ptr, Tensor) and ptr.dtype == torch.int32 and
                tuple(ptr.shape) == (nu + 1, ) and
                isinstance(items, Tensor) and
                items.dtype == InteractionIndex.item_dtype(ni) and
                items.dim() == 1):
            raise FormatError(f"'{path}': invalid graph arrays")
        p = ptr.long()
        if int(p[0]) != 0 or int(p[-1]) != items.numel() or \
                bool((p[1:] < p[:-1]).any()):
            raise FormatError(f"'{path}': graph row pointers must be "
                              f"monotone from 0 to {items.numel()}")
        if items.numel() and (int(items.long().min()) < 0 or
                              int(items.long().max()) >= ni):
            raise FormatError(f"'{path}': item ids out of [0, {ni})")
        if not (isinstance(alpha, Tensor) and alpha.dtype == torch.float32
                and alpha.dim() == 1 and alpha.numel() >= 1 and
                bool(torch.isfinite(alpha).all())):
            raise FormatError(f"'{path}': invalid 'alpha'")
        index = InteractionIndex(ptr.contiguous(), items.contiguous(), ni)
        return cls._propagated(emb, index, nu, ni, alpha)

    def __repr__(self) -> str:
        extra = (f', embedding={self.embedding}, num_edges='
                 f'{self.train_index.items.numel()}, num_layers='
                 f'{self.alpha.numel() - 1}' if self.mode == 'propagate' else
                 f', dtype={self.user.dtype_name}')
        return (f'{self.__class__.__name__}(num_users={self.num_users}, '
                f'num_items={self.num_items}, mode={self.mode}{extra}, '
                f'nbytes={self.nbytes}, decode={self.decode})')
