r"""Private stand-ins for APIs that other branches provide (:mod:`pyg_cerp.
datasets`, :mod:`pyg_cerp.sampling`, :mod:`pyg_cerp.metrics`,
:mod:`pyg_cerp.utils.adjacency`, :mod:`pyg_cerp.nn.propagation`).

Every function here first tries the real implementation and only falls back
to a minimal local one when it is not importable. Not part of the public API.
"""
import math
import os
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, \
    Sequence, Tuple

import torch
from torch import Tensor


# Data ########################################################################

class Interactions(NamedTuple):
    r"""A user-item split: :obj:`train`/:obj:`test` are :obj:`[2, E]` local
    (user, item) ids."""
    train: Tensor
    test: Tensor
    num_users: int
    num_items: int


def _parse_lightgcn_file(path: str) -> Tuple[List[int], List[int]]:
    users: List[int] = []
    items: List[int] = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 2:
                continue
            u = int(parts[0])
            its = [int(x) for x in parts[1:]]
            users.extend([u] * len(its))
            items.extend(its)
    return users, items


def read_lightgcn_folder(folder: str) -> Interactions:
    r"""Reads :obj:`folder/{train,test}.txt` (LightGCN format: one line
    :obj:`user item item ...` per user)."""
    out = []
    for split in ('train', 'test'):
        path = os.path.join(folder, f'{split}.txt')
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Missing '{path}' (expected LightGCN "
                                    f"format 'user item item ...')")
        u, i = _parse_lightgcn_file(path)
        out.append(torch.tensor([u, i], dtype=torch.long).view(2, -1))
    train, test = out
    both = torch.cat([train, test], dim=1)
    num_users = int(both[0].max()) + 1
    num_items = int(both[1].max()) + 1
    return Interactions(train, test, num_users, num_items)


def load_interactions(folder: str) -> Interactions:
    r"""Loads the split in :obj:`folder` (which holds :obj:`raw/` or the text
    files directly), through :mod:`pyg_cerp.datasets` when available."""
    raw = os.path.join(folder, 'raw')
    raw = raw if os.path.isdir(raw) else folder
    try:  # pragma: no cover - depends on the merge state
        from pyg_cerp.datasets import load_lightgcn_split
    except ImportError:
        return read_lightgcn_folder(raw)
    data = load_lightgcn_split(os.path.join(raw, 'train.txt'),
                               os.path.join(raw, 'test.txt'))
    store = data['user', 'rates', 'item']
    return Interactions(store.edge_index, store.edge_label_index,
                        int(data['user'].num_nodes),
                        int(data['item'].num_nodes))


# Adjacency ###################################################################

def lightgcn_adjacency(edge_index: Tensor, num_users: int,
                       num_items: int) -> Tensor:
    r"""The symmetric normalised bipartite adjacency
    :math:`\mathbf{D}^{-1/2}\mathbf{A}\mathbf{D}^{-1/2}` over users and items
    (items offset by :obj:`num_users`) as a torch CSR tensor."""
    try:  # pragma: no cover
        from pyg_cerp.utils.adjacency import lightgcn_adjacency as f
        return f(edge_index, num_users, num_items)
    except ImportError:
        pass
    n = num_users + num_items
    row = torch.cat([edge_index[0], edge_index[1] + num_users])
    col = torch.cat([edge_index[1] + num_users, edge_index[0]])
    deg = torch.zeros(n).index_add_(0, row, torch.ones(row.numel()))
    dinv = deg.clamp(min=1).pow(-0.5)
    val = dinv[row] * dinv[col]
    adj = torch.sparse_coo_tensor(torch.stack([row, col]), val, (n, n))
    return adj.coalesce().to_sparse_csr()


class _SymmetricSpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, adj: Tensor, x: Tensor) -> Tensor:
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, ctx.adj @ grad


class _SymmetricConv(torch.nn.Module):
    def reset_parameters(self) -> None:
        pass

    def forward(self, x: Tensor, adj: Tensor, edge_weight=None) -> Tensor:
        return _SymmetricSpMM.apply(adj, x)


def use_symmetric_propagation(model: torch.nn.Module) -> torch.nn.Module:
    r"""Makes :obj:`model.convs` propagate with a symmetric, pre-normalised
    sparse adjacency whose backward reuses the forward matrix."""
    try:  # pragma: no cover
        from pyg_cerp.nn.propagation import use_symmetric_propagation as f
        return f(model)
    except ImportError:
        pass
    model.convs = torch.nn.ModuleList(
        [_SymmetricConv() for _ in range(len(model.convs))])
    return model


# Sampling ####################################################################

class _BPRSampler:
    def __init__(self, edge_index: Tensor, num_users: int, num_items: int,
                 num_negatives: int = 5, batch_size: int = 8192,
                 seed: int = 0, reject_positives: bool = False, rank: int = 0,
                 world_size: int = 1) -> None:
        self.edge_index = edge_index
        self.num_users, self.num_items = num_users, num_items
        self.num_negatives = num_negatives
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        per_rank = math.ceil(self.edge_index.size(1) / self.world_size)
        return math.ceil(per_rank / self.batch_size)

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
        gen = torch.Generator().manual_seed(
            self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.edge_index.size(1), generator=gen)
        perm = perm[self.rank::self.world_size]
        neg = torch.randint(self.num_items, (perm.numel(), self.num_negatives),
                            generator=gen)
        for start in range(0, perm.numel(), self.batch_size):
            idx = perm[start:start + self.batch_size]
            yield (self.edge_index[0, idx], self.edge_index[1, idx],
                   neg[start:start + self.batch_size])


def make_sampler(edge_index: Tensor, num_users: int, num_items: int,
                 num_negatives: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1):
    try:  # pragma: no cover
        from pyg_cerp.sampling import BPRSampler
    except ImportError:
        BPRSampler = _BPRSampler
    return BPRSampler(edge_index, num_users, num_items,
                      num_negatives=num_negatives, batch_size=batch_size,
                      seed=seed, reject_positives=True, rank=rank,
                      world_size=world_size)


# Metrics #####################################################################

def _csr_sets(edge_index: Tensor, num_users: int) -> Tuple[Tensor, Tensor]:
    order = torch.argsort(edge_index[0] * (edge_index[1].max() + 1) +
                          edge_index[1])
    row, col = edge_index[0, order], edge_index[1, order]
    ptr = torch.zeros(num_users + 1, dtype=torch.long)
    ptr[1:] = torch.bincount(row, minlength=num_users).cumsum(0)
    return ptr, col


@torch.no_grad()
def ranking_metrics_from_scores(
    score_fn: Callable[[Tensor], Tensor],
    train_edge_index: Tensor,
    test_edge_index: Tensor,
    num_users: int,
    num_items: int,
    ks: Sequence[int] = (5, 10, 20, 50),
    batch_size: int = 2048,
) -> Dict[str, float]:
    r"""Full-ranking Recall/NDCG@k with training positives masked (users
    without test items are skipped)."""
    try:  # pragma: no cover - depends on the merge state
        from pyg_cerp.metrics import ranking_metrics_from_scores as f
    except ImportError:
        f = None
    if f is not None:
        out = f(score_fn, num_users, num_items, train_edge_index,
                test_edge_index, ks=tuple(ks))
        return {k: float(v) for k, v in out.items()}
    max_k = max(ks)
    tr_ptr, tr_col = _csr_sets(train_edge_index, num_users)
    te_ptr, te_col = _csr_sets(test_edge_index, num_users)
    n_test = te_ptr[1:] - te_ptr[:-1]
    users = torch.nonzero(n_test > 0).view(-1)
    disc = 1.0 / torch.log2(torch.arange(2, max_k + 2, dtype=torch.float))
    cdisc = torch.cat([torch.zeros(1), disc.cumsum(0)])
    sums = {f'{m}@{k}': 0.0 for m in ('recall', 'ndcg') for k in ks}
    for start in range(0, users.numel(), batch_size):
        u = users[start:start + batch_size]
        scores = score_fn(u).float()
        counts = tr_ptr[u + 1] - tr_ptr[u]
        rows = torch.repeat_interleave(torch.arange(u.numel()), counts)
        cols = tr_col[torch.cat([torch.arange(tr_ptr[x], tr_ptr[x + 1])
                                 for x in u.tolist()])] if counts.sum() else \
            torch.empty(0, dtype=torch.long)
        scores[rows, cols] = -float('inf')
        top = scores.topk(max_k, dim=1).indices
        truth = torch.zeros(u.numel(), num_items, dtype=torch.bool)
        tcounts = te_ptr[u + 1] - te_ptr[u]
        trows = torch.repeat_interleave(torch.arange(u.numel()), tcounts)
        tcols = te_col[torch.cat([torch.arange(te_ptr[x], te_ptr[x + 1])
                                  for x in u.tolist()])]
        truth[trows, tcols] = True
        hit = truth.gather(1, top).float()
        for k in ks:
            h = hit[:, :k]
            sums[f'recall@{k}'] += float((h.sum(1) / tcounts).sum())
            dcg = (h * disc[:k]).sum(1)
            idcg = cdisc[tcounts.clamp(max=k)]
            sums[f'ndcg@{k}'] += float((dcg / idcg).sum())
    n = max(users.numel(), 1)
    return {key: value / n for key, value in sums.items()}


def ranking_metrics(user_emb: Tensor, item_emb: Tensor,
                    train_edge_index: Tensor, test_edge_index: Tensor,
                    ks: Sequence[int] = (5, 10, 20, 50)) -> Dict[str, float]:
    return ranking_metrics_from_scores(
        lambda u: user_emb[u] @ item_emb.t(), train_edge_index,
        test_edge_index, user_emb.size(0), item_emb.size(0), ks)
