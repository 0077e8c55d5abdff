r"""Memory vs. NDCG for CERP and its baselines (issue 5).

Trains every method at every memory budget on one dataset and backbone
(LightGCN, the MLP scorer, or both) through the CERP pipeline
(:class:`pyg_cerp.train.CERPRunner`: the same sampler, optimiser, epochs and
full-ranking evaluation for every method) and writes, per backbone,

* ``<out>/<dataset>_<backbone>[_<tag>].csv``: one row per (method, budget,
  seed), written as soon as it is known (a crash loses at most the running
  job; a rerun with the same arguments skips the finished ones);
* ``<out>/<dataset>_<backbone>[_<tag>].md``: the table, the best method per
  budget, diagnostics (overlap, hash balance) and the seed spread;
* ``<out>/<dataset>_<backbone>[_<tag>].png``: NDCG@20 against stored bytes
  (log x), one line per method, the full table as a horizontal reference.

Methods (``--methods``):

* ``full``: :class:`torch.nn.Embedding` (as
  :class:`~pyg_cerp.nn.baselines.FullEmbedding`), one row, budget 1;
* ``cerp``: :class:`~pyg_cerp.nn.CompositionalEmbedding`, pruned to every
  budget in one phase-1 run, then retrained per budget from the initial
  weights with frozen masks (two-phase CERP);
* ``cerp-noreg``: the same with :math:`\gamma = 0` (no complementarity
  regulariser);
* ``pep``: :class:`~pyg_cerp.nn.baselines.PEPEmbedding`, the same two
  phases on the full table;
* ``qr``: :class:`~pyg_cerp.nn.baselines.QREmbedding` sized to each budget;
* ``hash``: :class:`~pyg_cerp.nn.baselines.HashEmbedding` (universal hash)
  sized to each budget.

Fixed-size methods (``full``, ``qr``, ``hash``) train for as many epochs as
the pruning methods *retrain* (the final model of two-phase CERP/PEP is
trained for ``retrain_epochs`` from its initial weights); the pruning epochs
are reported separately (``prune_epochs``, ``target_epoch``).

The ``budget`` is a fraction of the :math:`N \times d` values of the full
table (non-zeros for the pruned methods, parameters for QR/hash);
``bytes`` is the stored size (see :mod:`pyg_cerp.memory`).

Profile ``converged`` (``--profile converged``, :func:`run_converged`):
every model is trained until validation NDCG@20 stops improving
(``--patience``, ``--max-epochs``; validation = the dataset's ``valid.txt``,
*e.g.* ``gowalla-lightgcnpp``, else a seeded per-user holdout of train),
the best validation epoch is tested once, CERP's ``b`` is swept per budget
(``--bucket-ratios``, at least 3) and selected on validation, and each
finished method x budget x seed row is appended to
``<dataset>_<backbone>_converged[_<tag>].csv`` at once (rows already there
are skipped on restart). Its methods are those of
:mod:`pyg_cerp.train.methods`: ``full, cerp, cerp-noreg, qr-mul, qr-add,
hash, pep, magnitude``. ``--device cuda`` where available; ``--mlp-preset
official`` for the official MLP scorer (a GPU for full ranking).

Byte budgets (``--profile converged --budget-unit bytes``): the budgets are
fractions of the full table's float32 bytes :math:`4Nd`, and every method
(the full table included) is trained and stored at each of ``--precisions``
(``float32``, ``float16``, ``int8`` with per-row scales; fake quantisation
in training, see :class:`pyg_cerp.train.ConvergedRunner`): QR and hashing
sized by ``for_nbytes``, CERP and PEP pruned to the byte target, magnitude
pruning kept to the bytes, CERP's ``b`` from the budget planner. One row per
(method, budget, precision, seed) goes to
``<dataset>_<backbone>_bytes[_<tag>].csv`` (:data:`BYTES_COLUMNS`, resumable
cell by cell); ``bytes`` (the stored form, :mod:`pyg_cerp.memory`) is at
most ``budget_bytes`` in every row; a method that cannot meet a budget (QR
below about :math:`2\sqrt{N}` rows, a pruned full table whose sparse index
and int8 scales alone exceed it) gets a row with its ``note``.

Examples::

    # the converged comparison on the published Gowalla validation split
    python benchmarks/memory_vs_ndcg.py --root /work/shared/data \
        --dataset gowalla-lightgcnpp --backbone lightgcn --profile converged \
        --device cuda

    # every method at byte budgets, float32 and int8 (a GPU machine)
    python benchmarks/memory_vs_ndcg.py --root /work/shared/data \
        --dataset gowalla-lightgcnpp --name gowalla --backbone lightgcn \
        --profile converged --budget-unit bytes --precisions float32,int8 \
        --budgets 0.1,0.05,0.01,0.005 --device cuda

    # the quick profile on Gowalla, both backbones (about 30 min, 2 cores)
    python benchmarks/memory_vs_ndcg.py --root /work/shared/data \
        --dataset gowalla --backbone both --quick
    # the seed spread of one configuration
    python benchmarks/memory_vs_ndcg.py --root /work/shared/data --quick \
        --backbone lightgcn --methods cerp --budgets 0.05 --seeds 0,1,2 \
        --tag seeds
    # the gamma-schedule ablation
    python benchmarks/memory_vs_ndcg.py --root /work/shared/data --quick \
        --backbone lightgcn --methods cerp --gamma-schedules halve1,halve2,const \
        --tag gamma
"""
import argparse
import csv
import dataclasses
import math
import os
import os.path as osp
import re
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from pyg_cerp import train  # noqa: E402
from pyg_cerp.diagnostics import hash_balance, overlap_rate  # noqa: E402
from pyg_cerp.memory import memory_report  # noqa: E402
from pyg_cerp.nn import use_symmetric_propagation  # noqa: E402
from pyg_cerp.nn.baselines import (FullEmbedding, HashEmbedding,  # noqa: E402
                                   PEPEmbedding, QREmbedding)
from pyg_cerp.nn.compositional import CompositionalEmbedding  # noqa: E402
from pyg_cerp.nn.mlp import MLPScorer  # noqa: E402
from pyg_cerp.nn.quant import PRECISIONS  # noqa: E402
from pyg_cerp.train.cli import dataset_folder  # noqa: E402
from pyg_cerp.train.recommender import chunked_scores  # noqa: E402
from pyg_cerp.utils.adjacency import lightgcn_adjacency  # noqa: E402

METHODS = ('full', 'cerp', 'cerp-noreg', 'pep', 'qr', 'hash')
#: The methods of the converged profile (pyg_cerp.train.methods.METHODS).
CONVERGED_METHODS = ('full', 'cerp', 'cerp-noreg', 'cerp-ft', 'cerp-mul',
                     'qr-mul', 'qr-add', 'hash', 'pep', 'magnitude')
#: Converged-profile methods run only when named (--budget-unit bytes).
HYBRID_METHODS = ('cerp-mul-hybrid', 'qr-mul-hybrid')
ALL_METHODS = tuple(dict.fromkeys(METHODS + CONVERGED_METHODS +
                                  HYBRID_METHODS))
#: The CSV columns of the converged profile.
CONVERGED_COLUMNS = [
    'dataset', 'backbone', 'method', 'budget', 'seed', 'bucket_size',
    'nonzero_params', 'full_table_fraction', 'bytes', 'bytes_format',
    'epochs', 'best_epoch', 'prune_epochs', 'valid_ndcg@20', 'recall@10',
    'ndcg@10', 'recall@20', 'ndcg@20', 'overlap_rate', 'overlap_independent',
    'bucket_sweep', 'seconds', 'eval_users', 'profile', 'commit', 'note',
    'precision', 'distill', 'distill_sweep'
]
#: The CSV columns of the converged profile with byte budgets
#: (``--budget-unit bytes``): ``budget`` is the fraction of the full table's
#: float32 bytes, ``budget_bytes`` the bytes it allows, ``bytes`` the stored
#: bytes of the trained model at ``precision``.
BYTES_COLUMNS = [
    'dataset', 'backbone', 'method', 'budget', 'budget_bytes', 'precision',
    'seed', 'bucket_size', 'nonzero_params', 'full_table_fraction', 'bytes',
    'bytes_format', 'embedding_dim', 'epochs', 'best_epoch', 'prune_epochs',
    'valid_ndcg@20', 'recall@10', 'ndcg@10', 'recall@20', 'ndcg@20',
    'distill', 'distill_sweep', 'overlap_rate', 'overlap_independent',
    'bucket_sweep', 'seconds', 'eval_users', 'profile', 'commit', 'note',
    'exact_rows', 'exact_init'
]
PRUNED = ('cerp', 'cerp-noreg', 'pep')
#: The runner's method (its stages) of each quick/full-profile method.
RUNNER_METHODS = {'full': 'full', 'qr': 'qr-mul', 'hash': 'hash',
                  'cerp': 'cerp', 'cerp-noreg': 'cerp-noreg', 'pep': 'pep'}
BACKBONES = ('lightgcn', 'mlp')

#: Gamma schedules: name -> (gamma_decay, gamma_decay_every).
GAMMA_SCHEDULES = {
    'halve1': (0.5, 1),  # halve every epoch (the pipeline default)
    'halve2': (0.5, 2),  # halve every 2 epochs
    'const': (1.0, 1),  # constant
}

COLUMNS = [
    'dataset', 'backbone', 'method', 'budget', 'seed', 'gamma_schedule',
    'reached', 'target_epoch', 'nonzero_params', 'full_table_fraction',
    'bytes', 'bytes_format', 'bytes_source', 'recall@10', 'ndcg@10',
    'recall@20', 'ndcg@20', 'epochs', 'prune_epochs', 'seconds',
    'prune_seconds', 'overlap_rate', 'overlap_independent', 'eval_users',
    'profile', 'commit', 'note'
]


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


# Data ########################################################################

def resolve_dataset(dataset: str, root: Optional[str]) -> str:
    r"""The folder of :obj:`--dataset`
    (:func:`pyg_cerp.train.cli.dataset_folder`); exits with its error."""
    try:
        return dataset_folder(dataset, root)
    except ValueError as error:
        raise SystemExit(f'error: {error}')


def dataset_label(dataset: str) -> str:
    r"""A file-name friendly dataset name."""
    return osp.basename(osp.normpath(dataset)).replace(' ', '_')


def eval_subset(test: Tensor, num_users: int, size: int,
                seed: int = 0) -> Tensor:
    r"""Keeps the test pairs of :obj:`size` random users with test items
    (all if :obj:`size` is :obj:`0` or larger than their number). The subset
    depends on :obj:`seed` only, so every method and training seed is
    evaluated on the same users."""
    users = torch.unique(test[0])
    if size <= 0 or size >= users.numel():
        return test
    gen = torch.Generator().manual_seed(seed)
    keep = users[torch.randperm(users.numel(), generator=gen)[:size]]
    mask = torch.zeros(num_users, dtype=torch.bool)
    mask[keep] = True
    return test[:, mask[test[0]]]


# Methods #####################################################################

def pep_threshold_init(num_embeddings: int, dim: int, bucket_size: int,
                       cerp_threshold_init: float) -> float:
    r"""The threshold logit of PEP that starts at the same fraction of the
    initial value range as CERP's: Xavier-uniform values are bounded by
    :math:`\sqrt{6/(r+d)}` for :math:`r` rows, so PEP's :math:`N \times d`
    table starts :math:`\sqrt{(b+d)/(N+d)}` times smaller than CERP's
    :math:`b \times d` meta tables, and so does its threshold
    :math:`\sigma(S_0)`."""
    tau = torch.sigmoid(torch.tensor(cerp_threshold_init, dtype=torch.float64))
    tau = float(tau) * math.sqrt((bucket_size + dim) / (num_embeddings + dim))
    return math.log(tau / (1 - tau))


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


#: :func:`pyg_cerp.train.recommender.chunked_scores` (the harness' old name).
chunked_score_function = chunked_scores


# One job #####################################################################

class Benchmark:
    r"""Runs jobs of one backbone through the pipeline and turns the
    pipeline's results into CSV rows.

    Args:
        args (argparse.Namespace): The parsed command line.
        profile (Profile): The schedule.
        backbone (str): :obj:`'lightgcn'` or :obj:`'mlp'`.
        data: The pipeline's :class:`Interactions` (test pairs possibly
            restricted to the evaluation users).
        commit (str): The git commit the code runs on.
    """
    def __init__(self, args: argparse.Namespace, profile: Profile,
                 backbone: str, data, commit: str) -> None:
        self.args = args
        self.profile = profile
        self.backbone = backbone
        self.data = data
        self.commit = commit
        self.train = train
        self.hyper = resolve_hyper(args, profile, self.train.CERPConfig())
        self.num_entities = data.num_users + data.num_items
        self.adj = None
        if backbone == 'lightgcn':
            self.adj = lightgcn_adjacency(data.train, data.num_users,
                                          data.num_items)
        self.eval_users = int(torch.unique(data.test[0]).numel())

    # Building ----------------------------------------------------------------

    def embedding(self, method: str, budget: float) -> torch.nn.Module:
        r"""A fresh embedding of :obj:`method` for :obj:`budget`."""
        n, a, h = self.num_entities, self.args, self.hyper
        d = h['dim']
        if method == 'full':
            return FullEmbedding(n, d, check_index=False)
        if method in ('cerp', 'cerp-noreg'):
            return CompositionalEmbedding(n, d, h['bucket_size'],
                                          threshold_init=h['threshold_init'],
                                          check_index=False)
        if method == 'pep':
            s0 = a.pep_threshold_init
            if s0 is None:
                s0 = pep_threshold_init(n, d, h['bucket_size'],
                                        h['threshold_init'])
            return PEPEmbedding(n, d, threshold_init=s0, check_index=False)
        if method == 'qr':
            return QREmbedding.for_budget(n, d, budget, check_index=False)
        if method == 'hash':
            return HashEmbedding.for_budget(n, d, budget, check_index=False)
        raise ValueError(f'Unknown method {method!r}')

    def build_recommender(self, embedding: torch.nn.Module):
        r"""The backbone around :obj:`embedding` (parameters reset)."""
        data = self.data
        if self.backbone == 'lightgcn':
            from torch_geometric.nn.models import LightGCN
            model = LightGCN(self.num_entities, self.hyper['dim'],
                             self.args.num_layers)
            use_symmetric_propagation(model)
            model.embedding = embedding
            model.reset_parameters()
            return self.train.LightGCNRecommender(model, self.adj,
                                                  data.num_users,
                                                  data.num_items)
        scorer = MLPScorer(data.num_users, data.num_items, embedding,
                           hidden_channels=self.profile.mlp_hidden)
        return self.train.MLPRecommender(
            scorer, user_chunk=self.args.mlp_eval_chunk,
            item_chunk=self.args.mlp_eval_item_chunk)

    def config(self, job: Job):
        r"""The pipeline configuration of :obj:`job`."""
        a, h = self.args, self.hyper
        pruned = job.method in PRUNED
        decay, every = GAMMA_SCHEDULES[job.gamma_schedule or 'halve1']
        targets = job.budgets if pruned else tuple(
            t for t in a.budgets if t < 1.) or (0.5, )
        values = self.train.CERPConfig().to_dict()
        values.update(h)
        values.update(
            targets=targets, target_unit='full',
            baseline_epochs=0 if pruned else h['retrain_epochs'],
            prune_epochs=h['prune_epochs'] if pruned else 0,
            retrain_epochs=h['retrain_epochs'], finetune_epochs=0,
            gamma_init=0. if job.method == 'cerp-noreg' else h['gamma_init'],
            gamma_decay=decay, gamma_decay_every=every, seed=job.seed,
            ks=(10, 20))
        return self.train.CERPConfig.from_dict(values)

    # Running -----------------------------------------------------------------

    def run(self, job: Job, log: Callable[[str], None]) -> List[Dict]:
        r"""Runs :obj:`job` through :class:`pyg_cerp.train.CERPRunner` and
        returns its CSV rows."""
        config = self.config(job)
        data = self.data
        try:  # Budgets a method cannot meet (QR needs ~2 sqrt(N) rows).
            self.embedding(job.method, job.budgets[0])
        except ValueError as error:
            return [dict(self._base(job), budget=b, reached=False, epochs=0,
                         note=f'infeasible: {error}') for b in job.budgets]
        built: List[Any] = []

        def factory(kind: str) -> torch.nn.Module:
            # A fixed method's one stage ('full') trains its structure; a
            # pruning method's prunable stages ('cerp') build CERP or PEP.
            return self.embedding(job.method, job.budgets[0])

        def build(embedding: torch.nn.Module):
            rec = self.build_recommender(embedding)
            built.append(rec)
            return rec

        def sampler(seed: int):
            return self.train.make_sampler(data.train, data.num_users,
                                           data.num_items,
                                           config.num_negatives,
                                           config.batch_size, seed)

        runner = self.train.CERPRunner(
            config, data, build, sampler, embedding_factory=factory,
            out_dir=None, log=log, progress=self.args.progress,
            method=RUNNER_METHODS[job.method])
        start = time.perf_counter()
        state = runner.run()
        total = time.perf_counter() - start
        return self._rows(job, state, built, total, len(runner.sampler))

    def _base(self, job: Job) -> Dict:
        return dict(dataset=self.args.dataset_label, backbone=self.backbone,
                    method=job.method, seed=job.seed,
                    gamma_schedule=job.gamma_schedule,
                    eval_users=self.eval_users, profile=self.profile.name,
                    commit=self.commit)

    def _rows(self, job: Job, state: Dict, built: List, total: float,
              steps_per_epoch: int) -> List[Dict]:
        results = state['results']
        base = self._base(job)
        rows = []
        if job.method not in PRUNED:
            res = results['full']
            rows.append(self._row(base, job.budgets[0], res, built[0],
                                  reached=True, target_epoch='',
                                  prune_epochs=0, prune_seconds=0.))
            return rows
        prune = state['prune'] or {}
        sched = prune.get('scheduler') or {}
        snaps = {float(s['target']): s for s in sched.get('snapshots', [])}
        prune_hist = [h for h in state['history'] if h['stage'] == 'prune']
        prune_epochs = len(prune_hist)
        prune_seconds = sum(h['time'] for h in prune_hist)
        reached = [float(t) for t in prune.get('reached', [])]
        # Build order: 'prune', then 'retrain@t' for t in `reached`.
        retrained = dict(zip(reached, built[1:]))
        for budget in job.budgets:
            snap = snaps.get(float(budget))
            target_epoch = (round(int(snap['step']) / steps_per_epoch, 3)
                            if snap is not None else '')
            key = f'retrain@{budget:g}'
            if key not in results:
                rows.append(dict(
                    base, budget=budget, reached=False,
                    target_epoch=target_epoch, prune_epochs=prune_epochs,
                    prune_seconds=round(prune_seconds, 1), epochs=0,
                    note=(f'target not reached in {prune_epochs} prune '
                          f'epochs (lowest fraction of full '
                          f"{sched.get('min_density', float('nan')):.4g})")))
                continue
            rows.append(self._row(base, budget, results[key],
                                  retrained[float(budget)], reached=True,
                                  target_epoch=target_epoch,
                                  prune_epochs=prune_epochs,
                                  prune_seconds=prune_seconds))
        return rows

    def _row(self, base: Dict, budget: float, res: Dict, rec, reached: bool,
             target_epoch, prune_epochs: int, prune_seconds: float) -> Dict:
        emb = rec.embedding
        report = memory_report(emb)
        row = dict(base, budget=budget, reached=reached,
                   target_epoch=target_epoch,
                   nonzero_params=int(emb.num_nonzero()),
                   full_table_fraction=round(emb.num_nonzero() /
                                             emb.num_full_params, 6),
                   bytes=report.nbytes, bytes_format=report.formats(),
                   bytes_source=report.source, epochs=res['epochs'],
                   prune_epochs=prune_epochs,
                   seconds=round(res['train_time'], 1),
                   prune_seconds=round(prune_seconds, 1))
        for key in ('recall@10', 'ndcg@10', 'recall@20', 'ndcg@20'):
            row[key] = round(float(res[key]), 6)
        if isinstance(emb, CompositionalEmbedding):
            stats = overlap_rate(emb)
            row['overlap_rate'] = round(stats.mean, 6)
            row['overlap_independent'] = round(stats.independent, 6)
        return row


# Output ######################################################################

class CSVLog:
    r"""Appends rows to a CSV file, flushing each to disk at once (columns
    :obj:`columns`, default :data:`COLUMNS`). An existing file keeps its
    column order; columns it lacks are added at the end (the file is
    rewritten atomically once, old rows empty there), so that a row is never
    written under another column's header."""
    def __init__(self, path: str, fresh: bool = False,
                 columns: Optional[Sequence[str]] = None) -> None:
        self.path = path
        self.columns = list(columns or COLUMNS)
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        if fresh and osp.exists(path):
            os.remove(path)
        if osp.exists(path) and osp.getsize(path) > 0:
            with open(path, newline='') as f:
                reader = csv.DictReader(f)
                header, old = list(reader.fieldnames or []), list(reader)
            merged = header + [c for c in self.columns if c not in header]
            if merged != header:
                tmp = path + '.tmp'
                with open(tmp, 'w', newline='') as f:
                    writer = csv.DictWriter(f, merged)
                    writer.writeheader()
                    writer.writerows(old)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            self.columns = merged

    def rows(self) -> List[Dict[str, str]]:
        if not osp.exists(self.path):
            return []
        with open(self.path, newline='') as f:
            return list(csv.DictReader(f))

    def append(self, rows: Sequence[Dict]) -> None:
        new = not osp.exists(self.path) or osp.getsize(self.path) == 0
        with open(self.path, 'a', newline='') as f:
            writer = csv.DictWriter(f, self.columns, extrasaction='ignore')
            if new:
                writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k, '') for k in self.columns})
            f.flush()
            os.fsync(f.fileno())

    def done(self, job: Job, profile: str) -> bool:
        r"""Whether every row of :obj:`job` is already in the file."""
        have = {(r['method'], float(r['budget']), int(r['seed']),
                 r['gamma_schedule'], r['profile'])
                for r in self.rows()}
        return all((job.method, float(b), job.seed, job.gamma_schedule,
                    profile) in have for b in job.budgets)


def _num(value: str) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _label(row: Dict) -> str:
    g = row.get('gamma_schedule') or ''
    return f"{row['method']}[{g}]" if g else row['method']


def aggregate(rows: List[Dict[str, str]]) -> Dict[Tuple[str, float], Dict]:
    r"""Mean, standard deviation, min and max over seeds per
    (method label, budget), for every numeric column."""
    groups: Dict[Tuple[str, float], List[Dict]] = {}
    for row in rows:
        groups.setdefault((_label(row), float(row['budget'])), []).append(row)
    out = {}
    for key, group in groups.items():
        agg: Dict[str, Any] = dict(n=len(group), rows=group)
        for col in COLUMNS:
            vals = [_num(r.get(col)) for r in group]
            vals = [v for v in vals if v is not None]
            if not vals:
                continue
            mean = sum(vals) / len(vals)
            std = (math.sqrt(sum((v - mean)**2 for v in vals) /
                             (len(vals) - 1)) if len(vals) > 1 else 0.)
            agg[col] = dict(mean=mean, std=std, min=min(vals), max=max(vals),
                            n=len(vals))
        out[key] = agg
    return out


def _fmt_bytes(n: float) -> str:
    for unit, size in (('GB', 1e9), ('MB', 1e6), ('kB', 1e3)):
        if n >= size:
            return f'{n / size:.2f} {unit}'
    return f'{n:.0f} B'


def write_markdown(rows: List[Dict[str, str]], path: str, title: str,
                   header: str = '') -> None:
    r"""The results table (means over seeds; ``±`` the standard deviation
    where there are several), the best method per budget, CERP's gap, the
    overlap diagnostics and the seed spread."""
    agg = aggregate(rows)
    metrics = ('recall@10', 'ndcg@10', 'recall@20', 'ndcg@20')
    lines = [f'# {title}', '']
    if header:
        lines += [header, '']
    lines += ['| method | budget | seeds | non-zeros | % of full | bytes | '
              'R@10 | N@10 | R@20 | N@20 | epochs (+prune) | epochs to '
              'target | seconds | overlap (indep.) |',
              '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']

    def cell(a: Dict, col: str, digits: int = 4) -> str:
        if col not in a:
            return '-'
        m = a[col]
        if m['n'] > 1 and m['std'] > 0:
            return f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}"
        return f"{m['mean']:.{digits}f}"

    keys = sorted(agg, key=lambda k: (-k[1], -agg[k].get(
        'ndcg@20', {'mean': -1})['mean']))
    for key in keys:
        a = agg[key]
        label, budget = key
        reached = all(r['reached'] in ('True', 'true', '1')
                      for r in a['rows'])
        if 'ndcg@20' not in a:
            note = a['rows'][0].get('note') or 'no result'
            lines.append(f'| {label} | {budget:g} | {a["n"]} | '
                         f'{note.replace("|", "/")} '
                         f'| | | | | | | | | | |')
            continue
        nnz = a['nonzero_params']['mean']
        frac = 100 * a['full_table_fraction']['mean']
        byt = _fmt_bytes(a['bytes']['mean'])
        ep = f"{a['epochs']['mean']:.0f}"
        if a.get('prune_epochs', {}).get('mean', 0):
            ep += f" (+{a['prune_epochs']['mean']:.0f})"
        tgt = cell(a, 'target_epoch', 2)
        sec = f"{a['seconds']['mean']:.0f}"
        if a.get('prune_seconds', {}).get('mean', 0):
            sec += f" (+{a['prune_seconds']['mean']:.0f})"
        ov = '-'
        if 'overlap_rate' in a:
            ov = (f"{a['overlap_rate']['mean']:.4f} "
                  f"({a['overlap_independent']['mean']:.4f})")
        lines.append(
            f'| {label} | {budget:g} | {a["n"]} | {nnz:.0f} | {frac:.2f} | '
            f'{byt} | ' + ' | '.join(cell(a, m) for m in metrics) +
            f' | {ep} | {tgt} | {sec} | {ov} |' +
            ('' if reached else ' (target missed)'))

    # Best per budget and CERP's gap.
    budgets = sorted({k[1] for k in agg if k[1] < 1}, reverse=True)
    full = agg.get(('full', 1.0), {}).get('ndcg@20', {}).get('mean')
    lines += ['', '## Best method per budget (NDCG@20)', '']
    if full is not None:
        lines.append(f'Full table (the ceiling): NDCG@20 = {full:.4f}.')
        lines.append('')
    for b in budgets:
        cands = {k[0]: agg[k]['ndcg@20']['mean'] for k in agg
                 if k[1] == b and 'ndcg@20' in agg[k]}
        if not cands:
            continue
        best = max(cands, key=cands.get)
        line = f'* budget {b:g}: best **{best}** ({cands[best]:.4f})'
        cerp = cands.get('cerp')
        if cerp is not None and best != 'cerp':
            gap = cands[best] - cerp
            line += (f'; CERP {cerp:.4f} is {gap:.4f} below '
                     f'({100 * gap / cands[best]:.1f}% relative)')
        elif cerp is not None:
            others = {k: v for k, v in cands.items() if k != 'cerp'}
            if others:
                second = max(others, key=others.get)
                line += (f'; next {second} {others[second]:.4f} '
                         f'({cerp - others[second]:+.4f})')
        missing = sorted({k[0] for k in agg if k[1] == b} - set(cands))
        if missing:
            line += f'; no result: {", ".join(missing)}'
        lines.append(line)

    # Seed spread.
    multi = [(k, a) for k, a in agg.items() if a['n'] > 1 and 'ndcg@20' in a]
    if multi:
        lines += ['', '## Seed spread', '',
                  '| method | budget | seeds | NDCG@20 mean ± std | min | '
                  'max | max - min | Recall@20 mean ± std |',
                  '|---|---|---|---|---|---|---|---|']
        for (label, budget), a in sorted(multi):
            n = a['ndcg@20']
            r = a['recall@20']
            lines.append(
                f"| {label} | {budget:g} | {n['n']} | {n['mean']:.4f} ± "
                f"{n['std']:.4f} | {n['min']:.4f} | {n['max']:.4f} | "
                f"{n['max'] - n['min']:.4f} | {r['mean']:.4f} ± "
                f"{r['std']:.4f} |")
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def write_plot(rows: List[Dict[str, str]], path: str, title: str) -> None:
    r"""NDCG@20 (mean over seeds) against stored bytes, log x, one line per
    method; the full table as a horizontal reference line."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    agg = aggregate(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = sorted({k[0] for k in agg if k[0] != 'full'})
    for label in labels:
        pts = sorted((a['bytes']['mean'], a['ndcg@20']['mean'],
                      a['ndcg@20']['std'])
                     for k, a in agg.items()
                     if k[0] == label and 'ndcg@20' in a)
        if not pts:
            continue
        xs, ys, es = zip(*pts)
        ax.errorbar(xs, ys, yerr=es if any(es) else None, marker='o',
                    capsize=3, label=label)
    full = agg.get(('full', 1.0))
    if full is not None and 'ndcg@20' in full:
        ax.axhline(full['ndcg@20']['mean'], color='k', linestyle='--',
                   linewidth=1,
                   label=f"full table ({_fmt_bytes(full['bytes']['mean'])})")
    ax.set_xscale('log')
    ax.set_xlabel('stored bytes of the embedding (log scale)')
    ax.set_ylabel('NDCG@20')
    ax.set_title(title)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def diagnostics_section(num_entities: int, bucket_size: int,
                        budgets: Sequence[float]) -> str:
    r"""Hash balance of CERP's P and Q (and of QR at each budget) from the
    actual hash functions."""
    lines = ['## Hash balance (reuse counts of meta rows)', '',
             f'N = {num_entities}, b = {bucket_size}. A perfectly balanced '
             f'hash uses every row floor(N/b) or ceil(N/b) times.', '']
    emb = CompositionalEmbedding(num_entities, 1, bucket_size)
    for t in hash_balance(emb):
        lines.append(f'* CERP {t.summary()}; unused rows: {t.unused}')
    for b in budgets:
        try:
            qr = QREmbedding.for_budget(num_entities, 1, b)
        except ValueError:
            continue
        for t in hash_balance(qr):
            lines.append(f'* QR@{b:g} {t.summary()}')
        hs = HashEmbedding.for_budget(num_entities, 1, b)
        (t, ) = hash_balance(hs)
        lines.append(f'* hash@{b:g} W: {t.rows} rows, counts '
                     f'{t.min_used_count}..{t.max_count} '
                     f'(expected {t.expected[0]}/{t.expected[1]}), '
                     f'unused rows: {t.unused}')
    return '\n'.join(lines)


def git_commit() -> str:
    r"""The commit of the code (with ``+dirty`` for uncommitted changes);
    the environment variable ``PYG_CERP_COMMIT`` where the copy has no git
    history (*e.g.* a working tree copied to a GPU machine)."""
    if os.environ.get('PYG_CERP_COMMIT'):
        return os.environ['PYG_CERP_COMMIT']
    here = osp.dirname(osp.abspath(__file__))
    try:
        sha = subprocess.run(['git', 'rev-parse', '--short=12', 'HEAD'],
                             cwd=here, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain',
                                '--untracked-files=no'], cwd=here,
                               capture_output=True, text=True).stdout.strip()
        return sha + ('+dirty' if dirty else '')
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


# Command line ################################################################

def _floats(text: str) -> List[float]:
    try:
        values = [float(x) for x in text.split(',') if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated numbers, '
                                         f'got {text!r}')
    for v in values:
        if not 0 < v < 1:
            raise argparse.ArgumentTypeError(
                f'budgets are fractions of the full table in (0, 1), got '
                f'{v}')
    return values


def _ints(text: str) -> List[int]:
    try:
        return [int(x) for x in text.split(',') if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers,'
                                         f' got {text!r}')


def _choices(allowed: Sequence[str]) -> Callable[[str], List[str]]:
    def parse(text: str) -> List[str]:
        values = [x.strip() for x in text.split(',') if x.strip()]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(
                f'unknown {bad or text!r}; choose from {", ".join(allowed)}')
        return values
    return parse


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--root', default=os.environ.get('PYG_CERP_DATA'),
                        help='Folder holding <dataset>/raw/ '
                        '(default: $PYG_CERP_DATA)')
    parser.add_argument('--dataset', default='gowalla',
                        help="gowalla, yelp2020, yelp2020-lightgcn-pr16 or a "
                        "path to a LightGCN-format folder")
    parser.add_argument('--backbone', choices=['lightgcn', 'mlp', 'both'],
                        default='both')
    parser.add_argument('--methods', type=_choices(ALL_METHODS),
                        default=None,
                        help='Comma-separated subset of ' + ','.join(METHODS)
                        + ' (profiles quick/full) or of ' +
                        ','.join(CONVERGED_METHODS) + ' (profile converged)')
    parser.add_argument('--budgets', type=_floats, default=[0.10, 0.05, 0.01],
                        help='Memory budgets, fractions of N*d (with '
                        "--budget-unit bytes: of the full table's float32 "
                        'bytes 4*N*d)')
    parser.add_argument('--seeds', type=_ints, default=[0])
    parser.add_argument('--gamma-schedules',
                        type=_choices(tuple(GAMMA_SCHEDULES)), default=[],
                        help='Run CERP once per gamma schedule (ablation): '
                        'halve1 (halve every epoch), halve2 (every 2 '
                        'epochs), const')
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--quick', action='store_const', dest='profile',
                       const='quick',
                       help='The quick profile: ' + str(PROFILES['quick']))
    group.add_argument('--full', action='store_const', dest='profile',
                       const='full',
                       help='The full profile: ' + str(PROFILES['full']))
    group.add_argument('--profile', choices=('quick', 'full', 'converged'),
                       dest='profile',
                       help='quick, full, or converged: every model trained '
                       'until validation NDCG@20 stops improving (see '
                       'run_converged)')
    parser.set_defaults(profile='full')
    conv = parser.add_argument_group('profile converged')
    conv.add_argument('--max-epochs', type=int, default=100,
                      help='Epoch cap of every training run')
    conv.add_argument('--eval-every', type=int, default=1,
                      help='validate every this many epochs (patience '
                      'counts validations) (default: 1)')
    conv.add_argument('--patience', type=int, default=5,
                      help='Validations without improvement before stopping')
    conv.add_argument('--bucket-ratios', type=_pos_floats,
                      default=[1.5, 2., 4.],
                      help="CERP's b sweep: b = ceil(r * budget * N / 2) per "
                      'ratio r (the meta tables hold r * budget of the full '
                      'table); selected on validation')
    conv.add_argument('--mlp-preset', choices=('small', 'official'),
                      default='small',
                      help='MLPScorer preset (official: needs a GPU for '
                      'full ranking)')
    conv.add_argument('--subset', type=int, nargs=2, default=None,
                      metavar=('MAX_USERS', 'MAX_ITEMS'),
                      help='Keep the first users and items only (tiny '
                      'slices for tests)')
    conv.add_argument('--valid-fraction', type=float, default=0.1,
                      help='Per-user share of train held out for validation '
                      'where the dataset has no valid.txt')
    conv.add_argument('--prune-speed', type=float, default=None,
                      help='Rise of the threshold logits per epoch in phase '
                      '1 (default: CERPConfig faithful)')
    conv.add_argument('--pace-epochs', type=float, default=None,
                      help='Epochs of the density plan from the onset to '
                      'the target (default: CERPConfig faithful)')
    conv.add_argument('--gamma-decay', type=float, default=None,
                      help='Decay of gamma per epoch (default: CERPConfig '
                      'faithful, 0.5)')
    conv.add_argument('--prune-batch-size', type=int, default=None,
                      help='The batch of phase 1 only (default: CERPConfig '
                      'prune_schedule: --batch-size capped at 8192)')
    conv.add_argument('--reg-thresholds-only', action='store_true',
                      help="The regulariser's gradient on the threshold "
                      'logits only (CERPConfig.regularize_thresholds_only)')
    conv.add_argument('--distill-weights', type=_pos_floats, default=[],
                      help='Ranking-distillation weights from the converged '
                      'full table into every compressed method, selected on '
                      'validation (pyg_cerp.train.RankingDistillation; '
                      'default: none). Use --tag to keep such cells apart')
    conv.add_argument('--distill-temperature', type=float, default=1.,
                      help='Softmax temperature of the listwise KL '
                      '(default: 1)')
    conv.add_argument('--distill-samples', type=int, default=0,
                      help='Extra random candidate items per user '
                      '(default: 0)')
    conv.add_argument('--distill-top-k', type=int, default=0,
                      help="The teacher's top-K items as extra candidates "
                      '(default: 0)')
    conv.add_argument('--full-cache', default=None, metavar='DIR',
                      help='A cache folder (ConvergedRunner cache). It keeps '
                      'each converged full table (checksummed, tied to the '
                      'data and configuration), which later runs load '
                      "instead of training it again, so that 'magnitude' "
                      'and distillation cells in separate processes share '
                      'one full model per seed and precision; and the '
                      "running cell's training progress, saved at each "
                      'validation, so that a killed cell resumes where it '
                      'stopped. Up to about 16 N d bytes a file: keep it '
                      'out of the repository; without it, in memory only')
    conv.add_argument('--name', default=None,
                      help='The dataset name in the output file names '
                      '(default: its folder name; e.g. gowalla for '
                      'gowalla-lightgcnpp, the CERP split with its published '
                      'validation split)')
    conv.add_argument('--device', default='cpu',
                      help="'cuda' when available")
    conv.add_argument('--budget-unit', choices=('full', 'bytes'),
                      default='full',
                      help='full: --budgets are fractions of the N*d values '
                      'of the full table (<name>_<backbone>_converged.csv); '
                      "bytes: fractions of the full table's float32 bytes "
                      '4*N*d, every method trained and stored at each of '
                      '--precisions (<name>_<backbone>_bytes.csv)')
    conv.add_argument('--exact-share', type=float, default=0.5,
                      help='For ' + ','.join(HYBRID_METHODS) + ': the share '
                      'of the budget bytes given to exact rows of the users '
                      'and items with the most training pairs (default: '
                      '0.5). Use --tag to keep shares apart')
    conv.add_argument('--exact-init', choices=('random', 'teacher'),
                      default='random',
                      help="How the hybrids' exact rows start: random (as "
                      "the full table's) or teacher (the converged full "
                      "table's rows, the distillation teacher; default: "
                      "random)")
    conv.add_argument('--precisions', type=_choices(PRECISIONS),
                      default=['float32'],
                      help='Comma-separated value precisions of '
                      '--budget-unit bytes, one row each: ' +
                      ', '.join(PRECISIONS) + ' (int8: per-row scales); '
                      'simulated in training (fake quantisation)')
    parser.add_argument('--prune-epochs', type=int, default=None,
                        help='Override the profile')
    parser.add_argument('--retrain-epochs', type=int, default=None,
                        help='Override the profile (also the epochs of the '
                        'fixed-size methods)')
    parser.add_argument('--eval-users', type=int, default=None,
                        help='Override the profile (0: every test user)')
    pipe = ('(default: the profile, else the pipeline default, '
            'pyg_cerp.train.CERPConfig)')
    parser.add_argument('--batch-size', type=int, default=None,
                        help='Positive pairs per step ' + pipe)
    parser.add_argument('--lr', type=float, default=None,
                        help='Adam lr of the values ' + pipe)
    parser.add_argument('--threshold-lr', type=float, default=None,
                        help='Adam lr of the thresholds (pruning speed) ' +
                        pipe)
    parser.add_argument('--dim', type=int, default=None,
                        help='Embedding size ' + pipe)
    parser.add_argument('--bucket-size', type=int, default=None,
                        help='CERP meta-table rows b ' + pipe)
    parser.add_argument('--threshold-init', type=float, default=None,
                        help='CERP initial threshold logit ' + pipe)
    parser.add_argument('--pep-threshold-init', type=float, default=None,
                        help='PEP initial threshold logit (default: matched '
                        'to CERP, see pep_threshold_init())')
    parser.add_argument('--gamma', dest='gamma_init', type=float,
                        default=None,
                        help='CERP initial regulariser weight ' + pipe)
    parser.add_argument('--num-negatives', type=int, default=None,
                        help='Negatives per positive ' + pipe)
    parser.add_argument('--num-layers', type=int, default=3,
                        help='LightGCN layers')
    parser.add_argument('--mlp-eval-chunk', type=int, default=16,
                        help='Users per MLP full-ranking call')
    parser.add_argument('--mlp-eval-item-chunk', type=int, default=2048,
                        help='Items per MLP full-ranking call')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch CPU threads')
    parser.add_argument('--out', default=osp.join(
        osp.dirname(osp.abspath(__file__)), 'results'))
    parser.add_argument('--tag', default='',
                        help='Suffix of the output files')
    parser.add_argument('--fresh', action='store_true',
                        help='Overwrite the CSV instead of resuming')
    parser.add_argument('--progress', action='store_true',
                        help='Per-epoch tqdm bars of the pipeline')
    parser.add_argument('--report-only', action='store_true',
                        help='Train nothing: rewrite the markdown table and '
                        'the plot from the CSV (e.g. after an interrupted '
                        'run)')
    args = parser.parse_args(argv)
    if args.tag and not re.fullmatch(r'[A-Za-z0-9-]+', args.tag):
        parser.error(f'--tag {args.tag!r}: use letters, digits and - only '
                     '(benchmarks/device/merge.py reads the tag back from '
                     'the file name)')
    if args.profile == 'converged':
        if args.methods is None:
            args.methods = list(CONVERGED_METHODS)
        bad = [m for m in args.methods
               if m not in CONVERGED_METHODS + HYBRID_METHODS]
        if bad:
            parser.error(f'--profile converged: unknown methods {bad}; '
                         f'choose from '
                         f'{",".join(CONVERGED_METHODS + HYBRID_METHODS)}')
        hybrid = [m for m in args.methods if m in HYBRID_METHODS]
        if hybrid and args.budget_unit != 'bytes':
            parser.error(f'{",".join(hybrid)} need --budget-unit bytes')
        if not 0. < args.exact_share < 1.:
            parser.error(f'--exact-share must be in (0, 1) (got '
                         f'{args.exact_share})')
        if args.gamma_schedules:
            parser.error('--gamma-schedules is not part of the converged '
                         'profile')
        if args.budget_unit != 'bytes' and args.precisions != ['float32']:
            parser.error('--precisions needs --budget-unit bytes (a budget '
                         'of values does not depend on the precision)')
        if len(set(args.precisions)) != len(args.precisions):
            parser.error(f'--precisions holds duplicates: '
                         f'{",".join(args.precisions)}')
        args.profile_obj = None
        return args
    if args.budget_unit != 'full' or args.precisions != ['float32']:
        parser.error('--budget-unit and --precisions are options of '
                     '--profile converged')
    if args.methods is None:
        args.methods = list(METHODS)
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        parser.error(f'profile {args.profile}: unknown methods {bad}; choose '
                     f'from {",".join(METHODS)}')
    base = PROFILES[args.profile]
    overrides = {k: v for k, v in dict(
        prune_epochs=args.prune_epochs, retrain_epochs=args.retrain_epochs,
        eval_users=args.eval_users).items() if v is not None}
    # Command-line epochs are part of the profile (they scale the pruning
    # speed, see resolve_hyper), not hyper-parameter overrides.
    args.prune_epochs = args.retrain_epochs = None
    args.profile_obj = dataclasses.replace(
        base, **overrides, name=base.name + ('*' if overrides else ''))
    if args.gamma_schedules and 'cerp' not in args.methods:
        parser.error('--gamma-schedules needs cerp in --methods')
    return args


def _pos_floats(text: str) -> List[float]:
    try:
        values = [float(x) for x in text.split(',') if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated numbers, '
                                         f'got {text!r}')
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f'expected positive numbers, got '
                                         f'{text!r}')
    return values


# Profile converged ###########################################################

def run_converged(args: argparse.Namespace,
                  argv: Optional[Sequence[str]] = None) -> List[str]:
    r"""The converged profile: every (method, budget, seed) cell trained by
    :class:`pyg_cerp.train.ConvergedRunner` until validation NDCG@20 stops
    improving (:obj:`--patience`, :obj:`--max-epochs`), the best validation
    epoch tested once; CERP's :math:`b` swept per budget
    (:obj:`--bucket-ratios`) and selected on validation. Each finished cell
    is appended to ``<out>/<dataset>_<backbone>_converged[_<tag>].csv`` at
    once; cells already in the file are skipped, so a killed run continues
    where it stopped. With :obj:`--budget-unit bytes` the budgets are
    fractions of the full table's float32 bytes and every cell is run once
    per :obj:`--precisions`, into
    ``<out>/<dataset>_<backbone>_bytes[_<tag>].csv`` (:data:`BYTES_COLUMNS`,
    one row per (method, budget, precision, seed)). Phase 1 and the
    optimiser follow :meth:`CERPConfig.preset` :obj:`'faithful'`
    (overridable: :obj:`--dim`,
    :obj:`--batch-size`, :obj:`--lr`, :obj:`--prune-epochs`,
    :obj:`--gamma`, :obj:`--num-negatives`)."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    folder = resolve_dataset(args.dataset, args.root)
    label = args.name or dataset_label(args.dataset)
    commit = git_commit()
    split = train.load_split(folder, args.valid_fraction,
                             subset=args.subset)
    overrides = {k: v for k, v in dict(
        dim=args.dim, batch_size=args.batch_size, lr=args.lr,
        prune_epochs=args.prune_epochs, gamma_init=args.gamma_init,
        num_negatives=args.num_negatives,
        threshold_init=args.threshold_init,
        prune_speed=args.prune_speed, pace_epochs=args.pace_epochs,
        gamma_decay=args.gamma_decay, prune_batch_size=args.prune_batch_size,
        regularize_thresholds_only=args.reg_thresholds_only or None,
    ).items() if v is not None}
    config = train.CERPConfig.preset('faithful', ks=(10, 20), **overrides)
    stopping = train.EarlyStopping(max_epochs=args.max_epochs,
                                   patience=args.patience,
                                   eval_every=args.eval_every)
    eval_users = args.eval_users or None
    command = 'python ' + ' '.join([osp.relpath(__file__)] + list(
        sys.argv[1:] if argv is None else argv))
    print(f'{label}: {split.num_users} users, {split.num_items} items, '
          f'{split.train.size(1)} train / {split.valid.size(1)} valid / '
          f'{split.test.size(1)} test pairs; {stopping}; commit {commit}',
          flush=True)
    n = split.num_users + split.num_items
    backbones = BACKBONES if args.backbone == 'both' else (args.backbone, )
    outputs = []
    for backbone in backbones:
        in_bytes = args.budget_unit == 'bytes'
        stem = (f'{label}_{backbone}_' + ('bytes' if in_bytes else
                                          'converged') +
                (f'_{args.tag}' if args.tag else ''))
        csv_path = osp.join(args.out, stem + '.csv')
        table = CSVLog(csv_path, fresh=args.fresh, columns=(
            BYTES_COLUMNS if in_bytes else CONVERGED_COLUMNS))
        adj = None
        if backbone == 'lightgcn':
            adj = lightgcn_adjacency(split.train, split.num_users,
                                     split.num_items)
            adj = adj.to(device)

        def build(embedding: torch.nn.Module, backbone=backbone, adj=adj):
            if backbone == 'lightgcn':
                from torch_geometric.nn.models import LightGCN
                model = LightGCN(n, config.dim, args.num_layers)
                use_symmetric_propagation(model)
                model.embedding = embedding
                model.reset_parameters()
                return train.LightGCNRecommender(
                    model, adj, split.num_users, split.num_items).to(device)
            scorer = MLPScorer(split.num_users, split.num_items, embedding,
                               preset=args.mlp_preset)
            return train.MLPRecommender(
                scorer, user_chunk=args.mlp_eval_chunk,
                item_chunk=args.mlp_eval_item_chunk).to(device)

        def sampler(edge_index: Tensor, seed: int):
            return train.make_sampler(edge_index, split.num_users,
                                      split.num_items, config.num_negatives,
                                      config.batch_size, seed)

        log_path = osp.join(args.out, stem + '.log')
        logf = open(log_path, 'a')
        logf.write(f'# {command}\n# commit {commit}\n')

        def log(line: str) -> None:
            logf.write(line + '\n')
            logf.flush()

        runner = train.ConvergedRunner(
            split, build, sampler, config, stopping, args.bucket_ratios,
            device=device, eval_users=eval_users, log=log,
            distill_weights=tuple(args.distill_weights),
            distill_options=dict(temperature=args.distill_temperature,
                                 num_samples=args.distill_samples,
                                 top_k=args.distill_top_k),
            budget_unit=args.budget_unit, cache=args.full_cache,
            exact_share=args.exact_share, exact_init=args.exact_init)
        # A cell: (method, budget, seed, precision); rows of files written
        # before the precision column are float32.
        have = {(r['method'], float(r['budget']), int(r['seed']),
                 r.get('precision') or 'float32') for r in table.rows()}
        cells = []
        for seed in args.seeds:
            for method in args.methods:
                for precision in args.precisions:
                    for budget in ([1.0] if method == 'full' else
                                   sorted(args.budgets, reverse=True)):
                        cells.append((method, budget, seed, precision))
        todo = [c for c in cells if c not in have]
        if len(todo) < len(cells):
            print(f'{backbone}: {len(cells) - len(todo)} cell(s) already in '
                  f'{csv_path}, skipped', flush=True)
        for method, budget, seed, precision in todo:
            out = runner.run(method, budget, seed, precision=precision)
            row = dict(dataset=label, backbone=backbone, method=method,
                       budget=budget, seed=seed, profile='converged',
                       commit=commit, note=out.get('note', ''),
                       eval_users=eval_users or '',
                       bucket_size=out.get('bucket_size') or '',
                       prune_epochs=out.get('prune_epochs', 0),
                       bucket_sweep=';'.join(
                           f'{b}:{v:.5f}' for b, v in
                           sorted(out.get('bucket_sweep', {}).items())),
                       precision=precision,
                       budget_bytes=out.get('budget_bytes') or '',
                       embedding_dim=config.dim,
                       exact_rows=out.get('exact_rows') or '',
                       exact_init=(args.exact_init if out.get('exact_rows')
                                   else ''),
                       distill=out.get('distill', 0.),
                       distill_sweep=';'.join(
                           f'{w:g}:{v:.5f}' for w, v in
                           sorted(out.get('distill_sweep', {}).items())))
            rec = out.get('recommender')
            if rec is not None:
                emb = rec.embedding
                report = memory_report(emb)  # At the model's precision.
                nnz = int(emb.num_nonzero())
                row.update(nonzero_params=nnz, bytes=report.nbytes,
                           bytes_format=report.formats(),
                           full_table_fraction=round(
                               nnz / emb.num_full_params, 6),
                           epochs=out['epochs'], best_epoch=out['best_epoch'],
                           seconds=round(out['seconds'], 1))
                for key in ('valid_ndcg@20', 'recall@10', 'ndcg@10',
                            'recall@20', 'ndcg@20'):
                    row[key] = round(float(out[key]), 6)
                base = getattr(emb, "base", emb)  # A hybrid's tables.
                if isinstance(base, CompositionalEmbedding):
                    stats = overlap_rate(base)
                    row['overlap_rate'] = round(stats.mean, 6)
                    row['overlap_independent'] = round(stats.independent, 6)
            table.append([row])
            print(f"{backbone} {method} budget {budget:g} seed {seed}"
                  + (f" {precision} ({row.get('bytes', '-')} of "
                     f"{row['budget_bytes']} bytes)" if in_bytes else '') +
                  f": ndcg@20 {row.get('ndcg@20', '-')} (valid "
                  f"{row.get('valid_ndcg@20', '-')}, b "
                  f"{row['bucket_size'] or '-'}, {row.get('epochs', 0)} "
                  f"epochs) {row['note']}", flush=True)
        logf.close()
        outputs.append(csv_path)
        print(f'wrote {csv_path}', flush=True)
    return outputs


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    args = parse_args(argv)
    if args.profile == 'converged':
        return run_converged(args, argv)
    from tqdm.auto import tqdm
    torch.set_num_threads(args.threads)
    folder = resolve_dataset(args.dataset, args.root)
    args.dataset_label = dataset_label(args.dataset)
    profile = args.profile_obj
    commit = git_commit()
    raw = train.load_interactions(folder)
    data = train.Interactions(raw.train, eval_subset(
        raw.test, raw.num_users, profile.eval_users), raw.num_users,
        raw.num_items)
    command = 'python ' + ' '.join([osp.relpath(__file__)] + list(
        sys.argv[1:] if argv is None else argv))
    print(f'{args.dataset_label}: {data.num_users} users, {data.num_items} '
          f'items, {data.train.size(1)} train pairs, '
          f'{int(torch.unique(data.test[0]).numel())} evaluation users; '
          f'profile {profile}; commit {commit}', flush=True)

    backbones = BACKBONES if args.backbone == 'both' else (args.backbone, )
    jobs = make_jobs(args.methods, args.budgets, args.seeds,
                     args.gamma_schedules)
    outputs = []
    for backbone in backbones:
        stem = f'{args.dataset_label}_{backbone}' + (f'_{args.tag}'
                                                     if args.tag else '')
        csv_path = osp.join(args.out, stem + '.csv')
        table = CSVLog(csv_path, fresh=args.fresh)
        bench = Benchmark(args, profile, backbone, data, commit)
        log_path = osp.join(args.out, stem + '.log')
        todo = [j for j in jobs if not table.done(j, profile.name)]
        if args.report_only:
            todo = []
        if len(todo) < len(jobs):
            print(f'{backbone}: {len(jobs) - len(todo)} job(s) already in '
                  f'{csv_path}, skipped', flush=True)
        with open(log_path, 'a') as logf:
            logf.write(f'# {command}\n# commit {commit}\n')

            def log(line: str) -> None:
                logf.write(line + '\n')
                logf.flush()

            bar = tqdm(todo, desc=backbone, dynamic_ncols=True)
            for job in bar:
                bar.set_postfix_str(job.label)
                rows = bench.run(job, log)
                table.append(rows)
                for r in rows:
                    tqdm.write(
                        f"{backbone} {_label(r)} budget {r['budget']:g} "
                        f"seed {r['seed']}: ndcg@20 {r.get('ndcg@20', '-')} "
                        f"bytes {r.get('bytes', '-')} "
                        f"({r.get('seconds', '-')}s)")
        rows = table.rows()
        title = (f'{args.dataset_label}, {backbone}: memory vs. NDCG '
                 f'(profile {profile.name})')
        header = '\n'.join([
            f'Command: `{command}`', '',
            f'Commit: `{commit}`; profile: `{profile}`', '',
            f'Hyper-parameters: `{bench.hyper}`', '',
            f'Evaluation: full ranking over all {data.num_items} items, '
            f'training items masked, on {bench.eval_users} test users'
            + (' (a fixed random subset)' if profile.eval_users else '') +
            '. Budget: fraction of the N*d values of the full table. Bytes: '
            'stored form (pyg_cerp.memory: float32 values; pruned tables as '
            'CSR or bitmap, whichever is smaller; hashes computed, not '
            'stored).'])
        md_path = osp.join(args.out, stem + '.md')
        write_markdown(rows, md_path, title, header)
        with open(md_path, 'a') as f:
            f.write('\n' + diagnostics_section(
                bench.num_entities, bench.hyper['bucket_size'],
                args.budgets) + '\n')
        png_path = osp.join(args.out, stem + '.png')
        write_plot(rows, png_path, title)
        outputs += [csv_path, md_path, png_path]
        print(f'wrote {csv_path}, {md_path}, {png_path}', flush=True)
    return outputs


if __name__ == '__main__':
    main()
