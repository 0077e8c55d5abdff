r"""Vectorised BPR triple sampling."""
import copy
from functools import cached_property
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

from pyg_cerp.metrics import isin_sorted
from pyg_cerp.utils.validation import check_edge_ids, check_int

__all__ = ['BPRSampler', 'ShardedBatch']

Triple = Tuple[Tensor, Tensor, Tensor]


class ShardedBatch(tuple):
    r"""This rank's :obj:`(users, pos, neg)` share of a global batch (a plain
    3-tuple), with the whole batch in :attr:`global_batch` (from which the
    pruning regulariser's entity set is computed); yielded by
    :class:`BPRSampler` with :obj:`split_batches=True`."""
    global_batch: Optional[Triple] = None


def _mix_seed(*parts: int) -> int:
    # Deterministic 63-bit seed from integers (splitmix64-style mixing), so
    # that nearby (seed, epoch, rank) tuples give unrelated streams.
    mask = (1 << 64) - 1
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (p & mask)) * 0xBF58476D1CE4E5B9 & mask
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & mask
        x ^= x >> 29
    return x & ((1 << 63) - 1)


def _check_rank(rank: int, world_size: int) -> None:
    check_int('world_size', world_size)
    check_int('rank', rank, minimum=0)
    if rank >= world_size:
        raise ValueError(f"'rank' must be in [0, {world_size}) (got {rank})")


class BPRSampler:
    r"""Samples (user, positive item, negative items) triples for the
    Bayesian Personalized Ranking loss
    (`"BPR: Bayesian Personalized Ranking from Implicit Feedback"
    <https://arxiv.org/abs/1205.2618>`_).

    An epoch visits every training pair :math:`(u, i^+)` once, in an order
    seeded by :math:`(\textrm{seed}, \textrm{epoch})` only (see
    :meth:`set_epoch`), with :obj:`num_negatives` uniform items
    :math:`i^- \in \{0, \ldots, I - 1\}` per pair; with
    :obj:`reject_positives`, the user's training positives among them are
    redrawn for up to :obj:`max_rounds` rounds, then the few left
    (probability :math:`\le (\deg(u) / I)^{\textrm{max\_rounds}+1}`) are
    drawn exactly from the user's non-positive items.  Iterating draws the
    whole epoch (:math:`O(|\mathcal{E}| \cdot \textrm{num\_negatives})`
    memory), yields :obj:`(users, pos_items, neg_items)` of shapes
    :obj:`[B]`, :obj:`[B]`, :obj:`[B, num_negatives]` and advances
    :obj:`epoch`.

    With :obj:`world_size > 1`, rank :obj:`r` takes positions :obj:`r, r +
    world_size, ...` of the shared permutation, padded (or truncated with
    :obj:`drop_last`) like :class:`torch.utils.data.DistributedSampler`,
    with negatives drawn per (seed, epoch, rank).  With
    :obj:`split_batches` instead (see :meth:`shard`), every rank draws the
    single-process epoch and yields the share :obj:`[rank::world_size]` of
    each batch (a :class:`ShardedBatch`): :obj:`batch_size` is global and
    the ranks together train on exactly the single-process triples.

    Args:
        edge_index (torch.Tensor): Training (user, item) pairs
            :obj:`[2, num_edges]`.
        num_users (int): The number of users.
        num_items (int): The number of items :math:`I`.
        num_negatives (int, optional): Negatives per positive (CERP's code
            uses 5). (default: :obj:`1`)
        batch_size (int, optional): Positive pairs per batch.
            (default: :obj:`2048`)
        shuffle (bool, optional): If :obj:`False`, pairs are visited in
            :obj:`edge_index` order. (default: :obj:`True`)
        seed (int, optional): The base seed. (default: :obj:`0`)
        reject_positives (bool, optional): Redraw negatives that are
            training positives. (default: :obj:`True`)
        max_rounds (int, optional): Redraw rounds before the exact draw.
            (default: :obj:`10`)
        drop_last (bool, optional): Drop the incomplete last batch and the
            tail of the permutation that does not divide over the ranks.
            (default: :obj:`False`)
        rank (int, optional): This process's rank. (default: :obj:`0`)
        world_size (int, optional): The number of ranks. (default: :obj:`1`)
        split_batches (bool, optional): Shard each batch exactly instead of
            the epoch. (default: :obj:`False`)
    """
    def __init__(
        self,
        edge_index: Tensor,
        num_users: int,
        num_items: int,
        num_negatives: int = 1,
        batch_size: int = 2048,
        shuffle: bool = True,
        seed: int = 0,
        reject_positives: bool = True,
        max_rounds: int = 10,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        split_batches: bool = False,
    ) -> None:
        for arg, value in (('num_users', num_users),
                           ('num_items', num_items),
                           ('num_negatives', num_negatives),
                           ('batch_size', batch_size)):
            check_int(arg, value)
        check_int('max_rounds', max_rounds, minimum=0)
        check_int('seed', seed, minimum=None)
        _check_rank(rank, world_size)
        check_edge_ids(edge_index, num_users, num_items)  # before the cast
        if edge_index.size(1) == 0:
            raise ValueError("'edge_index' has no edges")
        self.edge_index = edge_index.to(torch.long).cpu()
        self.num_users = num_users
        self.num_items = num_items
        self.num_negatives = num_negatives
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.reject_positives = reject_positives
        self.max_rounds = max_rounds
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.split_batches = bool(split_batches)
        self.epoch = 0
        #: The sorted unique keys :math:`u \cdot I + i` of the positives.
        self.pos_keys = torch.unique(self.edge_index[0] * num_items +
                                     self.edge_index[1])
        if reject_positives:
            deg = torch.bincount(self.pos_keys // num_items,
                                 minlength=num_users)
            if int(deg.max()) >= num_items:
                raise ValueError(f"User {int(deg.argmax())} interacted with "
                                 f"all {num_items} items, so no negative "
                                 f"item exists (use reject_positives=False)")

    def shard(self, rank: int, world_size: int) -> 'BPRSampler':
        r"""A copy of this single-process sampler yielding rank
        :obj:`rank`'s exact share of each batch (:obj:`split_batches=True`;
        :obj:`batch_size` is now global).

        Args:
            rank (int): This process's rank.
            world_size (int): The number of ranks.
        """
        if self.world_size != 1:
            raise ValueError(f"Only a single-process sampler can be sharded "
                             f"(got world_size={self.world_size})")
        _check_rank(rank, world_size)
        out = copy.copy(self)
        out.rank, out.world_size, out.split_batches = rank, world_size, True
        return out

    @property
    def num_pairs(self) -> int:
        r"""The positive pairs this rank visits per epoch (all of them with
        :obj:`split_batches`, of which it keeps its share)."""
        num_edges = self.edge_index.size(1)
        if self.split_batches:
            return num_edges
        if self.drop_last:
            return num_edges // self.world_size
        return -(-num_edges // self.world_size)

    def __len__(self) -> int:
        r"""The number of batches per epoch (on this rank)."""
        if self.drop_last:
            return self.num_pairs // self.batch_size
        return -(-self.num_pairs // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        r"""Sets the epoch that the next iteration runs."""
        self.epoch = epoch

    def is_positive(self, users: Tensor, items: Tensor) -> Tensor:
        r"""Which (user, item) pairs are training positives (shapes
        broadcast)."""
        return isin_sorted(users * self.num_items + items, self.pos_keys)

    def permutation(self, epoch: int) -> Tensor:
        r"""The columns of :obj:`edge_index` this rank visits in
        :obj:`epoch`, in order."""
        num_edges = self.edge_index.size(1)
        if self.shuffle:
            gen = torch.Generator().manual_seed(_mix_seed(self.seed, epoch))
            perm = torch.randperm(num_edges, generator=gen)
        else:
            perm = torch.arange(num_edges)
        if self.world_size > 1 and not self.split_batches:
            total = self.num_pairs * self.world_size
            if total > num_edges:  # pad like DistributedSampler
                perm = perm.repeat(-(-total // num_edges))
            perm = perm[:total][self.rank::self.world_size]
        return perm

    def sample_negatives(
        self,
        users: Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        r"""Draws :obj:`[len(users), num_negatives]` negative items.

        Args:
            users (torch.Tensor): User ids of shape :obj:`[B]`.
            generator (torch.Generator, optional): The random generator.
                (default: :obj:`None`)
        """
        shape = (users.numel(), self.num_negatives)
        neg = torch.randint(self.num_items, shape, generator=generator)
        if not self.reject_positives:
            return neg
        users = users.view(-1, 1).expand(shape)
        hit = self.is_positive(users, neg).nonzero(as_tuple=True)
        for _ in range(self.max_rounds):
            if hit[0].numel() == 0:
                break
            new = torch.randint(self.num_items, (hit[0].numel(), ),
                                generator=generator)
            neg[hit] = new
            still = self.is_positive(users[hit], new)
            hit = (hit[0][still], hit[1][still])
        if hit[0].numel() > 0:  # users with almost every item: draw exactly
            neg[hit] = self._sample_non_positive(users[hit], generator)
        return neg

    @cached_property
    def _rank_index(self) -> Tuple[Tensor, Tensor, Tensor]:
        # Per user: the degree, the offset of its first key, and the keys
        # u * I + (p_j - j) of its sorted positives p_0 < p_1 < ...
        key_user = self.pos_keys // self.num_items
        deg = torch.bincount(key_user, minlength=self.num_users)
        start = torch.cumsum(deg, 0) - deg
        local = torch.arange(self.pos_keys.numel()) - start[key_user]
        return deg, start, self.pos_keys - local

    def _sample_non_positive(
        self,
        users: Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        # Uniform over the user's non-positive items: draw a rank r in
        # [0, I - deg(u)), the r-th non-positive item is
        # r + #{j : p_j - j <= r} (p_j - j is non-decreasing).
        num_items = self.num_items
        deg, start, adjusted = self._rank_index
        deg, start = deg[users], start[users]
        rank = (torch.rand(users.numel(), generator=generator) *
                (num_items - deg)).long().clamp_(max=num_items - deg - 1)
        found = torch.searchsorted(adjusted, users * num_items + rank,
                                   right=True)
        return rank + (found - start)

    def __iter__(self) -> Iterator[Triple]:
        epoch = self.epoch
        self.epoch += 1
        return self._iter_epoch(epoch)

    def _iter_epoch(self, epoch: int) -> Iterator[Triple]:
        perm = self.permutation(epoch)
        users = self.edge_index[0, perm]
        pos = self.edge_index[1, perm]
        stream = 0 if self.split_batches else self.rank
        gen = torch.Generator().manual_seed(
            _mix_seed(self.seed, epoch, stream, 1))
        neg = self.sample_negatives(users, gen)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            end = start + self.batch_size
            batch = users[start:end], pos[start:end], neg[start:end]
            if not self.split_batches:
                yield batch
                continue
            out = ShardedBatch(t[self.rank::self.world_size] for t in batch)
            out.global_batch = batch
            yield out

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_pairs={self.num_pairs}, '
                f'num_users={self.num_users}, num_items={self.num_items}, '
                f'num_negatives={self.num_negatives}, '
                f'batch_size={self.batch_size}, '
                f'reject_positives={self.reject_positives}, '
                f'rank={self.rank}, world_size={self.world_size}, '
                f'split_batches={self.split_batches})')
