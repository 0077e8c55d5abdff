r"""The CERP training stack: the pruning schedule, the backbones, one
training loop and evaluation, and one runner whose methods (full, CERP, its
ablations, the baselines) are configurations of typed stages."""
from .scheduler import (MaskSnapshot, PruningOutcome, PruningScheduler,
                        TargetNotReachedError, TargetNotReachedWarning)
from .recommender import (LightGCNRecommender, MLPRecommender, Recommender,
                          bpr_loss)
from .loop import (EarlyStopping, FitResult, evaluate, fit, make_optimizer,
                   split_threshold_params, train_epoch, train_step)
from .config import CERPConfig
from .data import (Interactions, Split, interactions_from_dataset,
                   load_interactions, load_split, make_sampler)
from .methods import METHODS, Method, build_embedding, get_method
from .runner import CERPRunner, ResumeError, Stage, memory_stats, run_cerp
from .converged import ConvergedRunner
from .distill import RankingDistillation, teacher_top_items

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
    'Stage',
    'ResumeError',
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
    'load_split',
    'EarlyStopping',
    'FitResult',
    'fit',
    'ConvergedRunner',
    'RankingDistillation',
    'teacher_top_items',
]
