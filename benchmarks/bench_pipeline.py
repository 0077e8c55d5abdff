r"""The jobs of the quick and full profiles of ``benchmarks/memory_vs_ndcg.py``
through the CERP pipeline (:class:`pyg_cerp.train.CERPRunner`):
:class:`Benchmark` builds each method's embedding and backbone, runs a job
and turns the pipeline's results into CSV rows."""
import argparse
import math
import os.path as osp
import sys
import time
from typing import Any, Callable, Dict, List

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from bench_jobs import (GAMMA_SCHEDULES, Job, Profile,  # noqa: E402
                        resolve_hyper)
from pyg_cerp import train  # noqa: E402
from pyg_cerp.diagnostics import overlap_rate  # noqa: E402
from pyg_cerp.memory import memory_report  # noqa: E402
from pyg_cerp.nn import use_symmetric_propagation  # noqa: E402
from pyg_cerp.nn.baselines import (FullEmbedding, HashEmbedding,  # noqa: E402
                                   PEPEmbedding, QREmbedding)
from pyg_cerp.nn.compositional import CompositionalEmbedding  # noqa: E402
from pyg_cerp.nn.mlp import MLPScorer  # noqa: E402
from pyg_cerp.utils.adjacency import lightgcn_adjacency  # noqa: E402

PRUNED = ('cerp', 'cerp-noreg', 'pep')
#: The runner's method (its stages) of each quick/full-profile method.
RUNNER_METHODS = {'full': 'full', 'qr': 'qr-mul', 'hash': 'hash',
                  'cerp': 'cerp', 'cerp-noreg': 'cerp-noreg', 'pep': 'pep'}


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
