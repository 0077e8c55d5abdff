r"""The splits the training stack consumes and the glue to the datasets and
the sampler."""
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from pyg_cerp.datasets import (EDGE_TYPE, LightGCNDataset, open_folder,
                               published_valid_file, user_holdout_split,
                               validation_split)
from pyg_cerp.sampling import BPRSampler


def _keep(edge_index: Tensor, max_users: int, max_items: int) -> Tensor:
    return edge_index[:, (edge_index[0] < max_users) &
                      (edge_index[1] < max_items)]


class Interactions(NamedTuple):
    r"""A user-item split.

    Args:
        train (torch.Tensor): Training (user, item) pairs :obj:`[2, E]`.
        test (torch.Tensor): Test pairs :obj:`[2, E']`.
        num_users (int): :math:`N_U`.
        num_items (int): :math:`N_I`.
    """
    train: Tensor
    test: Tensor
    num_users: int
    num_items: int

    def subset(self, max_users: int, max_items: int) -> 'Interactions':
        r"""The pairs of users :obj:`< max_users` and items
        :obj:`< max_items`."""
        return Interactions(_keep(self.train, max_users, max_items),
                            _keep(self.test, max_users, max_items),
                            min(max_users, self.num_users),
                            min(max_items, self.num_items))


class Split(NamedTuple):
    r"""A train / validation / test split.

    Args:
        train (torch.Tensor): The pairs trained on :obj:`[2, E]`.
        valid (torch.Tensor): Validation pairs (model selection only).
        test (torch.Tensor): Test pairs (evaluated once per chosen model).
        num_users (int): :math:`N_U`.
        num_items (int): :math:`N_I`.
    """
    train: Tensor
    valid: Tensor
    test: Tensor
    num_users: int
    num_items: int

    @property
    def known(self) -> Tensor:
        r"""Train and validation pairs: masked from the test ranking."""
        return torch.cat([self.train, self.valid], dim=1)


def interactions_from_dataset(dataset: LightGCNDataset) -> Interactions:
    r"""The split of a :class:`~pyg_cerp.datasets.LightGCNDataset`.

    Args:
        dataset (LightGCNDataset): The dataset.
    """
    data = dataset[0]
    store = data[EDGE_TYPE]
    return Interactions(store.edge_index, store.edge_label_index,
                        int(data['user'].num_nodes),
                        int(data['item'].num_nodes))


def load_interactions(folder: str,
                      verify_checksums: bool = True) -> Interactions:
    r"""Loads the LightGCN-format split in :obj:`folder` (:obj:`raw/` or the
    text files directly) through :func:`pyg_cerp.datasets.open_folder`
    (validated and, for a known split, checked against its checksums).

    Args:
        folder (str): The dataset folder.
        verify_checksums (bool, optional): Check the files of a known split.
            (default: :obj:`True`)
    """
    return interactions_from_dataset(
        open_folder(folder, verify_checksums=verify_checksums))


def load_split(folder: str, valid_fraction: float = 0.1, seed: int = 0,
               subset: Optional[Sequence[int]] = None,
               verify_checksums: bool = True) -> Split:
    r"""The train / validation / test :class:`Split` of the dataset in
    :obj:`folder`: its test pairs (:func:`load_interactions`) and the
    validation pairs of :func:`~pyg_cerp.datasets.validation_split` (the
    dataset's own :obj:`valid.txt` where it has one, *e.g.*
    :obj:`gowalla-lightgcnpp`, else a seeded
    :func:`~pyg_cerp.datasets.user_holdout_split` of the training pairs).

    Args:
        folder (str): The dataset folder.
        valid_fraction (float, optional): The held-out share per user
            (hold-out only). (default: :obj:`0.1`)
        seed (int, optional): The seed of the hold-out. (default: :obj:`0`)
        subset (Sequence[int], optional): :obj:`(U, I)`: keep users
            :obj:`< U` and items :obj:`< I` only (before the hold-out).
            (default: :obj:`None`)
        verify_checksums (bool, optional): Check the files of a known split.
            (default: :obj:`True`)
    """
    data = load_interactions(folder, verify_checksums)
    if subset is not None:
        data = data.subset(*subset)
    if published_valid_file(folder) is not None:
        store = validation_split(folder,
                                 verify_checksums=verify_checksums)[EDGE_TYPE]
        train = _keep(store.edge_index, data.num_users, data.num_items)
        valid = _keep(store.edge_label_index, data.num_users, data.num_items)
    else:
        train, valid = user_holdout_split(data.train, data.num_users,
                                          valid_fraction, seed)
    return Split(train, valid, data.test, data.num_users, data.num_items)


def make_sampler(edge_index: Tensor, num_users: int, num_items: int,
                 num_negatives: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> BPRSampler:
    r"""The training :class:`~pyg_cerp.sampling.BPRSampler` (true positives
    rejected as negatives).

    Args:
        edge_index (torch.Tensor): Training pairs :obj:`[2, E]`.
        num_users (int): :math:`N_U`.
        num_items (int): :math:`N_I`.
        num_negatives (int): Negatives per positive.
        batch_size (int): Positives per batch.
        seed (int): The sampler's seed.
        rank (int, optional): This process' rank. (default: :obj:`0`)
        world_size (int, optional): The number of processes.
            (default: :obj:`1`)
    """
    return BPRSampler(edge_index, num_users, num_items,
                      num_negatives=num_negatives, batch_size=batch_size,
                      seed=seed, reject_positives=True, rank=rank,
                      world_size=world_size)
