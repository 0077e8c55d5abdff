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
import os.path as osp
import sys
from typing import List, Optional, Sequence

import torch
from torch import Tensor

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
# Its modules (bench_*.py), also when it is loaded from its path.
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import bench_args  # noqa: E402
from bench_jobs import make_jobs  # noqa: E402
from bench_pipeline import Benchmark  # noqa: E402
from bench_results import (BYTES_COLUMNS, CONVERGED_COLUMNS,  # noqa: E402
                           CSVLog, diagnostics_section, git_commit,
                           row_label, write_markdown, write_plot)
from pyg_cerp import train  # noqa: E402
from pyg_cerp.diagnostics import overlap_rate  # noqa: E402
from pyg_cerp.memory import memory_report  # noqa: E402
from pyg_cerp.nn import use_symmetric_propagation  # noqa: E402
from pyg_cerp.nn.compositional import CompositionalEmbedding  # noqa: E402
from pyg_cerp.nn.mlp import MLPScorer  # noqa: E402
from pyg_cerp.train.cli import dataset_folder  # noqa: E402
from pyg_cerp.train.recommender import chunked_scores  # noqa: E402
from pyg_cerp.utils.adjacency import lightgcn_adjacency  # noqa: E402

BACKBONES = ('lightgcn', 'mlp')


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


#: :func:`pyg_cerp.train.recommender.chunked_scores` (the harness' old name).
chunked_score_function = chunked_scores


# Command line ################################################################

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    r"""The command line (:func:`bench_args.parse_args`), described by the
    first paragraph of this module's docstring."""
    return bench_args.parse_args(argv, __doc__.split('\n\n')[0])


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
                        f"{backbone} {row_label(r)} budget {r['budget']:g} "
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
