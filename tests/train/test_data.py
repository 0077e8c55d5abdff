import os.path as osp

import pytest
import torch

from pyg_cerp.datasets import read_lightgcn_file, user_holdout_split
from pyg_cerp.train import Interactions, load_interactions, load_split


def test_interactions_subset_keeps_the_small_ids():
    ei = torch.tensor([[0, 1, 2, 3], [5, 1, 0, 2]])
    data = Interactions(ei, ei.flip(0), 4, 6).subset(3, 3)
    assert data.train.tolist() == [[1, 2], [1, 0]]
    assert data.test.tolist() == [[1, 0], [1, 2]]
    assert (data.num_users, data.num_items) == (3, 3)


def test_load_split_holds_out_of_train_when_there_is_no_valid_file(
        tmp_path, toy_split):
    folder = toy_split(tmp_path / 'toy')
    split = load_split(folder, valid_fraction=0.34, seed=1)
    data = load_interactions(folder)
    assert torch.equal(split.test, data.test)
    assert (split.num_users, split.num_items) == (8, 12)
    # The hold-out of user_holdout_split, with its rounding and seed.
    train, valid = user_holdout_split(data.train, 8, 0.34, 1)
    assert torch.equal(split.train, train) and torch.equal(split.valid, valid)
    assert split.valid.size(1) == 8 * 2
    assert split.known.size(1) == data.train.size(1)
    # A subset is taken before the hold-out: every kept user keeps a pair.
    small = load_split(folder, valid_fraction=0.34, seed=1, subset=(5, 9))
    assert (small.num_users, small.num_items) == (5, 9)
    for ei in (small.train, small.valid, small.test):
        assert int(ei[0].max()) < 5 and int(ei[1].max()) < 9
    assert torch.equal(torch.unique(small.train[0]), torch.arange(5))


def test_load_split_reads_a_published_valid_file(tmp_path, toy_split):
    folder = toy_split(tmp_path / 'pub', valid=True)
    split = load_split(folder)
    assert split.valid.size(1) == 8 and split.train.size(1) == 8 * 6
    assert set(map(tuple, split.valid.t().tolist())) == {
        (u, (u + 8) % 12) for u in range(8)}
    with pytest.raises(ValueError, match='ratio'):
        load_split(toy_split(tmp_path / 'bad'), valid_fraction=1.)


@pytest.mark.data
def test_load_split_of_gowalla_lightgcnpp(data_root):
    # The converged benchmark's split: the pairs of train.txt sorted by
    # (user, item), as the dataset stores them (the sampler, and so every
    # committed number, depends on this order), valid.txt, test.txt.
    folder = osp.join(data_root, 'gowalla-lightgcnpp')
    split = load_split(folder)
    assert torch.equal(split.train, load_interactions(folder).train)
    for ei, name in ((split.train, 'train'), (split.valid, 'valid')):
        pairs = read_lightgcn_file(osp.join(folder, 'raw', f'{name}.txt'))[0]
        key = pairs[0] * split.num_items + pairs[1]
        assert torch.equal(ei, pairs[:, torch.argsort(key)])
    assert split.test.size(1) == 217242
    assert (split.num_users, split.num_items) == (29858, 40981)
    small = load_split(folder, subset=(6000, 8000))
    assert (small.train.size(1), small.valid.size(1)) == (90655, 12137)
