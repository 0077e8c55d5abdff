r"""Convergence of full-table LightGCN on Gowalla against wall-clock time:
Recall@20 / NDCG@20 (every user, full ranking, training items masked) after
each epoch, for named training schedules, in one run on one machine.

Schedules (``--schedules``; ``--schedule NAME:key=value,...`` adds one):

* ``default``: the project's (batch, negatives, lr, L2, lr decay), chosen on
  the validation split with this script (see ``benchmarks/results/
  convergence.md``);
* ``reference``: LightGCN-PyTorch's (batch 2048, one negative, Adam lr 1e-3,
  L2 1e-4 on the batch's ego embeddings, no decay).

Splits (``--split``): ``valid`` trains on ``gowalla-lightgcnpp/raw/
train.txt`` and evaluates on its ``valid.txt`` (for choosing schedules and
epoch counts); ``test`` trains on the CERP split ``gowalla/raw/train.txt``
(= train + valid) and evaluates on its ``test.txt`` (for reporting).

``seconds`` counts training only (sampling, steps); evaluations (one every
``--eval-every`` seconds of training, at an epoch end) are timed apart. Rows
are appended to the CSV as they come and a checkpoint is written after each
evaluation, so a killed run continues with ``--resume``.

Example (the committed run)::

    python benchmarks/convergence.py --root ../shared/data --split test \
        --schedules default,reference --minutes 30 \
        --out benchmarks/results/convergence
"""
import argparse
import csv
import math
import os
import os.path as osp
import time
from dataclasses import asdict, dataclass, fields
from typing import Dict, List, Optional

import torch
from torch_geometric.nn.models import LightGCN

from pyg_cerp.datasets import EDGE_TYPE, open_folder, validation_split
from pyg_cerp.nn import use_symmetric_propagation
from pyg_cerp.train import LightGCNRecommender, evaluate, make_optimizer, \
    make_sampler, train_epoch
from pyg_cerp.utils import lightgcn_adjacency
from pyg_cerp.utils.io import atomic_save, safe_load


@dataclass
class Schedule:
    r"""A training schedule of full-table LightGCN.

    Args:
        name (str): Its name in the CSV.
        batch (int): (user, positive) pairs per step.
        neg (int): Negatives per positive.
        lr (float): Adam learning rate.
        l2 (float): Weight of the L2 penalty on the batch's ego embeddings
            (:meth:`pyg_cerp.train.Recommender.l2_penalty`).
        decay (float): Learning-rate factor per epoch (1: constant).
    """
    name: str
    batch: int
    neg: int
    lr: float
    l2: float
    decay: float = 1.

    @classmethod
    def parse(cls, spec: str) -> 'Schedule':
        r"""``NAME:batch=8192,neg=5,lr=5e-3,l2=1e-4,decay=1``."""
        name, _, rest = spec.partition(':')
        values: Dict[str, float] = {}
        for item in filter(None, rest.split(',')):
            key, _, value = item.partition('=')
            if key not in {f.name for f in fields(cls)} - {'name'}:
                raise argparse.ArgumentTypeError(
                    f'unknown schedule field {key!r} in {spec!r}')
            values[key] = float(value)
        base = asdict(SCHEDULES.get(name, SCHEDULES['default']))
        base.update(values, name=name)
        base['batch'], base['neg'] = int(base['batch']), int(base['neg'])
        return cls(**base)


SCHEDULES = {
    'default': Schedule('default', batch=32768, neg=5, lr=2e-2, l2=1e-4),
    'reference': Schedule('reference', batch=2048, neg=1, lr=1e-3, l2=1e-4),
}

COLUMNS = ['schedule', 'split', 'epoch', 'seconds', 'recall@20', 'ndcg@20',
           'loss', 'eval_seconds', 'batch', 'neg', 'lr', 'l2', 'decay',
           'threads']


def load_split(root: str, split: str):
    if split == 'valid':
        data = validation_split(osp.join(root, 'gowalla-lightgcnpp'))
    else:
        data = open_folder(osp.join(root, 'gowalla'))[0]
    store = data[EDGE_TYPE]
    return (store.edge_index, store.edge_label_index,
            int(data['user'].num_nodes), int(data['item'].num_nodes))


def run_schedule(sched: Schedule, args: argparse.Namespace, data,
                 writer: csv.DictWriter, done_rows: List[Dict[str, str]],
                 out: str) -> None:
    train, test, num_users, num_items = data
    device = torch.device(args.device)
    adj = lightgcn_adjacency(train, num_users, num_items).to(device)
    torch.manual_seed(args.seed)
    model = LightGCN(num_users + num_items, args.dim, args.layers,
                     normalize=False)
    use_symmetric_propagation(model)
    rec = LightGCNRecommender(model, adj, num_users, num_items).to(device)
    opt = make_optimizer(rec, lr=sched.lr, weight_decay=0.)
    lr_sched = torch.optim.lr_scheduler.ExponentialLR(opt, sched.decay)
    sampler = make_sampler(train, num_users, num_items, sched.neg,
                           sched.batch, args.seed)
    ckpt = osp.join(out, f'checkpoint-{sched.name}-{args.split}.pt')
    epoch, seconds, since_eval = 0, 0., 0.
    if args.resume and done_rows and osp.exists(ckpt):
        state = safe_load(ckpt)
        rec.load_state_dict(state['model'])
        opt.load_state_dict(state['optimizer'])
        lr_sched.load_state_dict(state['lr_scheduler'])
        epoch, seconds = state['epoch'], state['seconds']
        print(f'[{sched.name}] resumed at epoch {epoch} ({seconds:.0f}s)')
    elif done_rows:
        print(f'[{sched.name}] rows exist but no checkpoint: start over '
              f'with a fresh --out or pass --resume with its checkpoint')
        return
    budget = 60. * args.minutes
    train_cpu, test_cpu = train.cpu(), test.cpu()
    while seconds < budget and epoch < args.max_epochs:
        stats = train_epoch(rec, opt, sampler, epoch, l2_reg=sched.l2,
                            progress=args.progress,
                            desc=f'{sched.name} {epoch + 1}')
        if device.type == 'cuda':
            torch.cuda.synchronize()
        lr_sched.step()
        epoch += 1
        seconds += stats['time']
        since_eval += stats['time']
        if not math.isfinite(stats['loss']):
            raise FloatingPointError(f'[{sched.name}] loss is '
                                     f'{stats["loss"]} at epoch {epoch}')
        last = seconds >= budget or epoch >= args.max_epochs
        if since_eval < args.eval_every and epoch > 1 and not last:
            continue
        since_eval = 0.
        start = time.perf_counter()
        res = evaluate(rec, train_cpu, test_cpu, ks=(20, ))
        eval_seconds = time.perf_counter() - start
        row = dict(schedule=sched.name, split=args.split, epoch=epoch,
                   seconds=f'{seconds:.1f}',
                   **{'recall@20': f"{res['recall@20']:.5f}",
                      'ndcg@20': f"{res['ndcg@20']:.5f}"},
                   loss=f"{stats['loss']:.5f}",
                   eval_seconds=f'{eval_seconds:.1f}', batch=sched.batch,
                   neg=sched.neg, lr=sched.lr, l2=sched.l2,
                   decay=sched.decay, threads=torch.get_num_threads())
        writer.writerow(row)
        args.csv_file.flush()
        atomic_save(dict(model=rec.state_dict(), optimizer=opt.state_dict(),
                         lr_scheduler=lr_sched.state_dict(), epoch=epoch,
                         seconds=seconds), ckpt, checksum=True)
        print(f"[{sched.name}] epoch {epoch:4d} {seconds:7.0f}s loss "
              f"{stats['loss']:.4f} recall@20 {res['recall@20']:.4f} "
              f"ndcg@20 {res['ndcg@20']:.4f} (eval {eval_seconds:.1f}s)",
              flush=True)


def read_rows(path: str) -> List[Dict[str, str]]:
    if not osp.exists(path):
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def report(rows: List[Dict[str, str]], out: str,
           levels=(0.15, 0.16, 0.17)) -> str:
    r"""Markdown summary (time and epoch at which each Recall@20 level is
    first reached, best and last values) and a PNG of both curves."""
    by: Dict[tuple, List[Dict[str, str]]] = {}
    for r in rows:
        by.setdefault((r['schedule'], r['split']), []).append(r)
    lines = ['| schedule | split | ' + ' | '.join(
        f'first R@20 >= {x}' for x in levels) + ' | last epoch | last s | '
        'last R@20 | last N@20 | best R@20 (epoch) |',
        '|---|---|' + '---:|' * (len(levels) + 5)]
    for (name, split), rs in by.items():
        cells = []
        for level in levels:
            hit = next((r for r in rs if float(r['recall@20']) >= level),
                       None)
            cells.append('-' if hit is None else
                         f"{float(hit['seconds']) / 60:.1f} min (ep "
                         f"{hit['epoch']})")
        best = max(rs, key=lambda r: float(r['recall@20']))
        last = rs[-1]
        lines.append(
            f"| {name} | {split} | " + ' | '.join(cells) +
            f" | {last['epoch']} | {float(last['seconds']):.0f} | "
            f"{float(last['recall@20']):.4f} | {float(last['ndcg@20']):.4f} "
            f"| {float(best['recall@20']):.4f} ({best['epoch']}) |")
    table = '\n'.join(lines)
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for (name, split), rs in by.items():
            t = [float(r['seconds']) / 60 for r in rs]
            for ax, key in zip(axes, ('recall@20', 'ndcg@20')):
                ax.plot(t, [float(r[key]) for r in rs], marker='.',
                        label=f'{name} ({split})')
        for ax, key in zip(axes, ('Recall@20', 'NDCG@20')):
            ax.set_xlabel('training wall time (min)')
            ax.set_ylabel(key)
            ax.grid(alpha=.3)
            ax.legend()
        for level in levels:
            axes[0].axhline(level, color='grey', lw=.5, ls='--')
        fig.suptitle('Full-table LightGCN on Gowalla (d=64, 3 layers)')
        fig.tight_layout()
        fig.savefig(out + '.png', dpi=110)
    except ImportError:  # pragma: no cover
        pass
    return table


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--root', default=os.environ.get('PYG_CERP_DATA'),
                        help='data folder holding gowalla/ and '
                        'gowalla-lightgcnpp/ (default: $PYG_CERP_DATA)')
    parser.add_argument('--split', choices=['valid', 'test'], default='test')
    parser.add_argument('--schedules', default='default,reference',
                        help='comma-separated names of built-in schedules')
    parser.add_argument('--schedule', action='append', default=[],
                        type=Schedule.parse, metavar='NAME:key=value,...',
                        help='an extra schedule, e.g. '
                        '"fast:batch=16384,neg=5,lr=1e-2,l2=1e-4,decay=0.98"')
    parser.add_argument('--minutes', type=float, default=30.,
                        help='training wall time per schedule')
    parser.add_argument('--max-epochs', type=int, default=10**6)
    parser.add_argument('--eval-every', type=float, default=60.,
                        help='evaluate after the first epoch that ends this '
                        'many training seconds after the last evaluation')
    parser.add_argument('--dim', type=int, default=64)
    parser.add_argument('--layers', type=int, default=3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads (default: torch default)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available()
                        else 'cpu')
    parser.add_argument('--out', default='benchmarks/results/convergence',
                        help='prefix of the .csv/.md/.png outputs and '
                        'checkpoints folder')
    parser.add_argument('--resume', action='store_true',
                        help='continue schedules that have rows and a '
                        'checkpoint')
    parser.add_argument('--report-only', action='store_true',
                        help='only rewrite the .md/.png from the CSV')
    parser.add_argument('--progress', action='store_true',
                        help='tqdm progress bars per epoch')
    args = parser.parse_args(argv)
    if args.root is None and not args.report_only:
        parser.error('pass --root or set PYG_CERP_DATA')
    if args.threads is not None:
        if args.threads < 1:
            parser.error('--threads must be >= 1')
        torch.set_num_threads(args.threads)
    if args.minutes <= 0 or args.eval_every < 0:
        parser.error('--minutes must be > 0 and --eval-every >= 0')
    names = [n for n in args.schedules.split(',') if n]
    unknown = [n for n in names if n not in SCHEDULES]
    if unknown:
        parser.error(f'unknown schedules {unknown} (built-in: '
                     f'{sorted(SCHEDULES)}; add others with --schedule)')
    schedules = [SCHEDULES[n] for n in names] + args.schedule

    csv_path = args.out + '.csv'
    ckpt_dir = args.out + '-checkpoints'
    if not args.report_only:
        os.makedirs(ckpt_dir, exist_ok=True)
        rows = read_rows(csv_path)
        if rows and not args.resume:
            parser.error(f'{csv_path} exists: pass --resume to continue it '
                         f'or choose another --out')
        data = load_split(args.root, args.split)
        print(f'Gowalla ({args.split}): {data[2]} users, {data[3]} items, '
              f'{data[0].size(1)} train / {data[1].size(1)} eval pairs; '
              f'threads {torch.get_num_threads()}, device {args.device}, '
              f'load average {os.getloadavg()[0]:.2f}', flush=True)
        new = not osp.exists(csv_path)
        with open(csv_path, 'a', newline='') as f:
            args.csv_file = f
            writer = csv.DictWriter(f, COLUMNS)
            if new:
                writer.writeheader()
            for sched in schedules:
                done = [r for r in rows if r['schedule'] == sched.name
                        and r['split'] == args.split]
                run_schedule(sched, args, data, writer, done, ckpt_dir)
    table = report(read_rows(csv_path), args.out)
    with open(args.out + '.md', 'w') as f:
        f.write(table + '\n')
    print(table)


if __name__ == '__main__':
    main()
