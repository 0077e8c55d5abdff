r"""The names users look for are where they look (issue 13)."""
import pyg_cerp
import pyg_cerp.train


def test_top_level_names():
    from pyg_cerp import CERPConfig, CERPRunner, PruningScheduler
    assert PruningScheduler is pyg_cerp.train.PruningScheduler
    assert CERPRunner is pyg_cerp.train.CERPRunner
    assert CERPConfig is pyg_cerp.train.CERPConfig
    for name in pyg_cerp.__all__:
        assert hasattr(pyg_cerp, name), name
