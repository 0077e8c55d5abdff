r"""Full-ranking top-:math:`k` evaluation (Recall@k and NDCG@k) with training
positives excluded, as in LightGCN and CERP."""
import operator
import warnings
from typing import Callable, Dict, Iterable, Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = [
    'RankingEvaluator',
    'ranking_metrics',
    'ranking_metrics_from_scores',
    'combine_ranking_sums',
    'deterministic_topk',
]

Metrics = Dict[str, float]


def deterministic_topk(scores: Tensor, k: int) -> Tensor:
    r"""Returns the indices of the :obj:`k` largest entries of every row of
    :obj:`scores`, ordered by descending score and, among equal scores, by
    ascending index (a stable descending sort, computed without sorting the
    full rows).

    :func:`torch.topk` gives no guarantee about which of several tied
    entries it returns.  Here :func:`torch.topk` with :math:`k + 1` entries
    is used first; rows whose :math:`k`-th and :math:`(k+1)`-th values tie
    (the only rows where :func:`torch.topk` may pick arbitrarily) are
    resolved by a full stable sort, all other rows by re-ordering the
    :math:`k` selected entries.  :obj:`nan` scores are not supported.

    Args:
        scores (torch.Tensor): Scores of shape :obj:`[B, N]`.
        k (int): The number of entries (:obj:`k <= N`).
    """
    num_cols = scores.size(1)
    if not 0 < k <= num_cols:
        raise ValueError(f"'k' must be in [1, {num_cols}] (got {k})")
    kk = min(k + 1, num_cols)
    vals, idx = scores.topk(kk, dim=1)
    if kk > k:
        boundary_tie = vals[:, k - 1] == vals[:, k]
        vals, idx = vals[:, :k], idx[:, :k]
    else:
        boundary_tie = torch.zeros(scores.size(0), dtype=torch.bool,
                                   device=scores.device)
    # Within the selected entries: ascending index, then stable by score.
    idx, order = idx.sort(dim=1)
    vals = vals.gather(1, order)
    order = vals.sort(dim=1, descending=True, stable=True)[1]
    idx = idx.gather(1, order)
    rows = boundary_tie.nonzero().view(-1)
    if rows.numel() > 0:
        full = scores[rows].sort(dim=1, descending=True, stable=True)[1]
        idx[rows] = full[:, :k]
    return idx


def _check_ks(ks: Union[int, Sequence[int]]) -> list:
    # Sorted, unique, positive integer cut-offs (k=2.5 is an error, not 2).
    if isinstance(ks, (int, float)) or (isinstance(ks, Tensor)
                                        and ks.dim() == 0):
        ks = (ks, )
    out = []
    for k in ks:
        try:
            if isinstance(k, bool):
                raise TypeError
            out.append(operator.index(k))
        except TypeError:
            raise TypeError(f"'ks' must be positive integers (got "
                            f"{type(k).__name__} {k!r} in {list(ks)})") \
                from None
    out = sorted(set(out))
    if len(out) == 0 or out[0] <= 0:
        raise ValueError(f"'ks' must be positive integers (got {out})")
    return out


def _sorted_unique(key: Tensor) -> Tensor:
    # Edge indices of `LightGCNDataset` are already sorted by (user, item):
    # an O(E) check then skips the O(E log E) `torch.unique`.
    key = key.cpu()
    if key.numel() < 2 or bool((key[1:] > key[:-1]).all()):
        return key
    return torch.unique(key)


class RankingEvaluator:
    r"""Full-ranking Recall@:math:`k` and NDCG@:math:`k` evaluator that
    builds its index structures (sorted training/test keys, per-user
    training items) once, for repeated evaluation during training.  See
    :func:`ranking_metrics_from_scores` for the definitions.

    The metric step itself is hand-written rather than
    :class:`torch_geometric.metrics.LinkPredRecall` /
    :class:`~torch_geometric.metrics.LinkPredNDCG` (the tests check that both
    agree): it reuses the sorted test keys across batches instead of
    re-sorting the labels of every batch, handles excluded items that fall
    into the top-:math:`k` of users with fewer than :math:`k` candidates,
    and accumulates per-user values in :obj:`float64` so that user shards
    combine exactly.  Scoring and :func:`torch.topk` dominate the run time.

    Args:
        num_users (int): The number of users.
        num_items (int): The number of items.
        train_edge_index (torch.Tensor): Training (user, item) pairs
            :obj:`[2, E_train]`, excluded from the ranking.
        test_edge_index (torch.Tensor): Test (user, item) pairs
            :obj:`[2, E_test]`.
        ks (int or Sequence[int], optional): Cut-offs. (default:
            :obj:`(20,)`)
    """
    def __init__(
        self,
        num_users: int,
        num_items: int,
        train_edge_index: Tensor,
        test_edge_index: Tensor,
        ks: Union[int, Sequence[int]] = (20, ),
    ) -> None:
        ks = _check_ks(ks)
        for name, ei in (('train_edge_index', train_edge_index),
                         ('test_edge_index', test_edge_index)):
            if ei.dim() != 2 or ei.size(0) != 2:
                raise ValueError(f"'{name}' must have shape [2, num_edges] "
                                 f"(got {list(ei.size())})")
            if ei.numel() > 0 and (int(ei.min()) < 0
                                   or int(ei[0].max()) >= num_users
                                   or int(ei[1].max()) >= num_items):
                raise ValueError(f"'{name}' has ids outside [0, {num_users})"
                                 f" x [0, {num_items})")
        self.num_users, self.num_items, self.ks = num_users, num_items, ks
        n = num_items
        train_key = _sorted_unique(train_edge_index[0].long() * n +
                                   train_edge_index[1].long())
        self.train_items = train_key % n
        train_deg = torch.bincount(train_key // n, minlength=num_users)
        self.train_deg = train_deg
        self.train_ptr = torch.cumsum(train_deg, 0) - train_deg
        self.test_key = _sorted_unique(test_edge_index[0].long() * n +
                                       test_edge_index[1].long())
        self.test_count = torch.bincount(self.test_key // n,
                                         minlength=num_users)
        pos = torch.searchsorted(train_key, self.test_key)
        pos.clamp_(max=max(train_key.numel() - 1, 0))
        overlap = int((train_key[pos] == self.test_key).sum()) \
            if train_key.numel() > 0 else 0
        if overlap > 0:
            warnings.warn(
                f"{overlap} test (user, item) pair(s) are also training "
                f"pairs: they are excluded from the ranking but still count "
                f"in the Recall/NDCG denominators, so the metrics are biased "
                f"low (a perfect scorer cannot reach 1). Remove them from "
                f"the test set.", UserWarning, stacklevel=3)
        kmax = min(ks[-1], num_items)
        discount = 1.0 / torch.arange(2, kmax + 2, dtype=torch.float64).log2()
        self.discount = discount
        self.idcg = torch.cat([discount.new_zeros(1), discount.cumsum(0)])

    @property
    def num_eval_users(self) -> int:
        r"""The number of users with at least one test item."""
        return int((self.test_count > 0).sum())

    def __call__(
        self,
        score_fn: Callable[[Tensor], Tensor],
        batch_size: int = 1024,
        user_ids: Optional[Tensor] = None,
        return_sums: bool = False,
    ) -> Metrics:
        r"""Evaluates a scorer; the arguments are those of
        :func:`ranking_metrics_from_scores`."""
        with torch.no_grad():
            sums = self._evaluate(score_fn, user_ids, batch_size)
        return sums if return_sums else combine_ranking_sums([sums])

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_users={self.num_users}, '
                f'num_items={self.num_items}, ks={tuple(self.ks)})')

    def _evaluate(self, score_fn: Callable[[Tensor], Tensor],
                  user_ids: Optional[Tensor], batch_size: int) -> Metrics:
        if batch_size <= 0:
            raise ValueError(f"'batch_size' must be positive "
                             f"(got {batch_size})")
        if user_ids is None:
            users = torch.arange(self.num_users)
        else:
            users = torch.as_tensor(user_ids, dtype=torch.long).view(-1).cpu()
            if users.numel() > 0 and (int(users.min()) < 0 or
                                      int(users.max()) >= self.num_users):
                raise ValueError(f"'user_ids' must be in [0, "
                                 f"{self.num_users})")
        users = users[self.test_count[users] > 0]  # skip users w/o test items
        sums = {f'{m}@{k}': 0.0 for k in self.ks for m in ('recall', 'ndcg')}
        kmax = min(self.ks[-1], self.num_items)
        for start in range(0, users.numel(), batch_size):
            batch = users[start:start + batch_size]
            scores = score_fn(batch)
            if scores.shape != (batch.numel(), self.num_items):
                raise ValueError(f"Scores must have shape "
                                 f"[{batch.numel()}, {self.num_items}] "
                                 f"(got {list(scores.shape)})")
            scores = scores.detach()
            device = scores.device
            # Exclude the training positives of every user in the batch:
            deg = self.train_deg[batch]
            total = int(deg.sum())
            if total > 0:
                row = torch.repeat_interleave(torch.arange(batch.numel()),
                                              deg)
                offset = torch.arange(total) - torch.repeat_interleave(
                    torch.cumsum(deg, 0) - deg, deg)
                col = self.train_items[
                    torch.repeat_interleave(self.train_ptr[batch], deg) +
                    offset]
                scores.index_put_(
                    (row.to(device), col.to(device)),
                    torch.tensor(float('-inf'), dtype=scores.dtype,
                                 device=device))
            top = deterministic_topk(scores, kmax)
            picked = scores.gather(1, top)
            # topk ranks nan above everything: a nan anywhere in a row's
            # candidates shows up in its top-k (an O(B k) check).
            if bool(picked.isnan().any()):
                bad = batch[picked.isnan().any(1).cpu()][:5].tolist()
                raise ValueError(
                    f"'score_fn' returned nan scores (e.g. for users {bad}): "
                    f"the model diverged or its inputs hold nan, and the "
                    f"ranking would be arbitrary")
            excluded = picked == float('-inf')
            top, excluded = top.cpu(), excluded.cpu()
            key = batch.view(-1, 1) * self.num_items + top
            pos = torch.searchsorted(self.test_key, key)
            pos.clamp_(max=max(self.test_key.numel() - 1, 0))
            hit = (self.test_key[pos] == key) & ~excluded
            hit = hit.to(torch.float64)
            count = self.test_count[batch].to(torch.float64)
            for k in self.ks:
                kk = min(k, kmax)
                recall = hit[:, :kk].sum(1) / count
                dcg = (hit[:, :kk] * self.discount[:kk]).sum(1)
                idcg = self.idcg[count.long().clamp(max=kk)]
                sums[f'recall@{k}'] += float(recall.sum())
                sums[f'ndcg@{k}'] += float((dcg / idcg).sum())
        sums['num_users'] = float(users.numel())
        return sums


def combine_ranking_sums(parts: Iterable[Metrics]) -> Metrics:
    r"""Combines the :obj:`return_sums=True` outputs of
    :func:`ranking_metrics` over disjoint user shards into averaged metrics
    (users without test items are not counted).

    Args:
        parts (Iterable[Dict[str, float]]): Per-shard metric sums, each with
            a :obj:`'num_users'` entry.
    """
    total: Dict[str, float] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0.0) + float(value)
    if not total:
        raise ValueError("'parts' is empty")
    count = total.pop('num_users')
    if count <= 0:
        raise ValueError(
            "No evaluated user has a test item, so Recall/NDCG are "
            "undefined: the test set is empty, or the evaluated users (e.g. "
            "'user_ids' or an 'eval_users' sample) have no test pairs")
    return {key: value / count for key, value in total.items()}


def ranking_metrics_from_scores(
    score_fn: Callable[[Tensor], Tensor],
    num_users: int,
    num_items: int,
    train_edge_index: Tensor,
    test_edge_index: Tensor,
    ks: Union[int, Sequence[int]] = (20, ),
    batch_size: int = 1024,
    user_ids: Optional[Tensor] = None,
    return_sums: bool = False,
) -> Metrics:
    r"""Full-ranking Recall@:math:`k` and NDCG@:math:`k` for any scorer
    :obj:`score_fn(user_ids) -> [len(user_ids), num_items]`.

    For every evaluated user :math:`u` with test items
    :math:`\mathcal{T}_u \neq \emptyset`, all items are ranked by score after
    setting the scores of the user's *training* items to :math:`-\infty`
    (so they never count; ties are broken by lower item id first, see
    :func:`deterministic_topk`).  With binary relevance
    :math:`r_j \in \{0, 1\}` of the item at rank :math:`j`,

    .. math::
        \textrm{Recall@}k(u) = \frac{\sum_{j=1}^{k} r_j}{|\mathcal{T}_u|},
        \qquad
        \textrm{NDCG@}k(u) = \frac{\sum_{j=1}^{k} r_j / \log_2(j + 1)}
        {\sum_{j=1}^{\min(|\mathcal{T}_u|, k)} 1 / \log_2(j + 1)},

    averaged over users with at least one test item (users without test
    items are skipped).  Users are scored in batches of :obj:`batch_size`,
    so memory stays :math:`O(\textrm{batch\_size} \cdot I)`.  The
    returned score tensor is modified in place (training items set to
    :math:`-\infty`); :obj:`nan` scores are not supported.

    Example, for :class:`pyg_cerp.nn.MLPScorer`::

        ranking_metrics_from_scores(model.score_all, num_users, num_items,
                                    train_edge_index, test_edge_index,
                                    ks=(20, ))

    Args:
        score_fn (callable): Maps a :obj:`[B]` tensor of user ids to a
            :obj:`[B, num_items]` score tensor (on any device).
        num_users (int): The number of users.
        num_items (int): The number of items.
        train_edge_index (torch.Tensor): Training (user, item) pairs
            :obj:`[2, E_train]` to exclude from the ranking.
        test_edge_index (torch.Tensor): Test (user, item) pairs
            :obj:`[2, E_test]` (duplicates count once).
        ks (int or Sequence[int], optional): Cut-offs. (default:
            :obj:`(20,)`)
        batch_size (int, optional): Users per batch. (default: :obj:`1024`)
        user_ids (torch.Tensor, optional): Only evaluate these users (e.g.
            this rank's shard in distributed evaluation). (default:
            :obj:`None`, all users)
        return_sums (bool, optional): If :obj:`True`, returns per-metric sums
            over the evaluated users plus :obj:`'num_users'` (the number of
            users with test items), so that disjoint shards combine exactly
            via :func:`combine_ranking_sums` (or an all-reduce sum followed by
            a division). (default: :obj:`False`)

    Returns:
        A dictionary with keys :obj:`'recall@k'` and :obj:`'ndcg@k'` for
        every :obj:`k` (and :obj:`'num_users'` if :obj:`return_sums`).
    """
    evaluator = RankingEvaluator(num_users, num_items, train_edge_index,
                                 test_edge_index, ks)
    return evaluator(score_fn, batch_size, user_ids, return_sums)


def ranking_metrics(
    user_emb: Tensor,
    item_emb: Tensor,
    train_edge_index: Tensor,
    test_edge_index: Tensor,
    ks: Union[int, Sequence[int]] = (20, ),
    batch_size: int = 1024,
    user_ids: Optional[Tensor] = None,
    return_sums: bool = False,
) -> Metrics:
    r"""Full-ranking Recall@:math:`k` and NDCG@:math:`k` of inner-product
    scores :math:`\mathbf{e}_u^{\top} \mathbf{e}_i`, with every user's
    training items excluded; see :func:`ranking_metrics_from_scores` for the
    exact definitions.

    Args:
        user_emb (torch.Tensor): User embeddings :obj:`[num_users, d]`.
        item_emb (torch.Tensor): Item embeddings :obj:`[num_items, d]`.
        train_edge_index (torch.Tensor): Training (user, item) pairs.
        test_edge_index (torch.Tensor): Test (user, item) pairs.
        ks (int or Sequence[int], optional): Cut-offs. (default:
            :obj:`(20,)`)
        batch_size (int, optional): Users per batch. (default: :obj:`1024`)
        user_ids (torch.Tensor, optional): Only evaluate these users.
            (default: :obj:`None`)
        return_sums (bool, optional): Return sums and :obj:`'num_users'`
            instead of means. (default: :obj:`False`)
    """
    if user_emb.dim() != 2 or item_emb.dim() != 2 or \
            user_emb.size(1) != item_emb.size(1):
        raise ValueError(f"Embeddings must be [num_users, d] and "
                         f"[num_items, d] (got {list(user_emb.shape)} and "
                         f"{list(item_emb.shape)})")
    user_emb, item_emb = user_emb.detach(), item_emb.detach()
    item_t = item_emb.t()
    dtype = torch.promote_types(user_emb.dtype, item_emb.dtype)
    buffer: Dict[str, Tensor] = {}

    def score_fn(users: Tensor) -> Tensor:
        # Writing into one reused buffer instead of a fresh [B, I] tensor per
        # batch saves ~40% of the CPU time on Gowalla (page faults of the new
        # allocation dominate the small-K matrix product).
        num = users.numel()
        if 'out' not in buffer or buffer['out'].size(0) < num:
            buffer['out'] = torch.empty(num, item_emb.size(0), dtype=dtype,
                                        device=user_emb.device)
        out = buffer['out'][:num]
        torch.mm(user_emb[users.to(user_emb.device)].to(dtype),
                 item_t.to(dtype), out=out)
        return out

    return ranking_metrics_from_scores(
        score_fn, user_emb.size(0), item_emb.size(0), train_edge_index,
        test_edge_index, ks, batch_size, user_ids, return_sums)
