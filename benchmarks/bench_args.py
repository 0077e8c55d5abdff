r"""The command line of ``benchmarks/memory_vs_ndcg.py``
(:func:`parse_args`) and the parsers of its comma-separated lists."""
import argparse
import dataclasses
import os
import os.path as osp
import re
import sys
from typing import Callable, List, Optional, Sequence

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from bench_jobs import (ALL_METHODS, CONVERGED_METHODS,  # noqa: E402
                        GAMMA_SCHEDULES, HYBRID_METHODS, METHODS, PROFILES)
from pyg_cerp.nn.quant import PRECISIONS  # noqa: E402


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


def _choices(allowed: Sequence[str]) -> Callable[[str], List[str]]:
    def parse(text: str) -> List[str]:
        values = [x.strip() for x in text.split(',') if x.strip()]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(
                f'unknown {bad or text!r}; choose from {", ".join(allowed)}')
        return values
    return parse


def parse_args(argv: Optional[Sequence[str]],
               description: str) -> argparse.Namespace:
    r"""The parsed and checked command line :obj:`argv` (:obj:`None`:
    :obj:`sys.argv`) of ``memory_vs_ndcg.py``, whose help starts with
    :obj:`description`; for the quick and full profiles with the
    :class:`~bench_jobs.Profile` in :obj:`args.profile_obj`."""
    parser = argparse.ArgumentParser(
        description=description,
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
