r"""The splits the training stack consumes and the glue to the datasets and
the sampler."""
from typing import NamedTuple, Tuple

import torch
from torch import Tensor

from pyg_cerp.datasets import EDGE_TYPE, LightGCNDataset, open_folder
from pyg_cerp.sampling import BPRSampler


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


def holdout_split(train: Tensor, num_users: int, fraction: float = 0.1,
                  seed: int = 0) -> Tuple[Tensor, Tensor]:
    r"""A seeded per-user split of :obj:`train` into (train, valid): a user
    with :math:`k \geq 2` pairs gives :math:`\min(k - 1, \lceil
    \text{fraction} \cdot k \rceil)` random pairs to validation.

    Args:
        train (torch.Tensor): The pairs :obj:`[2, E]`.
        num_users (int): :math:`N_U`.
        fraction (float, optional): The held-out share. (default: :obj:`0.1`)
        seed (int, optional): The seed. (default: :obj:`0`)
    """
    if not 0. < fraction < 1.:
        raise ValueError(f"'fraction' must be in (0, 1) (got {fraction})")
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(train.size(1), generator=gen)
    users = train[0, perm]
    order = torch.sort(users, stable=True).indices  # Random within user.
    perm, users = perm[order], users[order]
    deg = torch.bincount(users, minlength=num_users)
    start = torch.cumsum(deg, 0) - deg
    rank = torch.arange(users.numel()) - start[users]
    take = torch.minimum(deg - 1, torch.ceil(fraction * deg.double()).long())
    held = rank < take[users]
    return train[:, perm[~held]], train[:, perm[held]]


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
