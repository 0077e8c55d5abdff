r"""The command line of the resumable CERP pipeline, :obj:`python -m
pyg_cerp.train`: one option per field of :class:`CERPConfig` (name, type,
default and help generated from the dataclass), plus the options of the
pipeline (data, backbone, output folder, resuming, threads).

Run it as::

    python -m pyg_cerp.train --root ../shared/data            # the main job
    python -m pyg_cerp.train --backbone mlp --dataset path/to/folder
    torchrun --nproc_per_node=2 -m pyg_cerp.train --root ...  # data-parallel

It writes :obj:`<out>/results.json` (config, metrics, history, pruning
outcome), :obj:`<out>/results.md` (the results table) and
:obj:`<out>/checkpoint.pt` (resumable with :obj:`--resume`).
"""
import argparse
import contextlib
import dataclasses
import inspect
import json
import os
import os.path as osp
import re
import sys
import time
import typing
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.nn import Module

from pyg_cerp.datasets import NAMED_DATASETS, ChecksumError, open_folder
from pyg_cerp.distributed import destroy_distributed, init_distributed
from pyg_cerp.nn.quant import PRECISIONS
from pyg_cerp.train import (CERPConfig, CERPRunner, Interactions,
                            LightGCNRecommender, MLPRecommender,
                            interactions_from_dataset, make_sampler)
from pyg_cerp.train import ResumeError
from pyg_cerp.utils.io import CheckpointError, FolderLock

#: The base configuration of each backbone (:obj:`--backbone`). The MLP's
#: step is cheap (no propagation): smaller batches, and a sample of 1000
#: users is evaluated, since full ranking scores every (user, item) pair
#: through the network (:obj:`--eval-users none` for the full protocol).
BACKBONES: Dict[str, CERPConfig] = {
    # CERP as the paper means it (learned thresholds, the regulariser, a
    # pruning plan in epochs, b derived from N and the targets); the old
    # default (constant threshold drive) is --preset drive.
    'lightgcn': CERPConfig.preset('faithful'),
    'mlp': CERPConfig(batch_size=4096, lr=1e-3, threshold_lr=1e-2,
                      baseline_epochs=3, prune_epochs=5, retrain_epochs=3,
                      eval_users=1000, l2_reg=0.),
}
PRESETS = ('faithful', 'official', 'legacy', 'drive')
CHOICES = {'target_unit': ('full', 'meta', 'bytes'),
           'gamma_unit': ('official', 'mean'),
           'precision': PRECISIONS}
#: Older option names that stay valid.
ALIASES = {'gamma_init': ['--gamma']}


# Options generated from CERPConfig ##########################################

def _clean(text: str) -> str:
    # Sphinx roles to plain text, the first sentence, '%' escaped.
    text = re.sub(r':\w+:`~?(?:[\w.]+\.)?([^`]+)`', r'\1', text)
    text = re.sub(r'\\(?:mathbf|mathrm|text)\{([^}]*)\}', r'\1', text)
    text = re.sub(r'\\(\w+) ?', r'\1 ', text).replace('{', '').replace(
        '}', '')
    text = re.sub(r'\s*\(default: [^)]*\)\s*$', '', text.strip())
    depth, end = 0, len(text)
    for i, c in enumerate(text):
        depth += (c == '(') - (c == ')')
        if c == '.' and depth == 0 and text[i + 1:i + 2] in (' ', ''):
            end = i + 1
            break
    return ' '.join(text[:end].split()).replace('%', '%%')


def field_docs(cls: type) -> Dict[str, str]:
    r"""The help of every field of the dataclass :obj:`cls`: its
    :obj:`metadata['help']`, else the first sentence of its entry in the
    docstring's :obj:`Args:` section."""
    docs: Dict[str, str] = {}
    lines = (inspect.getdoc(cls) or '').split('\n')
    if 'Args:' in lines:
        name = None
        for line in lines[lines.index('Args:') + 1:]:
            m = re.match(r'^    (\w+) \([^)]*\)(?:, optional)?:(.*)$', line)
            if m:
                name = m.group(1)
                docs[name] = m.group(2)
            elif name is not None and line.startswith('     '):
                docs[name] += ' ' + line.strip()
            elif line.strip():
                name = None
    out = {k: _clean(v) for k, v in docs.items()}
    for f in dataclasses.fields(cls):
        if 'help' in f.metadata:
            out[f.name] = f.metadata['help']
    return out


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        return None if text.lower() == 'none' else parse(text)
    convert.__name__ = getattr(parse, '__name__', 'value')
    return convert


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ' '.join(map(str, value))
    return str(value)


def add_config_arguments(parser: argparse.ArgumentParser,
                         defaults: Optional[CERPConfig] = None) -> None:
    r"""Adds an option :obj:`--field-name` per field of :class:`CERPConfig`
    (tuples: several values; :obj:`Optional`: also :obj:`none`; booleans:
    :obj:`--x` / :obj:`--no-x`), and :obj:`--preset`, :obj:`--epochs`,
    :obj:`--no-baseline`. Options that are not given are absent from the
    parsed namespace, see :func:`config_from_args`.

    Args:
        parser (argparse.ArgumentParser): The parser.
        defaults (CERPConfig, optional): The defaults shown in the help.
            (default: the :obj:`'lightgcn'` backbone's)
    """
    defaults = defaults or BACKBONES['lightgcn']
    group = parser.add_argument_group(
        'configuration (CERPConfig fields; defaults of --backbone lightgcn)')
    group.add_argument(
        '--preset', choices=PRESETS, default=argparse.SUPPRESS,
        help='Start from CERPConfig.preset(NAME) instead of the backbone '
        'defaults (the options below override it)')
    group.add_argument(
        '--epochs', type=int, default=argparse.SUPPRESS,
        help='Sets --baseline-epochs and --retrain-epochs at once')
    group.add_argument('--no-baseline', action='store_true',
                       default=argparse.SUPPRESS,
                       help='Skip the full-table baseline '
                       '(--baseline-epochs 0)')
    docs = field_docs(CERPConfig)
    hints = typing.get_type_hints(CERPConfig)
    for f in dataclasses.fields(CERPConfig):
        tp, optional = hints[f.name], False
        args = typing.get_args(tp)
        if typing.get_origin(tp) is typing.Union and type(None) in args:
            tp, optional = next(a for a in args if a is not type(None)), True
        kwargs: Dict[str, Any] = dict(default=argparse.SUPPRESS)
        if tp is bool:
            kwargs['action'] = argparse.BooleanOptionalAction
        else:
            if typing.get_origin(tp) in (tuple, list):
                tp, kwargs['nargs'] = typing.get_args(tp)[0], '+'
            kwargs['type'] = _optional(tp) if optional else tp
            if f.name in CHOICES:
                kwargs['choices'] = CHOICES[f.name]
            else:
                kwargs['metavar'] = tp.__name__.upper()
        default = _show(getattr(defaults, f.name))
        text = docs.get(f.name, '')
        kwargs['help'] = f'{text} (default: {default})'.strip()
        group.add_argument('--' + f.name.replace('_', '-'),
                           *ALIASES.get(f.name, []), dest=f.name, **kwargs)


def config_from_args(args: argparse.Namespace,
                     defaults: Optional[CERPConfig] = None) -> CERPConfig:
    r"""The :class:`CERPConfig` of parsed options: :obj:`defaults` (or
    :meth:`CERPConfig.preset` of :obj:`--preset`) with every given field
    replaced. As in the examples before, :obj:`--epochs` sets the baseline
    and retraining epochs, :obj:`--no-baseline` skips the baseline, and a
    given :obj:`--batch-size` / :obj:`--lr` applies to phase 1 too unless
    :obj:`--prune-batch-size` / :obj:`--prune-lr` is given.

    Raises:
        ValueError: If a value is invalid (see :class:`CERPConfig`).
    """
    given = {f.name: getattr(args, f.name)
             for f in dataclasses.fields(CERPConfig) if hasattr(args, f.name)}
    for name, prune in (('batch_size', 'prune_batch_size'),
                        ('lr', 'prune_lr')):
        if name in given and prune not in given:
            given[prune] = given[name]
    if getattr(args, 'epochs', None) is not None:
        given.setdefault('baseline_epochs', args.epochs)
        given.setdefault('retrain_epochs', args.epochs)
    if getattr(args, 'no_baseline', False):
        given['baseline_epochs'] = 0
    if getattr(args, 'preset', None):
        return CERPConfig.preset(args.preset, **given)
    values = (defaults or BACKBONES['lightgcn']).to_dict()
    values.update(given)
    return CERPConfig.from_dict(values)


# The pipeline ###############################################################

def _at_least(minimum: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f'must be at least {minimum} (got {value})')
        return value
    convert.__name__ = 'int'
    return convert


def _device(text: str) -> torch.device:
    # Checked before any data is read.
    try:
        device = torch.device(text)
    except RuntimeError as e:
        raise argparse.ArgumentTypeError(str(e))
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f'{text!r} asked for, but torch sees no CUDA device')
    if device.type not in ('cpu', 'cuda'):
        raise argparse.ArgumentTypeError(
            f"'cpu' or 'cuda[:N]' (got {text!r})")
    return device


def build_parser() -> argparse.ArgumentParser:
    r"""The parser of :obj:`python -m pyg_cerp.train`."""
    parser = argparse.ArgumentParser(
        prog='python -m pyg_cerp.train',
        description='CERP: full-table baseline, pruning to each memory '
        'target (phase 1) and retraining per target (phase 2), with '
        'resumable checkpoints.',
        epilog='Data-parallel training: "torchrun --nproc_per_node=2 -m '
        'pyg_cerp.train ARGS" on one machine (add --nnodes/--node-rank/'
        '--rdzv-endpoint for several); --batch-size is then the global '
        'batch. See docs/distributed.md.')
    group = parser.add_argument_group('pipeline')
    group.add_argument(
        '--dataset', default='gowalla',
        help="'gowalla' or 'yelp2020' (the checksummed dataset classes, "
        "<root>/<name>/raw/) or a folder with LightGCN-format "
        "train.txt/test.txt (directly or under raw/) (default: gowalla)")
    group.add_argument(
        '--root', default=os.environ.get('PYG_CERP_DATA'),
        help='Folder holding <dataset>/raw/ (default: $PYG_CERP_DATA)')
    group.add_argument('--backbone', choices=sorted(BACKBONES),
                       default='lightgcn',
                       help='The model (default: lightgcn)')
    group.add_argument('--num-layers', type=_at_least(0), default=3,
                       help='LightGCN layers (default: 3)')
    group.add_argument('--hidden', type=_at_least(1), nargs='+',
                       default=[128, 64],
                       help='MLP hidden sizes (default: 128 64)')
    group.add_argument(
        '--subset', type=_at_least(1), nargs=2,
        metavar=('MAX_USERS', 'MAX_ITEMS'),
        help='Keep only the first MAX_USERS users and MAX_ITEMS items (a '
        'tiny slice for smoke tests)')
    group.add_argument('--out', help='Results/checkpoint folder (default: '
                       'results/<backbone>_cerp-<dataset>)')
    group.add_argument('--resume', action='store_true',
                       help='Continue from <out>/checkpoint.pt')
    group.add_argument(
        '--stop-after', type=_at_least(1),
        help='Stop after this many epochs in this call (continue later '
        'with --resume)')
    group.add_argument(
        '--threads', type=_at_least(1),
        help='torch CPU threads (default: what torch uses, all cores; on a '
        'machine shared with other jobs, fewer threads than free cores is '
        'faster)')
    group.add_argument(
        '--device', type=_device, default='cpu',
        help="Where the models train and rank: 'cpu', 'cuda' or 'cuda:N' "
        "(default: cpu)")
    group.add_argument('--no-progress', action='store_true',
                       help='No tqdm progress bars')
    group.add_argument(
        '--no-verify-checksums', action='store_true',
        help='Use the raw files of a known dataset (gowalla, yelp2020, '
        'yelp2020-lightgcn-pr16) even if they do not match its checksums')
    add_config_arguments(parser)
    return parser


def dataset_folder(dataset: str, root: Optional[str]) -> str:
    r"""The folder of :obj:`--dataset`: :obj:`dataset` itself if it is a
    folder, else :obj:`root/dataset` (:obj:`'gowalla'`, :obj:`'yelp2020'` or
    any other dataset folder under :obj:`root`, *e.g.*
    :obj:`'gowalla-lightgcnpp'`).

    Raises:
        ValueError: No :obj:`root`, or no such folder.
    """
    if osp.isdir(dataset):
        return dataset
    if root is None:
        raise ValueError(f"dataset {dataset!r} needs a data folder: pass "
                         f"--root DIR or set PYG_CERP_DATA (DIR/"
                         f"{dataset.lower()}/raw/train.txt and test.txt)")
    known = dataset.lower() in NAMED_DATASETS
    folder = osp.join(root, dataset.lower() if known else dataset)
    if osp.isdir(folder):
        return folder
    if known or os.sep in dataset:
        raise ValueError(f"no folder {folder!r} (looked for dataset "
                         f"{dataset!r} under --root/PYG_CERP_DATA {root!r})")
    raise ValueError(f"unknown --dataset {dataset!r}: no folder {folder!r}; "
                     f"use 'gowalla', 'yelp2020', another dataset folder "
                     f"under --root or a path to a LightGCN-format folder")


def load_data(args: argparse.Namespace) -> Tuple[Interactions,
                                                 Dict[str, Any]]:
    r"""The split of :obj:`args` (rank 0 reads and caches it first under
    :obj:`torchrun`) and its description for the checkpoint (name, subset,
    raw-file SHA-256); exits with a clear error on a bad dataset."""
    world = init_distributed()
    if not world.is_main:
        world.barrier()
    try:
        folder = dataset_folder(args.dataset, args.root)
        dataset = open_folder(folder, not args.no_verify_checksums)
    except ChecksumError as e:
        sys.exit(f'error: {e} (on the command line: --no-verify-checksums)')
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        sys.exit(f'error: {e}')
    data = interactions_from_dataset(dataset)
    if args.subset is not None:
        data = data.subset(*args.subset)
    info = dict(name=osp.basename(osp.normpath(folder)),
                subset=list(args.subset) if args.subset else None,
                files={f: h['sha256'] for f, h in dataset.raw_hashes.items()})
    if world.is_main:
        world.barrier()
    return data, info


def recommender_builder(args: argparse.Namespace, config: CERPConfig,
                        data: Interactions) -> Callable[[Module], Module]:
    r"""Builds the :obj:`--backbone` around an embedding (PyG's
    :class:`~torch_geometric.nn.models.LightGCN` with the fused symmetric
    propagation, or :class:`~pyg_cerp.nn.MLPScorer`) on :obj:`--device`
    (the training step moves each batch there)."""
    device = getattr(args, 'device', torch.device('cpu'))
    if args.backbone == 'mlp':
        from pyg_cerp.nn import MLPScorer

        def build_mlp(embedding: Module) -> MLPRecommender:
            return MLPRecommender(MLPScorer(
                data.num_users, data.num_items, embedding,
                hidden_channels=args.hidden)).to(device)
        return build_mlp

    from torch_geometric.nn.models import LightGCN

    from pyg_cerp.nn import use_symmetric_propagation
    from pyg_cerp.utils import lightgcn_adjacency
    adj = lightgcn_adjacency(data.train, data.num_users,
                             data.num_items).to(device)

    def build_lightgcn(embedding: Module) -> LightGCNRecommender:
        model = LightGCN(data.num_users + data.num_items, config.dim,
                         args.num_layers, normalize=False)
        use_symmetric_propagation(model)
        model.embedding = embedding
        model.reset_parameters()
        return LightGCNRecommender(model, adj, data.num_users,
                                   data.num_items).to(device)
    return build_lightgcn


def results_table(results: Dict[str, Dict[str, Any]],
                  ks: Sequence[int]) -> str:
    r"""The markdown table of :obj:`results.md`."""
    cols = [f'{m}@{k}' for m in ('recall', 'ndcg') for k in ks]
    lines = ['| model | memory (% of full) | meta density | ' +
             ' | '.join(cols) + ' |', '|' + '---|' * (3 + len(cols))]
    for name, res in results.items():
        meta = res.get('meta_density')
        meta = '-' if meta is None else f'{meta:.4f}'
        lines.append(f"| {name} | {100 * res['full_fraction']:.2f} | {meta} | "
                     + ' | '.join(f"{res[c]:.4f}" for c in cols) + ' |')
    return '\n'.join(lines)


def run(args: argparse.Namespace, config: CERPConfig, data: Interactions,
        data_info: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    r"""Runs (or resumes) the pipeline of :obj:`args` and writes the results
    files; returns the :class:`CERPRunner` state."""
    out = args.out or osp.join('results', f'{args.backbone}_cerp-'
                               f'{osp.basename(osp.normpath(args.dataset))}')
    os.makedirs(out, exist_ok=True)
    world = init_distributed()  # Only rank 0 prints and writes.
    log = print if world.is_main else (lambda *a, **k: None)
    if world.is_distributed:
        log(f'data-parallel: {world.world_size} ranks ({world.backend}), '
            f'global batch {config.batch_size}')
    log(f'{args.backbone}_cerp: {data.num_users} users, {data.num_items} '
        f'items, {data.train.size(1)} train / {data.test.size(1)} test '
        f'pairs; out={out}')
    log(f'config: {config}')

    def sampler(seed: int):
        return make_sampler(data.train, data.num_users, data.num_items,
                            config.num_negatives, config.batch_size, seed)

    runner = CERPRunner(config, data, recommender_builder(args, config, data),
                        sampler, out_dir=out, progress=not args.no_progress,
                        data_info=data_info, world=world)
    # Rank 0 holds the lock on `out` until the results are written, so a
    # second run on the same folder fails at once.
    lock = FolderLock(out) if world.is_main else contextlib.nullcontext()
    start = time.perf_counter()
    try:
        with lock:
            state = runner.run(resume=args.resume, stop_after=args.stop_after)
            destroy_distributed(world)
            if world.is_main:
                _write(args, config, data, state, out, world.world_size,
                       time.perf_counter() - start)
    except (CheckpointError, ResumeError, FloatingPointError) as e:
        sys.exit(f'error: {e}')
    except RuntimeError as e:  # A failing rank raises: torchrun stops all.
        if 'is in use by another run' not in str(e):
            raise
        sys.exit(f'error: {e}')
    return state


def _write(args: argparse.Namespace, config: CERPConfig, data: Interactions,
           state: Dict[str, Any], out: str, world_size: int,
           elapsed: float) -> None:
    if not state.get('finished'):
        print(f'Stopped after {args.stop_after} epoch(s) ({elapsed:.0f}s); '
              f'continue with --resume --out {out}')
        return
    prune = state['prune'] or {}
    table = results_table(state['results'], list(config.ks))
    print(f'\nResults ({elapsed:.0f}s in this call):\n{table}')
    if prune.get('missing'):
        print('\nWARNING: ' + prune['message'])
    summary = dict(config=config.to_dict(), results=state['results'],
                   history=state['history'],
                   pruning={k: prune.get(k, d) for k, d in (
                       ('reached', []), ('missing', []), ('message', ''))},
                   dataset=dict(name=args.dataset, num_users=data.num_users,
                                num_items=data.num_items,
                                num_train=int(data.train.size(1)),
                                num_test=int(data.test.size(1))),
                   seconds_this_call=elapsed, world_size=world_size)
    with open(osp.join(out, 'results.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    with open(osp.join(out, 'results.md'), 'w') as f:
        f.write(table + '\n')


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    r"""The entry point of :obj:`python -m pyg_cerp.train`: every argument is
    checked before any data is read (an invalid one exits with status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args, BACKBONES[args.backbone])
    except (TypeError, ValueError) as e:
        parser.error(str(e))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data, info = load_data(args)
    return run(args, config, data, info)

