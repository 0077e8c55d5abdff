import pytest
import torch

from pyg_cerp.sampling import BPRSampler


def random_graph(num_users=40, num_items=25, num_edges=300, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ei = torch.stack([
        torch.randint(0, num_users, (num_edges, ), generator=gen),
        torch.randint(0, num_items, (num_edges, ), generator=gen),
    ])
    key = torch.unique(ei[0] * num_items + ei[1])
    return torch.stack([key // num_items, key % num_items])


def collect(sampler):
    users, pos, neg = zip(*list(sampler))
    return torch.cat(users), torch.cat(pos), torch.cat(neg)


def test_epoch_covers_every_pair_once():
    ei = random_graph()
    sampler = BPRSampler(ei, 40, 25, num_negatives=3, batch_size=64, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == -(-ei.size(1) // 64)
    assert all(b[2].shape == (b[0].numel(), 3) for b in batches)
    assert all(b[0].dtype == torch.long for b in batches)
    users, pos, neg = collect(sampler)
    assert sorted(zip(users.tolist(), pos.tolist())) == \
        sorted(zip(*ei.tolist()))
    assert neg.min() >= 0 and neg.max() < 25


def test_reproducible_and_reshuffled():
    ei = random_graph()
    a = BPRSampler(ei, 40, 25, batch_size=50, seed=7)
    b = BPRSampler(ei, 40, 25, batch_size=50, seed=7)
    e0a, e1a = collect(a), collect(a)  # iteration advances the epoch
    assert a.epoch == 2
    b.set_epoch(1)
    e1b = collect(b)
    assert all(torch.equal(x, y) for x, y in zip(e1a, e1b))
    assert not torch.equal(e0a[0], e1a[0])  # reshuffled
    b.set_epoch(0)
    assert all(torch.equal(x, y) for x, y in zip(e0a, collect(b)))
    c = BPRSampler(ei, 40, 25, batch_size=50, seed=8)
    assert not torch.equal(collect(c)[0], e0a[0])


def test_no_shuffle_keeps_order():
    ei = random_graph()
    users, pos, _ = collect(BPRSampler(ei, 40, 25, batch_size=32,
                                       shuffle=False))
    assert torch.equal(torch.stack([users, pos]), ei)


def test_rejection_of_positives():
    # Dense graph: every user likes 15 of 20 items.
    num_users, num_items = 30, 20
    gen = torch.Generator().manual_seed(0)
    rows, cols = [], []
    for u in range(num_users):
        items = torch.randperm(num_items, generator=gen)[:15].tolist()
        rows += [u] * 15
        cols += items
    ei = torch.tensor([rows, cols])
    pos_set = set(zip(rows, cols))

    def false_negatives(sampler):
        users, _, neg = collect(sampler)
        return sum((u, i) in pos_set for u, row in zip(users.tolist(),
                                                       neg.tolist())
                   for i in row)

    plain = BPRSampler(ei, num_users, num_items, num_negatives=4,
                       reject_positives=False, seed=0)
    assert false_negatives(plain) > 0.5 * ei.size(1) * 4
    rej = BPRSampler(ei, num_users, num_items, num_negatives=4,
                     max_rounds=60, seed=0)
    assert false_negatives(rej) == 0
    users, _, neg = collect(rej)
    assert not rej.is_positive(users.view(-1, 1), neg).any()


def test_is_positive():
    ei = torch.tensor([[0, 1, 1], [2, 0, 3]])
    s = BPRSampler(ei, 2, 4)
    assert s.is_positive(torch.tensor([0, 0, 1, 1, 1]),
                         torch.tensor([2, 3, 0, 3, 2])).tolist() == \
        [True, False, True, True, False]


@pytest.mark.parametrize('num_edges,drop_last', [(300, False), (301, False),
                                                 (301, True)])
def test_sharding(num_edges, drop_last):
    ei = random_graph(num_users=100, num_items=500, num_edges=num_edges)
    ei = ei[:, :num_edges]
    world = 3
    ref = BPRSampler(ei, 100, 500, seed=3)
    perm = ref.permutation(5)
    shards = [BPRSampler(ei, 100, 500, batch_size=16, seed=3, rank=r,
                         world_size=world, drop_last=drop_last)
              for r in range(world)]
    perms = [s.permutation(5) for s in shards]
    assert len({p.numel() for p in perms}) == 1  # equal work per rank
    assert len({len(s) for s in shards}) == 1
    merged = torch.stack(perms, dim=1).view(-1)
    e = ei.size(1)
    if drop_last:
        assert torch.equal(merged, perm[:e - e % world])
    else:
        assert torch.equal(merged[:e], perm)  # all pairs, then padding
        assert torch.equal(merged[e:], perm[:merged.numel() - e])
    if e % world == 0 or drop_last:  # disjoint slices
        assert merged.unique().numel() == merged.numel()
    for s in shards:
        s.set_epoch(5)
    users = [collect(s)[0] for s in shards]
    assert torch.equal(users[1], ei[0, perms[1]][:users[1].numel()])


def test_validation():
    ei = torch.tensor([[0, 0], [0, 1]])
    with pytest.raises(ValueError, match='User 0 interacted with all 2'):
        BPRSampler(ei, 1, 2)
    BPRSampler(ei, 1, 2, reject_positives=False)
    with pytest.raises(ValueError, match="item id 1 >= num_items"):
        BPRSampler(ei, 1, 1)
    with pytest.raises(ValueError, match="'rank' must be in"):
        BPRSampler(ei, 1, 3, rank=2, world_size=2)
    with pytest.raises(ValueError, match="'num_negatives' must be positive"):
        BPRSampler(ei, 1, 3, num_negatives=0)
    assert 'num_negatives=1' in repr(BPRSampler(ei, 1, 3))


def test_argument_types_are_checked():
    ei = torch.tensor([[0, 1], [0, 1]])
    with pytest.raises(TypeError, match='float ids would be truncated'):
        BPRSampler(ei.float() + 0.5, 2, 3)
    with pytest.raises(TypeError, match="'num_users' must be an int"):
        BPRSampler(ei, 2.0, 3)
    with pytest.raises(TypeError, match="'batch_size' must be an int"):
        BPRSampler(ei, 2, 3, batch_size='8')


def test_near_full_user_gets_no_positive_negatives():
    # User 0 has every item but 7: rejection sampling alone leaves about a
    # quarter of its negatives on positives after 10 rounds; the exact
    # fallback draws from the non-positive items only.
    num_items = 40
    items = [i for i in range(num_items) if i != 7]
    ei = torch.tensor([[0] * len(items) + [1] * 6, items + list(range(6))])
    sampler = BPRSampler(ei, 2, num_items, num_negatives=20, batch_size=16)
    for users, _, neg in sampler:
        assert not sampler.is_positive(users.view(-1, 1).expand_as(neg),
                                       neg).any()
        assert bool((neg[users == 0] == 7).all())
    # Uniform over the user's non-positive items:
    draws = sampler._sample_non_positive(torch.ones(8000, dtype=torch.long),
                                         torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=num_items)
    assert counts[:6].sum() == 0 and counts[6:].min() > 150


def test_pinned_sequence():
    # The exact triples of the sampler for fixed seeds (pinned before the
    # issue-13 rewrite of `pyg_cerp.sampling`): the stream must not change.
    ei = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2, 3],
                       [0, 1, 4, 2, 3, 0, 1, 2, 3, 5]])
    s = BPRSampler(ei, 4, 6, num_negatives=2, batch_size=4, seed=3)
    s.set_epoch(2)
    assert [[t.tolist() for t in b] for b in s] == [
        [[0, 1, 1, 2], [1, 3, 2, 0], [[5, 2], [5, 5], [5, 0], [4, 5]]],
        [[0, 0, 2, 2], [4, 0, 2, 3], [[2, 5], [3, 5], [4, 4], [4, 5]]],
        [[2, 3], [1, 5], [[4, 5], [0, 3]]]]
    shard = BPRSampler(ei, 4, 6, num_negatives=2, batch_size=4,
                       seed=3).shard(1, 2)
    batches = list(shard)
    assert [[t.tolist() for t in b] for b in batches] == [
        [[1, 1], [3, 2], [[1, 5], [4, 5]]],
        [[2, 0], [3, 4], [[5, 5], [3, 3]]],
        [[3], [5], [[0, 1]]]]
    assert batches[0].global_batch[0].tolist() == [2, 1, 2, 1]
    ws = BPRSampler(ei, 4, 6, batch_size=3, seed=5, rank=1, world_size=3)
    assert [[t.tolist() for t in b] for b in ws] == [
        [[0, 1, 3], [0, 2, 5], [[5], [4], [2]]], [[0], [1], [[3]]]]
    # The exact fallback (max_rounds=0: every hit is drawn exactly):
    ei = torch.tensor([[0, 0, 0, 0, 1, 1], [0, 2, 4, 6, 0, 1]])
    s = BPRSampler(ei, 2, 8, num_negatives=3, batch_size=6, seed=1,
                   max_rounds=0)
    assert [t.tolist() for t in next(iter(s))] == [
        [1, 0, 0, 0, 1, 0], [0, 2, 4, 6, 1, 0],
        [[3, 3, 2], [5, 3, 7], [7, 1, 7], [7, 7, 7], [3, 4, 3], [3, 5, 5]]]
