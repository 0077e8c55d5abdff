r"""The former home of :class:`CERPConfig` and :class:`CERPRunner`, now in
:mod:`pyg_cerp.train.config` and :mod:`pyg_cerp.train.runner`."""
from pyg_cerp.train.config import (FAITHFUL_GAMMA, OFFICIAL_EPS,
                                   OFFICIAL_GROUPS, OFFICIAL_WEIGHT_DECAY,
                                   PRUNE_BATCH_SIZE, PRUNE_LR, CERPConfig)
from pyg_cerp.train.data import Interactions
from pyg_cerp.train.checkpoint import DATA_KEYS, data_identity
from pyg_cerp.train.runner import (CERPRunner, ResumeError,
                                   StopRequested,
                                   memory_stats, run_cerp, target_key)

__all__ = ['CERPConfig', 'CERPRunner', 'Interactions', 'ResumeError',
           'StopRequested', 'memory_stats', 'run_cerp', 'target_key',
           'data_identity', 'DATA_KEYS', 'FAITHFUL_GAMMA', 'OFFICIAL_EPS',
           'OFFICIAL_GROUPS', 'OFFICIAL_WEIGHT_DECAY', 'PRUNE_BATCH_SIZE',
           'PRUNE_LR']
