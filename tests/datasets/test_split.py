import os

import pytest
import torch

from pyg_cerp.datasets import (EDGE_TYPE, published_valid_file,
                               user_holdout_split, validation_split)


def test_user_holdout_split_is_seeded_per_user_and_disjoint():
    gen = torch.Generator().manual_seed(0)
    user = torch.randint(0, 30, (600, ), generator=gen)
    item = torch.randint(0, 50, (600, ), generator=gen)
    key = torch.unique(user * 50 + item)
    edge_index = torch.stack([key // 50, key % 50])
    train, valid = user_holdout_split(edge_index, 30, ratio=0.2, seed=3)
    # Disjoint, together the input, every user keeps a training pair.
    both = torch.cat([train, valid], 1)
    assert both.size(1) == edge_index.size(1)
    assert torch.equal(torch.unique(both[0] * 50 + both[1]), key)
    counts = torch.bincount(edge_index[0], minlength=30)
    held = torch.bincount(valid[0], minlength=30)
    assert torch.equal(torch.bincount(train[0], minlength=30) > 0, counts > 0)
    expected = torch.minimum((counts * 0.2).round().clamp_min(1).long(),
                             counts - 1)
    assert torch.equal(held, expected.clamp_min(0))
    # Seeded: the same seed gives the same split, another seed another one.
    again = user_holdout_split(edge_index, 30, ratio=0.2, seed=3)
    assert torch.equal(again[1], valid)
    other = user_holdout_split(edge_index, 30, ratio=0.2, seed=4)
    assert not torch.equal(other[1], valid)
    with pytest.raises(ValueError, match='ratio'):
        user_holdout_split(edge_index, 30, ratio=1.)


def test_validation_split_holds_out_of_train(tmp_path, toy_split):
    data = validation_split(toy_split(tmp_path / 'toy'), ratio=0.34, seed=0)
    store = data[EDGE_TYPE]
    assert store.edge_index.size(1) == 8 * 4
    assert store.edge_label_index.size(1) == 8 * 2
    assert data['item'].num_nodes == 12
    # No test pair leaks into either part.
    test = {(u, (u + 7) % 12) for u in range(8)}
    pairs = set(map(tuple, torch.cat([store.edge_index,
                                      store.edge_label_index], 1).t().tolist()))
    assert not pairs & test


def test_published_valid_file_sits_beside_train(tmp_path, toy_split):
    assert published_valid_file(toy_split(tmp_path / 'none')) is None
    folder = toy_split(tmp_path / 'pub', valid=True)
    assert published_valid_file(folder) == str(tmp_path / 'pub' / 'raw' /
                                               'valid.txt')
    # Beside train.txt only: a valid.txt next to raw/ is not the split's.
    folder = toy_split(tmp_path / 'beside')
    (tmp_path / 'beside' / 'valid.txt').write_text('0 1\n')
    assert published_valid_file(folder) is None
    flat = tmp_path / 'flat'
    flat.mkdir()
    for name in ('train.txt', 'valid.txt'):
        (flat / name).write_text('0 1\n')
    assert published_valid_file(str(flat)) == str(flat / 'valid.txt')


@pytest.mark.data
def test_published_gowalla_validation_split(data_root):
    data = validation_split(os.path.join(data_root, 'gowalla-lightgcnpp'))
    store = data[EDGE_TYPE]
    assert store.edge_index.size(1) == 719_081
    assert store.edge_label_index.size(1) == 91_047
    assert data['user'].num_nodes == 29_858


def test_user_holdout_split_pinned():
    # Pinned before the issue-13 rewrite: the same seed, the same split.
    gen = torch.Generator().manual_seed(0)
    torch.randn(9, 4, generator=gen), torch.randn(15, 4, generator=gen)
    key = torch.randperm(9 * 15, generator=gen)[:60].sort()[0]
    _, valid = user_holdout_split(torch.stack([key // 15, key % 15]), 9,
                                  0.3, seed=2)
    assert valid.tolist() == [
        [0, 0, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 6, 7, 7, 7, 8],
        [4, 13, 6, 0, 9, 0, 2, 1, 10, 0, 2, 2, 3, 6, 3, 6, 12, 0]]
