import os
import os.path as osp

import pytest

_REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture(scope='session')
def data_root() -> str:
    r"""The folder holding ``<name>/raw/{train,test}.txt`` for the real
    datasets: ``$PYG_CERP_DATA``, else ``<repo>/../shared/data``."""
    root = os.environ.get('PYG_CERP_DATA')
    if root:
        if not osp.isdir(root):
            pytest.skip(f"PYG_CERP_DATA={root!r} is not a directory; set "
                        f"PYG_CERP_DATA to the folder that holds "
                        f"'gowalla/raw/train.txt'")
        return root
    fallback = osp.join(_REPO, '..', 'shared', 'data')
    if osp.isdir(fallback):
        return osp.abspath(fallback)
    pytest.skip("Real data not found: set PYG_CERP_DATA to the folder that "
                "holds 'gowalla/raw/train.txt' (e.g. "
                "PYG_CERP_DATA=../shared/data)")
