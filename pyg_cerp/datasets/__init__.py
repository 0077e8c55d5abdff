r"""Recommendation datasets in the LightGCN text format."""
from .lightgcn import (
    EDGE_TYPE,
    GOWALLA_CHECKSUMS,
    REV_EDGE_TYPE,
    YELP2020_CHECKSUMS,
    YELP2020_PR16_CHECKSUMS,
    ChecksumError,
    Gowalla,
    LightGCNDataset,
    Yelp2020,
    count_train_test_overlap,
    file_hashes,
    load_lightgcn_split,
    read_lightgcn_file,
    verify_file,
)

__all__ = [
    'LightGCNDataset',
    'Gowalla',
    'Yelp2020',
    'ChecksumError',
    'load_lightgcn_split',
    'read_lightgcn_file',
    'count_train_test_overlap',
    'file_hashes',
    'verify_file',
    'EDGE_TYPE',
    'REV_EDGE_TYPE',
    'GOWALLA_CHECKSUMS',
    'YELP2020_CHECKSUMS',
    'YELP2020_PR16_CHECKSUMS',
]
