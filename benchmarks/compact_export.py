r"""Compact export and serving of CERP embeddings on Gowalla: bytes on disk,
bytes resident after load, lookup latency, top-20 agreement with the
training model and NDCG@20 per precision, at 10%/5%/1% memory budgets.

Source of the embeddings, per budget (printed in the output):

* ``--checkpoint PATH``: a checkpoint of the training pipeline
  (``pyg_cerp.train``; the pruned model saved when the budget was reached,
  ``state['prune']['target_models']``) or any file holding a LightGCN/
  CompositionalEmbedding state dict (keys ending in ``embedding.P``, ...).
  NDCG@20 is then meaningful.
* otherwise ``synthetic``: a Xavier-initialised ``CompositionalEmbedding``
  pruned to the budget by setting its thresholds so that exactly the
  budget's largest-magnitude values survive (untrained: bytes, latency and
  agreement are real, NDCG@20 is not reported).

Examples::

    python benchmarks/compact_export.py --root /work/shared/data
    python benchmarks/compact_export.py --checkpoint runs/lightgcn/checkpoint.pt
    python benchmarks/compact_export.py --synthetic-only   # no data needed
"""
import argparse
import gc
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from torch_geometric.nn.models import LightGCN  # noqa: E402

from pyg_cerp import serving  # noqa: E402
from pyg_cerp.metrics import deterministic_topk  # noqa: E402
from pyg_cerp.nn import (CompactEmbedding, CompositionalEmbedding,  # noqa
                         symmetric_spmm, use_symmetric_propagation)
from pyg_cerp.utils import lightgcn_adjacency  # noqa: E402

NUM_USERS, NUM_ITEMS = 29858, 40981
PRECISIONS = ('float32', 'float16', 'int8')


# Data ########################################################################

def find_gowalla(root: Optional[str]) -> Optional[str]:
    root = root or os.environ.get('PYG_CERP_DATA')
    if not root:
        return None
    for cand in (os.path.join(root, 'gowalla'), root):
        if os.path.isfile(os.path.join(cand, 'raw', 'train.txt')):
            return cand
    return None


def _read_split(path: str) -> Tensor:
    users: List[int] = []
    items: List[int] = []
    with open(path) as f:
        for line in f:
            ids = line.split()
            if len(ids) > 1:
                users.extend([int(ids[0])] * (len(ids) - 1))
                items.extend(int(i) for i in ids[1:])
    return torch.tensor([users, items], dtype=torch.long)


def load_gowalla(folder: str) -> Tuple[Tensor, Tensor, int, int]:
    r"""Returns (train, test, num_users, num_items); uses
    :class:`pyg_cerp.datasets.Gowalla` when available."""
    try:
        from pyg_cerp.datasets import Gowalla
        with tempfile.TemporaryDirectory() as tmp:
            data = Gowalla(folder, processed_dir=tmp, log=False)[0]
        store = data['user', 'rates', 'item']
        return (store.edge_index, store.edge_label_index,
                data['user'].num_nodes, data['item'].num_nodes)
    except ImportError:  # Datasets not available: parse the files.
        train = _read_split(os.path.join(folder, 'raw', 'train.txt'))
        test = _read_split(os.path.join(folder, 'raw', 'test.txt'))
        nu = int(max(train[0].max(), test[0].max())) + 1
        ni = int(max(train[1].max(), test[1].max())) + 1
        return train, test, nu, ni


def synthetic_graph(nu: int, ni: int, num_edges: int,
                    seed: int = 0) -> Tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    edges = torch.stack([torch.randint(nu, (num_edges, ), generator=gen),
                         torch.randint(ni, (num_edges, ), generator=gen)])
    return edges[:, :num_edges * 4 // 5], edges[:, num_edges * 4 // 5:]


# Embeddings ##################################################################

def prune_to_budget(emb: CompositionalEmbedding, budget: float) -> str:
    r"""Sets both threshold logits so that the ``budget * N * d``
    largest-magnitude values of P and the used rows of Q survive."""
    nnz = int(round(budget * emb.num_full_params))
    with torch.no_grad():
        nq = emb.num_q_rows_used
        emb.Q[nq:] = 0.  # never used: prune them outright
        mags = torch.cat([emb.P.abs().flatten(), emb.Q[:nq].abs().flatten()])
        if nnz >= mags.numel():
            emb.threshold_P.fill_(-100.)
            emb.threshold_Q.fill_(-100.)
            return 'synthetic (budget above 2bd: nothing pruned)'
        top = mags.topk(nnz + 1).values
        tau = float((top[-1] + top[-2]) / 2)  # between the kept and the next
        logit = math.log(tau / (1 - tau))
        emb.threshold_P.fill_(logit)
        emb.threshold_Q.fill_(logit)
    return 'synthetic (Xavier init, pruned by thresholds, untrained)'


def from_checkpoint(path: str, budget: float, n: int, d: int,
                    b: int) -> Tuple[CompositionalEmbedding, Tensor, str]:
    r"""The pruned model of a pipeline checkpoint at :obj:`budget` (or the
    state dict in :obj:`path`), and its LightGCN :math:`\alpha`."""
    state = torch.load(path, map_location='cpu', weights_only=True)
    source = f'checkpoint {os.path.basename(path)}'
    sd = state
    if isinstance(state, dict) and isinstance(state.get('prune'), dict):
        models = state['prune'].get('target_models', {})
        key = f'{budget:g}'
        if key not in models:
            raise KeyError(f"'{path}' has no model for budget {key} "
                           f"(has {sorted(models)})")
        sd = models[key]
        cfg = state.get('config', {})
        d, b = cfg.get('dim', d), cfg.get('bucket_size', b)
        source += f" (pruning phase, target {key} reached)"
    prefix = next((k[:-1] for k in sd if k.endswith('embedding.P')), None)
    if prefix is None:
        raise KeyError(f"No '*embedding.P' in '{path}'")
    emb = CompositionalEmbedding(n, d, b)
    emb.load_state_dict({k[len(prefix):]: v for k, v in sd.items()
                         if k.startswith(prefix) and '.' not in
                         k[len(prefix):]})
    alpha_key = next((k for k in sd if k.endswith('alpha')), None)
    alpha = sd[alpha_key].float() if alpha_key else torch.full((4, ), .25)
    return emb, alpha, source


def quick_train(emb: CompositionalEmbedding, adj: Tensor, train: Tensor,
                nu: int, ni: int, alpha: Tensor, epochs: int,
                batch_size: int = 16384, lr: float = 5e-3,
                reg: float = 1e-4, seed: int = 0) -> List[str]:
    r"""BPR training of LightGCN over :obj:`emb` (one uniform negative per
    positive, Adam on the values only; thresholds / masks as they are)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([emb.P, emb.Q], lr=lr)
    num_edges = train.size(1)
    log = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(num_edges, generator=gen)
        total = 0.
        for start in range(0, num_edges, batch_size):
            idx = perm[start:start + batch_size]
            u, i = train[0, idx], train[1, idx] + nu
            j = torch.randint(ni, (idx.numel(), ), generator=gen) + nu
            x0 = emb.weight
            x, out = x0, x0 * alpha[0]
            for a in alpha[1:]:
                x = symmetric_spmm(adj, x)  # backward: adj @ grad
                out = out + x * a
            pos = (out[u] * out[i]).sum(-1)
            neg = (out[u] * out[j]).sum(-1)
            loss = -torch.nn.functional.logsigmoid(pos - neg).mean()
            loss = loss + reg * (x0[u].pow(2) + x0[i].pow(2) +
                                 x0[j].pow(2)).sum() / (2 * idx.numel())
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * idx.numel()
        log.append(f'epoch {epoch + 1}: loss {total / num_edges:.4f} '
                   f'({time.perf_counter() - t0:.0f}s)')
        print(f'  [quick-train] {log[-1]}', file=sys.stderr, flush=True)
    return log


# Measurements ################################################################

def median_us(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e6 * statistics.median(times)


_RSS_SCRIPT = r'''
import ctypes, gc, os, sys, tempfile, torch
sys.path.insert(0, sys.argv[3])
from pyg_cerp.nn import CompositionalEmbedding
from pyg_cerp.nn.compact import CompactEmbedding
from torch_geometric.nn.models import LightGCN
from pyg_cerp import serving
libc = ctypes.CDLL('libc.so.6')
def rss():
    gc.collect()
    libc.malloc_trim(0)
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
torch.set_num_threads(1)
kind, path, decode, layers, n, d = sys.argv[1], sys.argv[2], sys.argv[4], *map(
    int, sys.argv[5:8])
def lgcn(n, d):
    model = LightGCN(n, d, layers, normalize=False)
    model.embedding = CompactEmbedding(n, d, 1, decode=decode)
    return model
tmp = tempfile.mkdtemp()  # warm up every code path
for layout in ('csr', 'bitmap'):
    for dtype in ('float32', 'float16', 'int8'):
        small = CompositionalEmbedding(100, 8, 10, threshold_init=-2.)
        small.to_compact(dtype, layout).save(tmp + '/s.pt')
        for dec in ('cache', 'lookup'):
            CompactEmbedding.load(tmp + '/s.pt', dec)(torch.arange(5))
if kind == 'lgcn':
    small = LightGCN(30, 8, layers)
    small.embedding = CompositionalEmbedding(30, 8, 10)
    serving.save(serving.export(small), tmp + '/r.pt')
    serving.load(lgcn(30, 8), tmp + '/r.pt')
    model = lgcn(n, d)
before = rss()
if kind == 'lgcn':
    obj = serving.load(model, path)
else:
    obj = CompactEmbedding.load(path, decode=decode)
print(rss() - before)
'''


def rss_delta(kind: str, path: str, decode: str,
              sizes: Tuple[int, int, int] = (3, 1, 1)) -> Optional[int]:
    r"""RSS growth of a fresh process when loading :obj:`path`, after
    warming up the code paths on a tiny file; glibc is told to return freed
    memory (fixed mmap threshold, :obj:`malloc_trim`), so load-time
    temporaries do not count."""
    if not os.path.exists('/proc/self/statm'):
        return None
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536',
               MALLOC_TRIM_THRESHOLD_='65536')
    out = subprocess.run([sys.executable, '-c', _RSS_SCRIPT, kind, path,
                          root, decode, *map(str, sizes)],
                         capture_output=True, text=True, env=env)
    try:
        return int(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def topk_lists(user_emb: Tensor, item_emb: Tensor, users: Tensor,
               train: Tensor, k: int) -> Tensor:
    scores = user_emb[users] @ item_emb.t()
    return deterministic_topk(serving.exclude_(scores, users, train), k)


def lightgcn(emb: torch.nn.Module, alpha: Tensor) -> LightGCN:
    r"""PyG's LightGCN over a pre-normalised adjacency, with :obj:`emb`."""
    model = LightGCN(emb.num_embeddings, emb.embedding_dim, alpha.numel() - 1,
                     alpha=alpha, normalize=False)
    model.embedding = emb
    return use_symmetric_propagation(model, check_symmetric=False).eval()


def agreement(a: Tensor, b: Tensor) -> float:
    r"""Mean :math:`|A \cap B| / k` of two :obj:`[U, k]` top-k lists."""
    hits = (a.unsqueeze(-1) == b.unsqueeze(-2)).any(-1).float()
    return float(hits.mean())


def ndcg_at(user_emb: Tensor, item_emb: Tensor, train: Tensor, test: Tensor,
            k: int = 20, batch_size: int = 1024) -> float:
    r"""Full-ranking NDCG@k (training items excluded)."""
    from pyg_cerp.metrics import ranking_metrics
    out = ranking_metrics(user_emb, item_emb, train, test, ks=(k, ),
                          batch_size=batch_size)
    return float(out[f'ndcg@{k}'])


# Main ########################################################################

def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return 'n/a'
    return f'{n / 1e6:.3f} MB' if n >= 1e5 else f'{n / 1e3:.1f} kB'


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--root', default=None,
                        help='data root holding gowalla/raw/{train,test}.txt '
                        '(or the gowalla folder itself); default: '
                        '$PYG_CERP_DATA')
    parser.add_argument('--checkpoint', default=None,
                        help='pipeline checkpoint or state-dict file with the '
                        'trained CERP embedding (default: synthetic pruning)')
    parser.add_argument('--budgets', type=float, nargs='+',
                        default=[0.10, 0.05, 0.01],
                        help='non-zeros as fractions of N*d '
                        '(default: 0.10 0.05 0.01)')
    parser.add_argument('--dim', type=int, default=64, help='d (default: 64)')
    parser.add_argument('--bucket-size', type=int, default=5000,
                        help='b (default: 5000)')
    parser.add_argument('--num-layers', type=int, default=3,
                        help='LightGCN layers when not in the checkpoint '
                        '(default: 3)')
    parser.add_argument('--repeat', type=int, default=50,
                        help='timed repetitions, median reported '
                        '(default: 50)')
    parser.add_argument('--agree-users', type=int, default=2000,
                        help='users sampled for the top-20 agreement '
                        '(default: 2000)')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads (default: 1)')
    parser.add_argument('--synthetic-only', action='store_true',
                        help='random graph of Gowalla size, no data needed')
    parser.add_argument('--no-ndcg', action='store_true',
                        help='skip the (slow) NDCG@20 evaluation')
    parser.add_argument('--quick-train', type=int, default=0, metavar='E',
                        help='without --checkpoint: train the unpruned CERP '
                        'LightGCN with BPR for E epochs here, then prune '
                        'each budget by magnitude and fine-tune the '
                        'survivors (--finetune epochs); makes NDCG@20 '
                        'meaningful (default: 0, untrained)')
    parser.add_argument('--lr', type=float, default=1e-2,
                        help='Adam learning rate of --quick-train '
                        '(default: 1e-2)')
    parser.add_argument('--finetune', type=int, default=1,
                        help='masked fine-tuning epochs per budget after '
                        '--quick-train (default: 1)')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings('ignore')
    torch.manual_seed(0)

    folder = None if args.synthetic_only else find_gowalla(args.root)
    if folder is not None:
        train, test, nu, ni = load_gowalla(folder)
        data_name = f'Gowalla ({folder})'
    else:
        if not args.synthetic_only:
            print('Gowalla not found (--root / $PYG_CERP_DATA): using a '
                  'random graph of Gowalla size.\n')
        nu, ni = NUM_USERS, NUM_ITEMS
        train, test = synthetic_graph(nu, ni, 1_027_370)
        data_name = 'random graph of Gowalla size'
    n, d = nu + ni, args.dim
    full = 4 * n * d
    print(f'# Compact export on {data_name}: N = {nu:,} + {ni:,} = {n:,}, '
          f'd = {d}, E_train = {train.size(1):,}; full float32 table '
          f'N*d*4 = {fmt_bytes(full)}')
    print(f'torch {torch.__version__}, {args.threads} thread(s), medians of '
          f'{args.repeat} runs; lookup = 1,000 random ids\n')

    adj = lightgcn_adjacency(train, nu, ni)
    gen = torch.Generator().manual_seed(0)
    agree_users = torch.randperm(nu, generator=gen)[:args.agree_users]
    ids = torch.randint(n, (1000, ), generator=gen)
    tmp = tempfile.mkdtemp(prefix='compact_export_')

    emb_rows: List[str] = []
    lgcn_rows: List[str] = []
    sources: Dict[float, str] = {}
    base_state = None
    alpha0 = torch.full((args.num_layers + 1, ), 1. / (args.num_layers + 1))
    if args.quick_train and not args.checkpoint:
        torch.manual_seed(0)
        base = CompositionalEmbedding(n, d, args.bucket_size)
        t0 = time.perf_counter()
        quick_train(base, adj, train, nu, ni, alpha0, args.quick_train,
                    lr=args.lr)
        print(f'Quick-trained the unpruned CERP LightGCN for '
              f'{args.quick_train} epochs in {time.perf_counter() - t0:.0f}s '
              f'({base.num_nonzero():,} values = '
              f'{100 * base.full_table_fraction():.1f}% of N*d)\n')
        base_state = {k: v.clone() for k, v in base.state_dict().items()}
    for budget in args.budgets:
        if args.checkpoint:
            try:
                emb, alpha, source = from_checkpoint(args.checkpoint, budget,
                                                     n, d, args.bucket_size)
            except KeyError as e:  # e.g., budget not reached by pruning
                print(f'Skipping budget {budget:g}: {e}', file=sys.stderr)
                sources[budget] = f'skipped: {e}'
                continue
            if emb.full_table_fraction() > 1.02 * budget:
                prune_to_budget(emb, budget)
                emb.freeze_masks()
                source += ', pruned further to the budget by magnitude'
        elif base_state is not None:
            emb = CompositionalEmbedding(n, d, args.bucket_size)
            emb.load_state_dict(base_state)
            alpha = alpha0
            prune_to_budget(emb, budget)
            emb.freeze_masks()  # keep the pruned values, retrain mode
            quick_train(emb, adj, train, nu, ni, alpha, args.finetune,
                        lr=args.lr, seed=1)
            source = (f'quick-trained here: LightGCN-BPR {args.quick_train} '
                      f'epochs unpruned, magnitude-pruned to the budget, '
                      f'{args.finetune} masked fine-tuning epoch(s)')
        else:
            torch.manual_seed(0)
            emb = CompositionalEmbedding(n, d, args.bucket_size)
            alpha = alpha0
            source = prune_to_budget(emb, budget)
        emb.eval()
        sources[budget] = source
        trained = (args.checkpoint is not None or base_state is not None) \
            and folder is not None
        with torch.no_grad():
            e_train = lightgcn(emb, alpha).get_embedding(adj)
        top_train = topk_lists(e_train[:nu], e_train[nu:], agree_users, train,
                               20)
        with torch.no_grad():
            t_train = median_us(lambda: emb(ids), args.repeat)
        ndcg_ref = None
        if trained and not args.no_ndcg:
            ndcg_ref = ndcg_at(e_train[:nu], e_train[nu:], train, test)
        emb_rows.append(
            f'| {budget:g} | training module | - | dense P, Q + thresholds | '
            f'{emb.num_nonzero():,} | - | - | '
            f'{fmt_bytes(4 * 4 * emb.bucket_size * d)} | - | '
            f'{t_train:.0f} | - | 1.000 | '
            f"{'n/a' if ndcg_ref is None else f'{ndcg_ref:.4f}'} | - |")

        ndcg32 = None
        for prec in PRECISIONS:
            compact = emb.to_compact(prec)
            path = os.path.join(tmp, f'emb_{budget:g}_{prec}.pt')
            compact.save(path)
            disk = os.path.getsize(path)
            t_cache = median_us(lambda c=compact: c(ids), args.repeat)
            lookup = emb.to_compact(prec, decode='lookup')
            t_lookup = median_us(lambda c=lookup: c(ids), args.repeat)
            rss_c = rss_delta('emb', path, 'cache')
            rss_l = rss_delta('emb', path, 'lookup')
            # Serving: PyG's LightGCN with the compact E0 plugged in.
            with torch.no_grad():
                e_served = lightgcn(compact, alpha).get_embedding(adj)
            u_emb, i_emb = e_served[:nu], e_served[nu:]
            top = topk_lists(u_emb, i_emb, agree_users, train, 20)
            agree = agreement(top, top_train)
            ndcg = None
            if trained and not args.no_ndcg:
                ndcg = ndcg_at(u_emb, i_emb, train, test)
                if prec == 'float32':
                    ndcg32 = ndcg
            rel = ('-' if ndcg is None or not ndcg32 else
                   f'{100 * (ndcg - ndcg32) / ndcg32:+.2f}%')
            emb_rows.append(
                f'| {budget:g} | {prec} | {compact.P.layout}/'
                f'{compact.Q.layout} | {compact.nnz:,} nnz | '
                f'{fmt_bytes(compact.nbytes)} | {fmt_bytes(disk)} | '
                f'{100 * disk / full:.2f}% | '
                f'{fmt_bytes(compact.resident_nbytes)} / '
                f'{fmt_bytes(lookup.resident_nbytes)} | '
                f'{fmt_bytes(rss_c)} / {fmt_bytes(rss_l)} | '
                f'{t_cache:.0f} / {t_lookup:.0f} | '
                f'{t_train / t_cache:.1f}x | {agree:.3f} | '
                f"{'n/a' if ndcg is None else f'{ndcg:.4f}'} | {rel} |")
            del e_served, u_emb, i_emb
            gc.collect()

        print('\n'.join(['  ' + r for r in emb_rows[-4:]]), file=sys.stderr,
              flush=True)
        # Served LightGCN files: PyG's LightGCN state (alpha, compact E0).
        for prec in PRECISIONS:
            served = lightgcn(emb.to_compact(prec), alpha)
            path = os.path.join(tmp, f'lgcn_{budget:g}_{prec}.pt')
            serving.save(served, path)
            disk = os.path.getsize(path)
            t0 = time.perf_counter()
            skeleton = lightgcn(CompactEmbedding(n, d, 1), alpha)
            loaded = serving.load(skeleton, path)
            t_load = time.perf_counter() - t0
            users = agree_users[:256]
            kw = dict(exclude=train, edge_index=adj, num_users=nu)
            t_rec = median_us(
                lambda ld=loaded: serving.recommend(ld, users, 20, **kw),
                max(3, args.repeat // 10))
            rss_c = rss_delta('lgcn', path, 'cache',
                              (alpha.numel() - 1, n, d))
            top = serving.recommend(loaded, agree_users, 20, **kw)
            lgcn_rows.append(
                f'| {budget:g} | {prec} | {fmt_bytes(disk)} | '
                f'{100 * disk / full:.2f}% | {fmt_bytes(rss_c)} | '
                f'{1e3 * t_load:.0f} ms | {t_rec / 1e3:.1f} ms | '
                f'{agreement(top, top_train):.3f} |')
            del served, loaded
            gc.collect()

    print('## CompactEmbedding (E0) per budget and precision\n')
    for budget, source in sources.items():
        print(f'- budget {budget:g}: {source}')
    print()
    print('| budget | precision | layout P/Q | stored | bytes (payload) | '
          'bytes on disk | disk / full fp32 | resident accounted '
          '(cache / lookup) | RSS delta after load (cache / lookup) | '
          'lookup us per 1,000 ids (cache / lookup) | speed-up vs training '
          'module | top-20 agreement | NDCG@20 | rel. vs float32 |')
    print('|' + '---|' * 14)
    for row in emb_rows:
        print(row)
    print('\n"training module": the CompositionalEmbedding itself (eval, '
          'no_grad); its resident bytes are P, Q and the two '
          'threshold tables. Top-20 agreement: mean overlap of the top-20 '
          '(training items excluded) with the training model\'s, LightGCN '
          f'scores, {agree_users.numel()} sampled users.\n')
    print('## Served LightGCN file (serving.save: alpha + compact E0; the '
          'training graph is not stored)\n')
    print('| budget | precision | bytes on disk | disk / full fp32 | '
          'RSS delta after load | load time | recommend 256 users, k=20 '
          '(propagates) | top-20 agreement |')
    print('|' + '---|' * 8)
    for row in lgcn_rows:
        print(row)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
