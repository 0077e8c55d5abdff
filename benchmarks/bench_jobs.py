r"""What ``benchmarks/memory_vs_ndcg.py`` runs: the methods of each profile,
the gamma schedules, the quick and full profiles (:class:`Profile`), the
resolution of their hyper-parameters (:func:`resolve_hyper`) and the jobs
of a benchmark (:class:`Job`, :func:`make_jobs`)."""
import argparse
import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

METHODS = ('full', 'cerp', 'cerp-noreg', 'pep', 'qr', 'hash')
#: The methods of the converged profile (pyg_cerp.train.methods.METHODS).
CONVERGED_METHODS = ('full', 'cerp', 'cerp-noreg', 'cerp-ft', 'cerp-mul',
                     'qr-mul', 'qr-add', 'hash', 'pep', 'magnitude')
#: Converged-profile methods run only when named (--budget-unit bytes).
HYBRID_METHODS = ('cerp-mul-hybrid', 'qr-mul-hybrid')
ALL_METHODS = tuple(dict.fromkeys(METHODS + CONVERGED_METHODS +
                                  HYBRID_METHODS))

#: Gamma schedules: name -> (gamma_decay, gamma_decay_every).
GAMMA_SCHEDULES = {
    'halve1': (0.5, 1),  # halve every epoch (the pipeline default)
    'halve2': (0.5, 2),  # halve every 2 epochs
    'const': (1.0, 1),  # constant
}


@dataclasses.dataclass
class Profile:
    r"""The training schedule shared by all methods. Hyper-parameters left at
    :obj:`None` take the pipeline's defaults
    (:class:`pyg_cerp.train.CERPConfig`), unless given on the command line.

    Args:
        name (str): :obj:`'quick'` or :obj:`'full'` (with :obj:`*` when
            overridden on the command line).
        prune_epochs (int, optional): Epoch budget of phase 1 (CERP, PEP);
            phase 1 stops as soon as every budget is reached.
        retrain_epochs (int, optional): Epochs of phase 2 per budget, and of
            the fixed-size methods.
        eval_users (int): Evaluate on this many test users (a fixed random
            subset, the same for every method and seed); :obj:`0`: all.
        mlp_hidden (Tuple[int, ...]): Hidden sizes of the MLP scorer.
        batch_size (int, optional): Positive pairs per step.
        lr (float, optional): Adam learning rate of the values.
        threshold_lr (float, optional): Adam learning rate of the
            thresholds (the pruning speed).
    """
    name: str
    prune_epochs: Optional[int]
    retrain_epochs: Optional[int]
    eval_users: int
    mlp_hidden: Tuple[int, ...]
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    threshold_lr: Optional[float] = None


PROFILES = {
    # About 30 minutes for both backbones on Gowalla on a shared 2-core CPU
    # (two processes, one thread each): few, large-batch epochs (a LightGCN
    # step costs the same full-graph propagation whatever the batch size),
    # an evaluation subset, a one-layer MLP (full ranking with a two-layer
    # MLP over 41k items costs ~60x more per user).
    'quick': Profile('quick', prune_epochs=3, retrain_epochs=1,
                     eval_users=2000, mlp_hidden=(64, ), batch_size=32768,
                     lr=1e-2),
    # The pipeline's default schedule, every test user, the default MLP.
    'full': Profile('full', prune_epochs=None, retrain_epochs=None,
                    eval_users=0, mlp_hidden=(128, 64)),
}

#: Hyper-parameters resolved as command line > profile > pipeline default.
HYPER = ('prune_epochs', 'retrain_epochs', 'dim', 'bucket_size',
         'threshold_init', 'gamma_init', 'lr', 'threshold_lr', 'batch_size',
         'num_negatives')


def resolve_hyper(args: argparse.Namespace, profile: Profile,
                  defaults: Any) -> Dict[str, Any]:
    r"""The training hyper-parameters: the command line, else the profile,
    else the pipeline's :class:`CERPConfig` default.

    The threshold learning rate sets the pruning speed (the threshold logits
    rise by up to about that much per Adam step), and the pipeline's default
    is tuned for its :obj:`prune_epochs` at its :obj:`batch_size`. If it is
    taken from the pipeline while the profile prunes for fewer (more)
    optimisation steps, it is scaled by the ratio of the step counts,
    :math:`(P_0 / B_0) / (P / B)` for prune epochs :math:`P` and batch size
    :math:`B`, so that the thresholds can rise as far in total."""
    out = {}
    for key in HYPER:
        value = getattr(args, key, None)
        if value is None:
            value = getattr(profile, key, None)
        if value is None:
            value = getattr(defaults, key)
        out[key] = value
    if getattr(args, 'threshold_lr', None) is None and \
            profile.threshold_lr is None and out['prune_epochs']:
        steps0 = defaults.prune_epochs / defaults.batch_size
        steps = out['prune_epochs'] / out['batch_size']
        out['threshold_lr'] = defaults.threshold_lr * steps0 / steps
    return out


# Jobs ########################################################################

@dataclasses.dataclass
class Job:
    r"""One run of the pipeline: a method, its budgets (several for the
    pruning methods, which reach every budget in one phase-1 run), a seed and,
    for CERP, a gamma schedule."""
    method: str
    budgets: Tuple[float, ...]
    seed: int
    gamma_schedule: str = ''

    @property
    def label(self) -> str:
        g = f'[{self.gamma_schedule}]' if self.gamma_schedule else ''
        b = ','.join(f'{x:g}' for x in self.budgets)
        return f'{self.method}{g}@{b} seed {self.seed}'


def make_jobs(methods: Sequence[str], budgets: Sequence[float],
              seeds: Sequence[int],
              gamma_schedules: Sequence[str] = ()) -> List[Job]:
    r"""The jobs of a benchmark, cheapest methods first within a seed."""
    order = {m: i for i, m in enumerate(('full', 'qr', 'hash', 'cerp',
                                         'cerp-noreg', 'pep'))}
    jobs: List[Job] = []
    budgets = tuple(sorted(budgets, reverse=True))
    for seed in seeds:
        for method in sorted(methods, key=order.__getitem__):
            if method == 'full':
                jobs.append(Job('full', (1.0, ), seed))
            elif method in ('qr', 'hash'):
                jobs.extend(Job(method, (b, ), seed) for b in budgets)
            elif method == 'cerp' and gamma_schedules:
                jobs.extend(Job('cerp', budgets, seed, g)
                            for g in gamma_schedules)
            else:
                jobs.append(Job(method, budgets, seed))
    return jobs
