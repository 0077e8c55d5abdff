r"""Shared command-line plumbing of the CERP examples (not a library)."""
import argparse
import contextlib
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyg_cerp.train import CERPConfig, CERPRunner, Interactions  # noqa: E402
from pyg_cerp.train import interactions_from_dataset  # noqa: E402
from pyg_cerp.train import make_sampler  # noqa: E402
from pyg_cerp.train.cerp import ResumeError  # noqa: E402
from pyg_cerp.datasets import ChecksumError, open_folder  # noqa: E402
from pyg_cerp.utils.io import CheckpointError, FolderLock  # noqa: E402
from pyg_cerp.distributed import (destroy_distributed,  # noqa: E402
                                  init_distributed)

KNOWN = {'gowalla': 'gowalla', 'yelp2020': 'yelp2020'}


def add_common_arguments(parser: argparse.ArgumentParser,
                         defaults: CERPConfig) -> None:
    d = defaults
    parser.epilog = (
        'Data-parallel training: launch with torchrun, e.g. '
        '"torchrun --nproc_per_node=2 %(prog)s ARGS" on one machine (add '
        '--nnodes/--node-rank/--rdzv-endpoint for several); --batch-size is '
        'then the global batch. See docs/distributed.md.')
    parser.add_argument(
        '--dataset', default='gowalla',
        help="'gowalla', 'yelp2020' (looked up as <root>/<name>/raw/) or a "
        "path to a folder with LightGCN-format train.txt/test.txt (directly "
        "or under raw/). (default: gowalla)")
    parser.add_argument(
        '--root', default=os.environ.get('PYG_CERP_DATA'),
        help='Folder holding <dataset>/raw/ (default: $PYG_CERP_DATA)')
    parser.add_argument('--dim', type=int, default=d.dim,
                        help=f'Embedding size d (default: {d.dim})')
    parser.add_argument('--bucket-size', type=int, default=d.bucket_size,
                        help=f'Meta-table rows b (default: {d.bucket_size})')
    parser.add_argument(
        '--targets', type=float, nargs='+', default=list(d.targets),
        help=f'Memory targets (default: {list(d.targets)})')
    parser.add_argument(
        '--target-unit', choices=['full', 'meta'], default=d.target_unit,
        help="Targets as a fraction of the full N x d table ('full') or as "
        f"meta-table density ('meta') (default: {d.target_unit})")
    parser.add_argument(
        '--epochs', type=int, default=None,
        help=f'Epochs of the full-table baseline and of each retraining '
        f'(default: {d.baseline_epochs})')
    parser.add_argument(
        '--prune-epochs', type=int, default=d.prune_epochs,
        help=f'Epoch budget of phase 1 (default: {d.prune_epochs})')
    parser.add_argument(
        '--retrain-epochs', type=int, default=None,
        help='Epochs of phase 2 per target (default: --epochs)')
    parser.add_argument(
        '--finetune-epochs', type=int, default=d.finetune_epochs,
        help='Epochs of the one-phase variant per target (frozen masks, no '
        f'rewind; 0: skip) (default: {d.finetune_epochs})')
    parser.add_argument('--no-baseline', action='store_true',
                        help='Skip the full-table baseline')
    parser.add_argument('--batch-size', type=int, default=None,
                        help=f'Positives per step (default: {d.batch_size})')
    parser.add_argument('--lr', type=float, default=None,
                        help=f'Adam lr of the values (default: {d.lr})')
    parser.add_argument(
        '--prune-batch-size', type=int, default=None,
        help=f'Positives per step in phase 1 (default: --batch-size if '
        f'given, else {d.prune_schedule()[0]})')
    parser.add_argument(
        '--prune-lr', type=float, default=None,
        help=f'Adam lr of the values in phase 1 (default: --lr if given, '
        f'else {d.prune_schedule()[1]})')
    parser.add_argument(
        '--l2-reg', type=float, default=d.l2_reg,
        help=f"Weight of LightGCN's L2 penalty on the batch's ego "
        f"embeddings (default: {d.l2_reg})")
    parser.add_argument(
        '--threshold-lr', type=float, default=d.threshold_lr,
        help=f'Adam lr of the thresholds = pruning speed '
        f'(default: {d.threshold_lr})')
    parser.add_argument(
        '--threshold-weight-decay', type=float,
        default=d.threshold_weight_decay,
        help=f'Adam L2 penalty of the thresholds (default: '
        f'{d.threshold_weight_decay})')
    parser.add_argument(
        '--threshold-drive', type=float, default=d.threshold_drive,
        help=f'Constant push on the threshold logits in phase 1 (0: only '
        f'weight decay drives them) (default: {d.threshold_drive})')
    parser.add_argument(
        '--threshold-init', type=float, default=d.threshold_init,
        help=f'Initial threshold logit (default: {d.threshold_init})')
    parser.add_argument('--gamma', type=float, default=d.gamma_init,
                        help=f'Initial regulariser weight (default: '
                        f'{d.gamma_init})')
    parser.add_argument('--gamma-decay', type=float, default=d.gamma_decay,
                        help=f'Decay of gamma per period (default: '
                        f'{d.gamma_decay})')
    parser.add_argument('--gamma-decay-every', type=int,
                        default=d.gamma_decay_every,
                        help='Period of the gamma decay, in epochs '
                        f'(default: {d.gamma_decay_every})')
    parser.add_argument(
        '--eval-users', type=int, default=d.eval_users,
        help='Evaluate a seeded sample of this many users (default: '
        f'{d.eval_users}; None = all)')
    parser.add_argument('--seed', type=int, default=d.seed,
                        help=f'Seed (default: {d.seed})')
    parser.add_argument(
        '--subset', type=int, nargs=2, metavar=('MAX_USERS', 'MAX_ITEMS'),
        default=None,
        help='Keep only the first MAX_USERS users and MAX_ITEMS items (a '
        'tiny slice for smoke tests)')
    parser.add_argument('--out', default=None,
                        help='Results/checkpoint folder (default: '
                        'results/<script>-<dataset>)')
    parser.add_argument('--resume', action='store_true',
                        help='Continue from <out>/checkpoint.pt')
    parser.add_argument(
        '--stop-after', type=int, default=None,
        help='Stop after this many epochs in this call (resume later with '
        '--resume)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: what torch uses, '
                        'all cores; on a machine shared with other jobs, '
                        'fewer threads than free cores is faster)')
    parser.add_argument('--no-progress', action='store_true',
                        help='No tqdm progress bars')
    parser.add_argument(
        '--no-verify-checksums', action='store_true',
        help='Use the raw files of a known dataset (gowalla, yelp2020, '
        'yelp2020-lightgcn-pr16) even if they do not match its checksums')


def config_from_args(args: argparse.Namespace, defaults: CERPConfig,
                     parser: Optional[argparse.ArgumentParser] = None,
                     minimums: Optional[Dict[str, int]] = None,
                     **overrides) -> CERPConfig:
    r"""The configuration of the command-line arguments; every argument is
    validated here, before any data is read or model trained (with a
    :obj:`parser`, an invalid one exits through :meth:`parser.error`).
    :obj:`minimums` gives the smallest value of script-specific integer
    arguments (*e.g.*, :obj:`{'num_layers': 0}`)."""
    try:
        return _config_from_args(args, defaults, minimums or {}, overrides)
    except (TypeError, ValueError) as e:
        if parser is None:
            raise
        parser.error(str(e))
        raise  # pragma: no cover (parser.error exits)


def _config_from_args(args: argparse.Namespace, defaults: CERPConfig,
                      minimums: Dict[str, int],
                      overrides: Dict[str, Any]) -> CERPConfig:
    checks = dict(threads=1, stop_after=1, batch_size=1, prune_batch_size=1,
                  **minimums)
    for name, minimum in checks.items():
        value = getattr(args, name, None)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is not None and v < minimum:
                raise ValueError(f"--{name.replace('_', '-')} must be at "
                                 f"least {minimum} (got {v})")
    if args.subset is not None and min(args.subset) < 1:
        raise ValueError(f"--subset needs positive MAX_USERS MAX_ITEMS "
                         f"(got {args.subset})")
    epochs = defaults.baseline_epochs if args.epochs is None else args.epochs
    retrain = (args.retrain_epochs if args.retrain_epochs is not None else
               (defaults.retrain_epochs if args.epochs is None else epochs))
    values = defaults.to_dict()
    values.update(
        dim=args.dim, bucket_size=args.bucket_size, targets=args.targets,
        target_unit=args.target_unit,
        baseline_epochs=0 if args.no_baseline else epochs,
        prune_epochs=args.prune_epochs, retrain_epochs=retrain,
        finetune_epochs=args.finetune_epochs, l2_reg=args.l2_reg,
        threshold_lr=args.threshold_lr,
        threshold_weight_decay=args.threshold_weight_decay,
        threshold_drive=args.threshold_drive,
        threshold_init=args.threshold_init, gamma_init=args.gamma,
        gamma_decay=args.gamma_decay,
        gamma_decay_every=args.gamma_decay_every, seed=args.seed,
        eval_users=args.eval_users)
    # A batch size or lr given for training applies to phase 1 too, unless
    # phase 1 gets its own.
    for name, prune in (('batch_size', 'prune_batch_size'),
                        ('lr', 'prune_lr')):
        given, given_prune = getattr(args, name), getattr(args, prune)
        if given is not None:
            values[name] = given
            values[prune] = given
        if given_prune is not None:
            values[prune] = given_prune
    values.update(overrides)
    return CERPConfig.from_dict(values)


def resolve_dataset(dataset: str, root: Optional[str]) -> str:
    r"""Returns the folder holding the split, or exits with a clear error."""
    if os.path.isdir(dataset):
        return dataset
    name = dataset.lower()
    if name not in KNOWN and os.sep not in dataset:
        sys.exit(f"error: unknown --dataset {dataset!r}: use 'gowalla', "
                 f"'yelp2020' or a path to a LightGCN-format folder")
    if root is None:
        sys.exit(f"error: dataset {dataset!r} needs a data folder: pass "
                 f"--root DIR or set PYG_CERP_DATA (DIR/{name}/raw/"
                 f"train.txt and test.txt)")
    folder = os.path.join(root, KNOWN.get(name, dataset))
    if not os.path.isdir(folder):
        sys.exit(f"error: no folder {folder!r} (looked for dataset "
                 f"{dataset!r} under --root/PYG_CERP_DATA {root!r})")
    return folder


def slice_interactions(data: Interactions, max_users: int,
                       max_items: int) -> Interactions:
    r"""Keeps users ``< max_users`` and items ``< max_items``."""
    def keep(ei):
        return ei[:, (ei[0] < max_users) & (ei[1] < max_items)]
    train, test = keep(data.train), keep(data.test)
    num_users = min(max_users, data.num_users)
    num_items = min(max_items, data.num_items)
    return Interactions(train, test, num_users, num_items)


def load_data(args: argparse.Namespace) -> Interactions:
    r"""Reads the split through the dataset classes (checksummed for the known
    datasets, see :func:`pyg_cerp.datasets.open_folder`), or exits with a
    clear error; sets :obj:`args.data_info` (name, subset, raw-file SHA-256)
    for the checkpoint's data identity."""
    # Under torchrun, rank 0 reads (and caches) the data first.
    world = init_distributed()
    if not world.is_main:
        world.barrier()
    folder = resolve_dataset(args.dataset, args.root)
    try:
        dataset = open_folder(
            folder, verify_checksums=not getattr(args, 'no_verify_checksums',
                                                 False))
    except ChecksumError as e:
        sys.exit(f'error: {e} (on the command line: --no-verify-checksums)')
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f'error: {e}')
    data = interactions_from_dataset(dataset)
    if args.subset is not None:
        data = slice_interactions(data, *args.subset)
    args.data_info = dict(
        name=os.path.basename(os.path.normpath(folder)),
        subset=list(args.subset) if args.subset is not None else None,
        files={f: h['sha256'] for f, h in dataset.raw_hashes.items()})
    if world.is_main:
        world.barrier()
    return data


def results_table(results: Dict[str, Dict[str, Any]],
                  ks: List[int]) -> str:
    cols = [f'{m}@{k}' for m in ('recall', 'ndcg') for k in ks]
    lines = ['| model | memory (% of full) | meta density | ' +
             ' | '.join(cols) + ' |',
             '|' + '---|' * (3 + len(cols))]
    for name, res in results.items():
        meta = res.get('meta_density')
        meta = '-' if meta is None else f'{meta:.4f}'
        lines.append(f"| {name} | {100 * res['full_fraction']:.2f} | {meta} | "
                     + ' | '.join(f"{res[c]:.4f}" for c in cols) + ' |')
    return '\n'.join(lines)


def main_loop(args: argparse.Namespace, config: CERPConfig,
              data: Interactions, build_recommender: Callable,
              script: str) -> Dict[str, Any]:
    out = args.out or os.path.join(
        'results', f'{script}-{os.path.basename(os.path.normpath(args.dataset))}')
    os.makedirs(out, exist_ok=True)
    # Single process, or one of the ranks started by torchrun (see
    # docs/distributed.md): only rank 0 prints and writes results.
    world = init_distributed()
    log = print if world.is_main else (lambda *a, **k: None)
    if world.is_distributed:
        log(f'data-parallel: {world.world_size} ranks ({world.backend}), '
            f'global batch {config.batch_size}')
    log(f'{script}: {data.num_users} users, {data.num_items} items, '
        f'{data.train.size(1)} train / {data.test.size(1)} test pairs; '
        f'out={out}')
    log(f'config: {config}')

    def sampler(seed: int):
        return make_sampler(data.train, data.num_users, data.num_items,
                            config.num_negatives, config.batch_size, seed)

    kwargs: Dict[str, Any] = dict(out_dir=out,
                                  progress=not args.no_progress,
                                  data_info=getattr(args, 'data_info', None))
    runner = CERPRunner(config, data, build_recommender, sampler,
                        world=world, **kwargs)
    # Only rank 0 writes: it holds the lock on `out` until the results are
    # written, so a second run on the same folder fails at once.
    lock = FolderLock(out) if world.is_main else contextlib.nullcontext()
    try:
        with lock:
            return _run_and_write(args, config, data, runner, world, out,
                                  log)
    except RuntimeError as e:
        if 'is in use by another run' not in str(e):
            raise
        sys.exit(f'error: {e}')


def _run_and_write(args: argparse.Namespace, config: CERPConfig,
                   data: Interactions, runner: CERPRunner, world: Any,
                   out: str, log: Callable) -> Dict[str, Any]:
    start = time.perf_counter()
    # A failing rank raises (non-zero exit); torchrun then stops the others.
    try:
        state = runner.run(resume=args.resume, stop_after=args.stop_after)
    except (CheckpointError, ResumeError, FloatingPointError) as e:
        sys.exit(f'error: {e}')
    destroy_distributed(world)
    elapsed = time.perf_counter() - start
    if not world.is_main:
        return state
    if not state.get('finished'):
        log(f'Stopped after {args.stop_after} epoch(s) ({elapsed:.0f}s); '
            f'continue with --resume --out {out}')
        return state
    prune = state['prune'] or {}
    table = results_table(state['results'], list(config.ks))
    log(f'\nResults ({elapsed:.0f}s in this call):\n{table}')
    if prune.get('missing'):
        log('\nWARNING: ' + prune['message'])
    summary = dict(config=config.to_dict(), results=state['results'],
                   history=state['history'],
                   pruning=dict(reached=prune.get('reached', []),
                                missing=prune.get('missing', []),
                                message=prune.get('message', '')),
                   dataset=dict(name=args.dataset, num_users=data.num_users,
                                num_items=data.num_items,
                                num_train=int(data.train.size(1)),
                                num_test=int(data.test.size(1))),
                   seconds_this_call=elapsed, world_size=world.world_size)
    with open(os.path.join(out, 'results.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out, 'results.md'), 'w') as f:
        f.write(table + '\n')
    return state
