r"""Validation splits: the published one where a dataset has it, a seeded
per-user hold-out of the training pairs otherwise. Epochs and
hyper-parameters are chosen on these, never on the test split."""
import os.path as osp
from typing import Dict, Tuple

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from pyg_cerp.datasets.lightgcn import (EDGE_TYPE, ChecksumError,
                                        load_lightgcn_split, open_folder,
                                        verify_file)

#: Checksums of published validation splits (``raw/{train,valid}.txt``),
#: by folder name; see ``shared/data/README.md``.
VALIDATION_CHECKSUMS: Dict[str, Dict[str, Dict[str, str]]] = {
    'gowalla-lightgcnpp': {
        'train.txt': {
            'sha256': 'd47e01d060624f389956c0b2f89a1ed8c453ea158631cd2b5320c'
                      '241f3e1a073'
        },
        'valid.txt': {
            'sha256': 'ddc22c1cd9a7d14fd5cd0c98b1473b614f4323038fef74ae0d28c'
                      'c9c92a08ba2'
        },
    },
}


def user_holdout_split(edge_index: Tensor, num_users: int,
                       ratio: float = 0.1,
                       seed: int = 0) -> Tuple[Tensor, Tensor]:
    r"""Splits (user, item) pairs into training and validation pairs: for
    every user with :math:`n_u \geq 2` pairs, a seeded random
    :math:`\max(1, \lfloor \textrm{ratio} \cdot n_u \rceil)` of them (at most
    :math:`n_u - 1`) are held out, so every user keeps a training pair.

    Args:
        edge_index (torch.Tensor): The pairs :obj:`[2, E]` (local ids).
        num_users (int): :math:`N_U`.
        ratio (float, optional): The held-out fraction per user, in
            :math:`(0, 1)`. (default: :obj:`0.1`)
        seed (int, optional): The seed. (default: :obj:`0`)

    Returns:
        The training and the validation pairs, both sorted by (user, item).
    """
    if not 0. < float(ratio) < 1.:
        raise ValueError(f"'ratio' must be in (0, 1) (got {ratio})")
    gen = torch.Generator().manual_seed(int(seed))
    user = edge_index[0]
    # Random order within each user: sort by (user, random key).
    key = torch.rand(user.numel(), generator=gen, dtype=torch.double)
    order = torch.argsort(user.double() * 2. + key)
    counts = torch.bincount(user, minlength=num_users)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(user.numel()) - start[user[order]]
    held = (counts.double() * ratio).round().clamp_min(1).long()
    held = torch.minimum(held, counts - 1)
    valid = torch.zeros(user.numel(), dtype=torch.bool)
    valid[order] = rank < held[user[order]]

    return _sorted(edge_index[:, ~valid]), _sorted(edge_index[:, valid])


def _sorted(edge_index: Tensor) -> Tensor:
    if edge_index.size(1) == 0:
        return edge_index
    key = edge_index[0] * (int(edge_index[1].max()) + 1) + edge_index[1]
    return edge_index[:, torch.argsort(key)]


def validation_split(folder: str, ratio: float = 0.1, seed: int = 0,
                     verify_checksums: bool = True) -> HeteroData:
    r"""The validation split of the dataset in :obj:`folder`, as the
    :class:`~torch_geometric.data.HeteroData` of
    :func:`~pyg_cerp.datasets.load_lightgcn_split`, with the validation
    pairs in place of the test pairs (:obj:`edge_label_index`):

    * if :obj:`folder/raw/valid.txt` exists (a published split such as
      :obj:`gowalla-lightgcnpp`), :obj:`train.txt` against :obj:`valid.txt`,
      checked against :obj:`VALIDATION_CHECKSUMS` for a known folder name;
    * otherwise a :func:`user_holdout_split` of the training pairs of
      :func:`~pyg_cerp.datasets.open_folder` (users and items keep the ids
      and counts of the full dataset).

    Args:
        folder (str): The dataset folder.
        ratio (float, optional): Held-out fraction per user (hold-out
            only). (default: :obj:`0.1`)
        seed (int, optional): Seed of the hold-out. (default: :obj:`0`)
        verify_checksums (bool, optional): Check the files of a known split.
            (default: :obj:`True`)
    """
    raw = osp.join(folder, 'raw')
    valid_path = osp.join(raw, 'valid.txt')
    if osp.isfile(valid_path):
        known = VALIDATION_CHECKSUMS.get(osp.basename(osp.normpath(folder)))
        if verify_checksums and known is not None:
            for fname, expected in known.items():
                try:
                    verify_file(osp.join(raw, fname), expected)
                except ChecksumError as e:
                    raise ChecksumError(
                        f'{e}. Pass verify_checksums=False to use the file '
                        f'anyway.') from None
        return load_lightgcn_split(osp.join(raw, 'train.txt'), valid_path)
    data = open_folder(folder, verify_checksums=verify_checksums)[0]
    store = data[EDGE_TYPE]
    train, valid = user_holdout_split(store.edge_index,
                                      int(data['user'].num_nodes), ratio,
                                      seed)
    out = HeteroData()
    out['user'].num_nodes = data['user'].num_nodes
    out['item'].num_nodes = data['item'].num_nodes
    out[EDGE_TYPE].edge_index = train
    out[EDGE_TYPE].edge_label_index = valid
    out['item', 'rated_by', 'user'].edge_index = train.flip(0)
    return out
