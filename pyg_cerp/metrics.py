r"""Full-ranking top-:math:`k` evaluation (Recall@k and NDCG@k) with training
positives excluded, as in LightGCN and CERP, and the ranking primitives it
shares with serving: :func:`deterministic_topk`, :func:`gather_user_items`,
:func:`masked_topk` and :func:`isin_sorted`."""
import warnings
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from pyg_cerp.utils.validation import check_edge_ids, check_int, check_ks

__all__ = [
    'RankingEvaluator',
    'ranking_metrics',
    'ranking_metrics_from_scores',
    'combine_ranking_sums',
    'deterministic_topk',
    'masked_topk',
    'gather_user_items',
    'isin_sorted',
]

Metrics = Dict[str, float]


def deterministic_topk(scores: Tensor, k: int) -> Tensor:
    r"""Returns the indices of the :obj:`k` largest entries of every row of
    :obj:`scores`, by descending score and, among equal scores, ascending
    index (a stable descending sort, without sorting the full rows).

    :func:`torch.topk` leaves the choice among ties unspecified.  It is run
    for :math:`k + 1` entries; rows whose :math:`k`-th and :math:`(k+1)`-th
    values tie are resolved by a full stable sort, the others by re-ordering
    the :math:`k` selected entries.  :obj:`nan` scores are not supported.

    Args:
        scores (torch.Tensor): Scores of shape :obj:`[B, N]`.
        k (int): The number of entries, :math:`1 \leq k \leq N`.
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


def masked_topk(scores: Tensor, k: int, row: Optional[Tensor] = None,
                col: Optional[Tensor] = None) -> Tensor:
    r"""The :func:`deterministic_topk` indices of :obj:`scores` after
    setting the excluded entries :obj:`scores[row, col]` (*e.g.*, every
    user's training items, see :func:`gather_user_items`) to
    :math:`-\infty` in place.  A row with fewer than :math:`k` other entries
    gets excluded ones last.

    Args:
        scores (torch.Tensor): Scores of shape :obj:`[B, N]`.
        k (int): The number of entries per row.
        row (torch.Tensor, optional): Rows of the excluded entries.
            (default: :obj:`None`)
        col (torch.Tensor, optional): Their columns. (default: :obj:`None`)
    """
    if row is not None and row.numel() > 0:
        scores.index_put_((row.to(scores.device), col.to(scores.device)),
                          scores.new_full((), float('-inf')))
    return deterministic_topk(scores, k)


def gather_user_items(ptr: Tensor, items: Tensor,
                      users: Tensor) -> Tuple[Tensor, Tensor]:
    r"""Returns :obj:`(row, item)` for every item of every user in
    :obj:`users` of a user-sorted CSR index (:obj:`row` is the position in
    :obj:`users`), in :math:`O(\textrm{their items})`.

    Args:
        ptr (torch.Tensor): The :math:`N_U + 1` row pointers.
        items (torch.Tensor): The items, grouped by user.
        users (torch.Tensor): The users of shape :obj:`[B]`.
    """
    start = ptr[users].long()
    deg = ptr[users + 1].long() - start
    total = int(deg.sum())
    row = torch.repeat_interleave(
        torch.arange(users.numel(), device=users.device), deg,
        output_size=total)
    offset = torch.arange(total, device=users.device) - \
        (torch.cumsum(deg, 0) - deg)[row]
    return row, items[start[row] + offset]


def isin_sorted(query: Tensor, sorted_keys: Tensor) -> Tensor:
    r"""Which entries of :obj:`query` occur in the sorted 1-D
    :obj:`sorted_keys` (:func:`torch.searchsorted`, about 5x faster than
    :func:`torch.isin` on (user, item) keys :math:`u \cdot I + i`).

    Args:
        query (torch.Tensor): The keys to look up (any shape).
        sorted_keys (torch.Tensor): The sorted keys.
    """
    if sorted_keys.numel() == 0:
        return torch.zeros_like(query, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, query)
    pos.clamp_(max=sorted_keys.numel() - 1)
    return sorted_keys[pos] == query


def _sorted_keys(edge_index: Tensor, num_items: int) -> Tensor:
    # The sorted unique keys u * I + i.  Dataset edges are already sorted by
    # (user, item): an O(E) check then skips the O(E log E) `torch.unique`.
    key = (edge_index[0].long() * num_items + edge_index[1].long()).cpu()
    if key.numel() < 2 or bool((key[1:] > key[:-1]).all()):
        return key
    return torch.unique(key)


class RankingEvaluator:
    r"""Full-ranking Recall@:math:`k` and NDCG@:math:`k` of a scorer, with
    the index structures (sorted train/test keys, per-user training items)
    built once for repeated evaluation during training.

    For every evaluated user :math:`u` with test items
    :math:`\mathcal{T}_u \neq \emptyset`, all items are ranked by score
    after the user's *training* items are set to :math:`-\infty`
    (:func:`masked_topk`, ties by lower item id).  With the binary relevance
    :math:`r_j` of the item at rank :math:`j`,

    .. math::
        \textrm{Recall@}k(u) = \frac{\sum_{j=1}^{k} r_j}{|\mathcal{T}_u|},
        \qquad
        \textrm{NDCG@}k(u) = \frac{\sum_{j=1}^{k} r_j / \log_2(j + 1)}
        {\sum_{j=1}^{\min(|\mathcal{T}_u|, k)} 1 / \log_2(j + 1)},

    averaged over the users with test items.

    The metric step is hand-written rather than
    :class:`torch_geometric.metrics.LinkPredRecall` /
    :class:`~torch_geometric.metrics.LinkPredNDCG` (the tests check that they
    agree): it reuses the sorted test keys across batches instead of
    re-sorting every batch's labels, does not count excluded items that fill
    the top-:math:`k` of users with fewer than :math:`k` candidates, and sums
    per-user values in :obj:`float64` so that user shards combine exactly
    (the committed benchmark numbers are bit-for-bit these).

    Args:
        num_users (int): The number of users.
        num_items (int): The number of items.
        train_edge_index (torch.Tensor): Training (user, item) pairs
            :obj:`[2, E_train]`, excluded from the ranking.
        test_edge_index (torch.Tensor): Test pairs :obj:`[2, E_test]`
            (duplicates count once).
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
        self.ks = check_ks(ks)
        check_edge_ids(train_edge_index, num_users, num_items,
                       'train_edge_index')
        check_edge_ids(test_edge_index, num_users, num_items,
                       'test_edge_index')
        self.num_users, self.num_items = num_users, num_items
        train_key = _sorted_keys(train_edge_index, num_items)
        self.train_items = train_key % num_items
        deg = torch.bincount(train_key // num_items, minlength=num_users)
        self.train_ptr = torch.cat([deg.new_zeros(1), deg.cumsum(0)])
        self.test_key = _sorted_keys(test_edge_index, num_items)
        self.test_count = torch.bincount(self.test_key // num_items,
                                         minlength=num_users)
        overlap = int(isin_sorted(self.test_key, train_key).sum())
        if overlap > 0:
            warnings.warn(
                f"{overlap} test (user, item) pair(s) are also training "
                f"pairs: they are excluded from the ranking but still count "
                f"in the Recall/NDCG denominators, so the metrics are biased "
                f"low (a perfect scorer cannot reach 1). Remove them from "
                f"the test set.", UserWarning, stacklevel=3)
        self.kmax = min(self.ks[-1], num_items)
        self.discount = 1.0 / torch.arange(2, self.kmax + 2,
                                           dtype=torch.float64).log2()
        self.idcg = torch.cat([self.discount.new_zeros(1),
                               self.discount.cumsum(0)])

    @property
    def num_eval_users(self) -> int:
        r"""The number of users with at least one test item."""
        return int((self.test_count > 0).sum())

    @torch.no_grad()
    def __call__(
        self,
        score_fn: Callable[[Tensor], Tensor],
        batch_size: int = 1024,
        user_ids: Optional[Tensor] = None,
        return_sums: bool = False,
    ) -> Metrics:
        r"""Evaluates a scorer.

        Args:
            score_fn (callable): Maps a :obj:`[B]` tensor of user ids to
                :obj:`[B, num_items]` scores (any device; modified in place).
            batch_size (int, optional): Users per batch (memory
                :math:`O(\textrm{batch\_size} \cdot I)`).
                (default: :obj:`1024`)
            user_ids (torch.Tensor, optional): Only evaluate these users
                (*e.g.*, this rank's shard). (default: :obj:`None`)
            return_sums (bool, optional): Return per-metric sums over the
                evaluated users plus :obj:`'num_users'` (those with test
                items), which disjoint shards combine exactly with
                :func:`combine_ranking_sums`. (default: :obj:`False`)

        Returns:
            :obj:`'recall@k'` and :obj:`'ndcg@k'` for every :obj:`k`.
        """
        check_int('batch_size', batch_size)
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
        for start in range(0, users.numel(), batch_size):
            batch = users[start:start + batch_size]
            self._accumulate(sums, batch, score_fn(batch))
        sums['num_users'] = float(users.numel())
        return sums if return_sums else combine_ranking_sums([sums])

    def _accumulate(self, sums: Metrics, batch: Tensor,
                    scores: Tensor) -> None:
        if scores.shape != (batch.numel(), self.num_items):
            raise ValueError(f"Scores must have shape "
                             f"[{batch.numel()}, {self.num_items}] "
                             f"(got {list(scores.shape)})")
        scores = scores.detach()
        row, col = gather_user_items(self.train_ptr, self.train_items, batch)
        top = masked_topk(scores, self.kmax, row, col)
        picked = scores.gather(1, top)
        # topk ranks nan above everything: a nan anywhere in a row's
        # candidates shows up in its top-k (an O(B k) check).
        if bool(picked.isnan().any()):
            bad = batch[picked.isnan().any(1).cpu()][:5].tolist()
            raise ValueError(
                f"'score_fn' returned nan scores (e.g. for users {bad}): the "
                f"model diverged or its inputs hold nan, and the ranking "
                f"would be arbitrary")
        excluded = (picked == float('-inf')).cpu()
        key = batch.view(-1, 1) * self.num_items + top.cpu()
        hit = (isin_sorted(key, self.test_key) & ~excluded).to(torch.float64)
        count = self.test_count[batch].to(torch.float64)
        for k in self.ks:
            kk = min(k, self.kmax)
            recall = hit[:, :kk].sum(1) / count
            dcg = (hit[:, :kk] * self.discount[:kk]).sum(1)
            idcg = self.idcg[count.long().clamp(max=kk)]
            sums[f'recall@{k}'] += float(recall.sum())
            sums[f'ndcg@{k}'] += float((dcg / idcg).sum())

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_users={self.num_users}, '
                f'num_items={self.num_items}, ks={tuple(self.ks)})')


def combine_ranking_sums(parts: Iterable[Metrics]) -> Metrics:
    r"""Averages the :obj:`return_sums=True` outputs of disjoint user shards
    (users without test items are not counted).

    Args:
        parts (Iterable[Dict[str, float]]): Per-shard sums, each with a
            :obj:`'num_users'` entry.
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
    r"""Full-ranking Recall@:math:`k` and NDCG@:math:`k` of any scorer
    :obj:`score_fn(user_ids) -> [len(user_ids), num_items]`, *e.g.*
    :meth:`pyg_cerp.nn.MLPScorer.score_all`: a one-off
    :class:`RankingEvaluator`, whose docstring gives the definitions and the
    arguments."""
    evaluator = RankingEvaluator(num_users, num_items, train_edge_index,
                                 test_edge_index, ks)
    return evaluator(score_fn, batch_size, user_ids, return_sums)


def ranking_metrics(user_emb: Tensor, item_emb: Tensor,
                    train_edge_index: Tensor, test_edge_index: Tensor,
                    ks: Union[int, Sequence[int]] = (20, ),
                    batch_size: int = 1024, user_ids: Optional[Tensor] = None,
                    return_sums: bool = False) -> Metrics:
    r""":func:`ranking_metrics_from_scores` of the inner products
    :math:`\mathbf{e}_u^{\top} \mathbf{e}_i` of user embeddings
    :obj:`user_emb` (:obj:`[num_users, d]`) and item embeddings
    :obj:`item_emb` (:obj:`[num_items, d]`); the other arguments are those
    of :class:`RankingEvaluator`."""
    if user_emb.dim() != 2 or item_emb.dim() != 2 or \
            user_emb.size(1) != item_emb.size(1):
        raise ValueError(f"Embeddings must be [num_users, d] and "
                         f"[num_items, d] (got {list(user_emb.shape)} and "
                         f"{list(item_emb.shape)})")
    user_emb, item_emb = user_emb.detach(), item_emb.detach()
    dtype = torch.promote_types(user_emb.dtype, item_emb.dtype)
    item_t = item_emb.t().to(dtype)
    buffer = torch.empty(0, item_emb.size(0), dtype=dtype,
                         device=user_emb.device)

    def score_fn(users: Tensor) -> Tensor:
        # One reused output buffer instead of a fresh [B, I] tensor per batch
        # saves ~40% of the CPU time on Gowalla (page faults of the new
        # allocation dominate the small-d matrix product).
        nonlocal buffer
        if buffer.size(0) < users.numel():
            buffer = buffer.new_empty(users.numel(), item_emb.size(0))
        out = buffer[:users.numel()]
        return torch.mm(user_emb[users.to(user_emb.device)].to(dtype), item_t,
                        out=out)

    return ranking_metrics_from_scores(
        score_fn, user_emb.size(0), item_emb.size(0), train_edge_index,
        test_edge_index, ks, batch_size, user_ids, return_sums)
