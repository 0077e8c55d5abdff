import os.path as osp

import pytest
import torch

from pyg_cerp.datasets import (
    EDGE_TYPE,
    REV_EDGE_TYPE,
    YELP2020_PR16_CHECKSUMS,
    Gowalla,
    LightGCNDataset,
    count_train_test_overlap,
)

pytestmark = pytest.mark.data


@pytest.fixture(scope='module')
def gowalla(data_root, tmp_path_factory):
    if not osp.exists(osp.join(data_root, 'gowalla', 'raw', 'train.txt')):
        pytest.skip(f"'gowalla/raw/train.txt' not found in {data_root!r}; "
                    f"set PYG_CERP_DATA to the folder holding it")
    processed = str(tmp_path_factory.mktemp('gowalla_processed'))
    return Gowalla(osp.join(data_root, 'gowalla'), processed_dir=processed,
                   log=False)


def test_gowalla_counts(gowalla):
    data = gowalla[0]
    assert gowalla.num_users == data['user'].num_nodes == 29858
    assert gowalla.num_items == data['item'].num_nodes == 40981
    assert data[EDGE_TYPE].edge_index.size(1) == 810128
    assert data[EDGE_TYPE].edge_label_index.size(1) == 217242
    assert data[REV_EDGE_TYPE].edge_index.size(1) == 810128
    # Every user has train and test items; every test item is a train item:
    ei, eli = data[EDGE_TYPE].edge_index, data[EDGE_TYPE].edge_label_index
    assert torch.unique(ei[0]).numel() == 29858
    assert torch.unique(eli[0]).numel() == 29858
    assert torch.isin(torch.unique(eli[1]), torch.unique(ei[1])).all()


def test_gowalla_train_test_disjoint(gowalla):
    assert count_train_test_overlap(gowalla[0]) == 0


def test_gowalla_adjacency(gowalla):
    adj = gowalla.adjacency()
    assert adj is gowalla.adjacency()  # cached
    n = 29858 + 40981
    assert adj.layout == torch.sparse_csr and adj.shape == (n, n)
    assert adj.values().numel() == 2 * 810128
    assert torch.isfinite(adj.values()).all()


def test_yelp2020_pr16_counts(data_root, tmp_path):
    name = 'yelp2020-lightgcn-pr16'
    if not osp.exists(osp.join(data_root, name, 'raw', 'train.txt')):
        pytest.skip(f"'{name}/raw/train.txt' not found in {data_root!r}")
    ds = LightGCNDataset(data_root, name, checksums=YELP2020_PR16_CHECKSUMS,
                         processed_dir=str(tmp_path), log=False)
    data = ds[0]
    assert ds.num_users == 24385 and ds.num_items == 20092
    assert data[EDGE_TYPE].edge_index.size(1) == 464404
    assert data[EDGE_TYPE].edge_label_index.size(1) == 129792
    train_items = torch.unique(data[EDGE_TYPE].edge_index[1])
    test_items = torch.unique(data[EDGE_TYPE].edge_label_index[1])
    assert (~torch.isin(test_items, train_items)).sum() == 167  # cold items
    assert count_train_test_overlap(data) == 0
