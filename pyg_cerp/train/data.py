r"""Glue between the datasets/sampler and the training loop."""
from torch import Tensor

from pyg_cerp.datasets import EDGE_TYPE, LightGCNDataset, open_folder
from pyg_cerp.sampling import BPRSampler
from pyg_cerp.train.cerp import Interactions


def interactions_from_dataset(dataset: LightGCNDataset) -> Interactions:
    r"""The split of a :class:`~pyg_cerp.datasets.LightGCNDataset` as
    :class:`Interactions`.

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
    r"""Loads the LightGCN-format split in :obj:`folder` (which holds
    :obj:`raw/{train,test}.txt` or the two text files directly) as
    :class:`Interactions`, through the dataset classes
    (:func:`pyg_cerp.datasets.open_folder`): parsed and validated by
    :func:`pyg_cerp.datasets.load_lightgcn_split` and, for a known split
    (*e.g.* a folder named :obj:`gowalla`), checked against its checksums.

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
    r"""The training loop's :class:`~pyg_cerp.sampling.BPRSampler` (true
    positives rejected as negatives).

    Args:
        edge_index (torch.Tensor): Training (user, item) pairs :obj:`[2, E]`.
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
