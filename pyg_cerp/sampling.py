r"""Vectorised BPR triple sampling."""
import copy
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

from pyg_cerp.utils.validation import check_edge_ids, check_int

__all__ = ['BPRSampler', 'ShardedBatch']

Triple = Tuple[Tensor, Tensor, Tensor]


class ShardedBatch(tuple):
    r"""This rank's :obj:`(users, pos, neg)` share of a global batch (a plain
    3-tuple for unpacking), with the whole global batch in
    :attr:`global_batch` (yielded by :class:`BPRSampler` with
    :obj:`split_batches=True`), from which the pruning regulariser's entity
    set of the global batch is computed."""
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


class BPRSampler:
    r"""Samples (user, positive item, negative items) triples for the
    Bayesian Personalized Ranking loss
    (`"BPR: Bayesian Personalized Ranking from Implicit Feedback"
    <https://arxiv.org/abs/1205.2618>`_).

    One epoch visits every training pair :math:`(u, i^+)` once, in an order
    drawn from a :class:`torch.Generator` seeded by :math:`(\textrm{seed},
    \textrm{epoch})` only, so epoch :math:`e` can be reproduced with
    :meth:`set_epoch`.  For every pair, :obj:`num_negatives` items are drawn
    uniformly from :math:`\{0, \ldots, I - 1\}`.  With
    :obj:`reject_positives=True`, negatives that are training positives of
    the user are redrawn (vectorised: pairs are encoded as
    :math:`u \cdot I + i` and looked up with :func:`torch.searchsorted` in
    the sorted training keys; only hits are redrawn) for at most
    :obj:`max_rounds` rounds; the few hits left after that (probability
    :math:`\le (\deg(u) / I)^{\textrm{max\_rounds}+1}`, large only for
    users with almost every item) are drawn exactly from the user's
    non-positive items.

    All triples of an epoch are drawn at once when iteration starts (memory
    :math:`O(|\mathcal{E}| \cdot \textrm{num\_negatives})` integers).

    Iterating yields :obj:`(users, pos_items, neg_items)` with shapes
    :obj:`[B]`, :obj:`[B]` and :obj:`[B, num_negatives]` (local ids).
    Each call of :meth:`__iter__` runs epoch :obj:`self.epoch` and then
    advances :obj:`self.epoch` by one, so plain loops reshuffle every epoch.

    For distributed training, all ranks draw the same permutation for the
    same (seed, epoch); rank :obj:`r` takes positions
    :obj:`r, r + world_size, ...`.  Like
    :class:`torch.utils.data.DistributedSampler`, the permutation is padded
    by repeating its first pairs (or truncated with :obj:`drop_last=True`)
    so that all ranks get the same number of pairs; without padding the
    slices are disjoint.  Negatives are drawn per rank from
    (seed, epoch, rank).

    With :obj:`split_batches=True` the sharding is exact instead: every rank
    draws the single-process epoch (same permutation and negatives) and
    yields the strided share :obj:`[rank::world_size]` of each of its
    batches (a :class:`ShardedBatch`), so :obj:`batch_size` is the *global*
    batch and the ranks together train on exactly the single-process
    triples.  Every rank draws the whole epoch
    (:math:`O(|\mathcal{E}| \cdot \textrm{num\_negatives})` per rank and
    epoch), and in a last batch with fewer triples than ranks some ranks get
    an empty share.  :meth:`shard` turns a single-process sampler into this
    rank's.

    Args:
        edge_index (torch.Tensor): Training (user, item) pairs of shape
            :obj:`[2, num_edges]`, local ids.
        num_users (int): The number of users.
        num_items (int): The number of items :math:`I`.
        num_negatives (int, optional): Negatives per positive (CERP's
            official code uses 5). (default: :obj:`1`)
        batch_size (int, optional): Positive pairs per batch.
            (default: :obj:`2048`)
        shuffle (bool, optional): If :obj:`False`, pairs are visited in
            :obj:`edge_index` order (negatives stay random).
            (default: :obj:`True`)
        seed (int, optional): The base seed. (default: :obj:`0`)
        reject_positives (bool, optional): Whether to redraw negatives that
            are training positives. (default: :obj:`True`)
        max_rounds (int, optional): Maximum redraw rounds.
            (default: :obj:`10`)
        drop_last (bool, optional): If :obj:`True`, drops the incomplete last
            batch, and the tail of the permutation that does not divide
            evenly over ranks. (default: :obj:`False`)
        rank (int, optional): This process' rank. (default: :obj:`0`)
        world_size (int, optional): The number of ranks. (default: :obj:`1`)
        split_batches (bool, optional): Shard each single-process batch
            across ranks exactly (see above) instead of the epoch.
            (default: :obj:`False`)
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
        if not isinstance(edge_index, Tensor):
            raise TypeError(f"'edge_index' must be a torch.Tensor "
                            f"(got {type(edge_index).__name__})")
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"'edge_index' must have shape [2, num_edges] "
                             f"(got {list(edge_index.size())})")
        if edge_index.size(1) == 0:
            raise ValueError("'edge_index' has no edges")
        for arg, value in (('num_users', num_users),
                           ('num_items', num_items),
                           ('num_negatives', num_negatives),
                           ('batch_size', batch_size),
                           ('world_size', world_size)):
            check_int(arg, value, minimum=1)
        check_int('max_rounds', max_rounds, minimum=0)
        check_int('seed', seed, minimum=None)
        check_int('rank', rank, minimum=0)
        if not 0 <= rank < world_size:
            raise ValueError(f"'rank' must be in [0, {world_size}) "
                             f"(got {rank})")
        # Before the cast: float ids must not be truncated silently.
        check_edge_ids(edge_index, num_users, num_items)
        edge_index = edge_index.to(torch.long).cpu()

        self.edge_index = edge_index
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

        # Sorted unique keys u * I + i of all training positives:
        self.pos_keys = torch.unique(edge_index[0] * num_items +
                                     edge_index[1])
        if reject_positives:
            deg = torch.bincount(self.pos_keys // num_items,
                                 minlength=num_users)
            if int(deg.max()) >= num_items:
                user = int(deg.argmax())
                raise ValueError(f"User {user} interacted with all "
                                 f"{num_items} items, so no negative item "
                                 f"exists (use reject_positives=False)")

    def shard(self, rank: int, world_size: int) -> 'BPRSampler':
        r"""A copy of this single-process sampler that yields rank
        :obj:`rank`'s exact share of each of its batches
        (:obj:`split_batches=True`, same :obj:`batch_size`, now global).

        Args:
            rank (int): This process's rank.
            world_size (int): The number of ranks.
        """
        if self.world_size != 1:
            raise ValueError(f"Only a single-process sampler can be sharded "
                             f"(got world_size={self.world_size})")
        check_int('world_size', world_size, minimum=1)
        if not 0 <= rank < world_size:
            raise ValueError(f"'rank' must be in [0, {world_size}) "
                             f"(got {rank})")
        out = copy.copy(self)
        out.rank, out.world_size, out.split_batches = rank, world_size, True
        return out

    @property
    def num_pairs(self) -> int:
        r"""The number of positive pairs this rank visits per epoch (all
        of them with :obj:`split_batches`, of which it keeps its share)."""
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
        r"""Sets the epoch that the next iteration runs.

        Args:
            epoch (int): The epoch.
        """
        self.epoch = epoch

    def is_positive(self, users: Tensor, items: Tensor) -> Tensor:
        r"""Returns a boolean mask telling which (user, item) pairs are
        training positives (shapes broadcast).

        Args:
            users (torch.Tensor): User ids.
            items (torch.Tensor): Item ids.
        """
        key = users * self.num_items + items
        pos = torch.searchsorted(self.pos_keys, key)
        pos.clamp_(max=self.pos_keys.numel() - 1)
        return self.pos_keys[pos] == key

    def permutation(self, epoch: int) -> Tensor:
        r"""Returns the indices of the positive pairs (columns of
        :obj:`edge_index`) this rank visits in :obj:`epoch`, in order.

        Args:
            epoch (int): The epoch.
        """
        num_edges = self.edge_index.size(1)
        if self.shuffle:
            gen = torch.Generator().manual_seed(_mix_seed(self.seed, epoch))
            perm = torch.randperm(num_edges, generator=gen)
        else:
            perm = torch.arange(num_edges)
        if self.world_size > 1 and not self.split_batches:
            total = self.num_pairs * self.world_size
            if total > num_edges:  # pad like DistributedSampler
                reps = -(-total // num_edges)
                perm = perm.repeat(reps)
            perm = perm[:total][self.rank::self.world_size]
        return perm

    def sample_negatives(
        self,
        users: Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        r"""Draws :obj:`[len(users), num_negatives]` negative items,
        rejecting training positives if :obj:`reject_positives=True`.

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
        if hit[0].numel() > 0:  # Users with almost every item: draw exactly.
            neg[hit] = self._sample_non_positive(users[hit], generator)
        return neg

    def _sample_non_positive(
        self,
        users: Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        # Uniform over the items that are *not* training positives of each
        # user: draw a rank r in [0, I - deg(u)) and map it to the r-th
        # non-positive item, r + #{positives p_j with p_j - j <= r}, where
        # p_0 < p_1 < ... are the user's positives (p_j - j is
        # non-decreasing). Used for the few draws left after `max_rounds`.
        num_items = self.num_items
        keys = self.pos_keys
        key_user = keys // num_items
        if not hasattr(self, '_adjusted_keys'):
            deg = torch.bincount(key_user, minlength=self.num_users)
            start = torch.cumsum(deg, 0) - deg
            local = torch.arange(keys.numel()) - start[key_user]
            self._deg, self._start = deg, start
            self._adjusted_keys = keys - local  # u * I + (p_j - j)
        deg, start = self._deg[users], self._start[users]
        rank = (torch.rand(users.numel(), generator=generator) *
                (num_items - deg)).long().clamp_(max=num_items - deg - 1)
        found = torch.searchsorted(self._adjusted_keys,
                                   users * num_items + rank, right=True)
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
        step = self.world_size
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            end = start + self.batch_size
            batch = users[start:end], pos[start:end], neg[start:end]
            if not self.split_batches:
                yield batch
                continue
            out = ShardedBatch(t[self.rank::step] for t in batch)
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
