r"""Recommendation datasets in the LightGCN text format."""
from .split import (EDGE_TYPE, REV_EDGE_TYPE, ChecksumError,
                    count_train_test_overlap, file_hashes, load_lightgcn_split,
                    read_lightgcn_file, user_holdout_split, verify_file,
                    verify_files)
from .lightgcn import (GOWALLA_CHECKSUMS, KNOWN_CHECKSUMS,
                       VALIDATION_CHECKSUMS, YELP2020_CHECKSUMS,
                       YELP2020_PR16_CHECKSUMS, Gowalla, LightGCNDataset,
                       Yelp2020, open_folder, validation_split)

__all__ = [
    'LightGCNDataset',
    'Gowalla',
    'Yelp2020',
    'open_folder',
    'validation_split',
    'load_lightgcn_split',
    'read_lightgcn_file',
    'user_holdout_split',
    'count_train_test_overlap',
    'ChecksumError',
    'file_hashes',
    'verify_file',
    'verify_files',
    'EDGE_TYPE',
    'REV_EDGE_TYPE',
    'GOWALLA_CHECKSUMS',
    'YELP2020_CHECKSUMS',
    'YELP2020_PR16_CHECKSUMS',
    'KNOWN_CHECKSUMS',
    'VALIDATION_CHECKSUMS',
]
