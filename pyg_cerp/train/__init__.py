r"""The CERP training pipeline: pruning schedule, backbones, training loop
and the two-phase procedure."""

from .scheduler import (MaskSnapshot, PruningOutcome, PruningScheduler,
                        TargetNotReachedError, TargetNotReachedWarning)
from .recommender import (LightGCNRecommender, MLPRecommender, Recommender,
                          bpr_loss)
from .loop import (evaluate, make_optimizer, split_threshold_params,
                   train_epoch, train_step)
from .cerp import (CERPConfig, CERPRunner, Interactions, memory_stats,
                   run_cerp)
from .data import interactions_from_dataset, load_interactions, make_sampler
from .methods import (METHODS, ConvergedRunner, EarlyStopping, Method, Split,
                      build_embedding, fit, get_method, holdout_split)

__all__ = [
    'PruningScheduler',
    'MaskSnapshot',
    'PruningOutcome',
    'TargetNotReachedError',
    'TargetNotReachedWarning',
    'Recommender',
    'LightGCNRecommender',
    'MLPRecommender',
    'bpr_loss',
    'make_optimizer',
    'split_threshold_params',
    'train_step',
    'train_epoch',
    'evaluate',
    'CERPConfig',
    'CERPRunner',
    'Interactions',
    'memory_stats',
    'run_cerp',
    'load_interactions',
    'interactions_from_dataset',
    'make_sampler',
    'Method',
    'METHODS',
    'get_method',
    'build_embedding',
    'Split',
    'holdout_split',
    'EarlyStopping',
    'fit',
    'ConvergedRunner',
]
