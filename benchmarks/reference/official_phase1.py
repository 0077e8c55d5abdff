r"""Runs the *official* CERP phase-1 (pruning) code, LightGCN backbone, on a
Gowalla slice on CPU, and logs what issue 11 asks for: BPR, density, overlap
of the two pruned meta tables vs the independent expectation, and the spread
of the threshold logits.

The official modules (``CERP/models/{com_embedding,modules,factorizer}.py``
and ``CERP/utils/train.py`` of github.com/xurong-liang/CERP @ ed5222b) are
read *unchanged* from a git mirror and imported; only what cannot run here is
replaced (see README.md next to this file): the data pickles are built from
the text split, ``tensorboardX``/``torchfm`` are absent (``torchfm`` is
stubbed with the same layers), ``np.long`` and ``ExponentialLR(verbose=)``
no longer exist, and ``Engine.train_an_episode`` (which needs tensorboard) is
re-written below line by line for the pruning mode, without the writer.

Usage (from the repository root)::

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/reference/official_phase1.py \
        --users 3000 --items 4000 --bucket-size 700 --epochs 6
"""
import argparse
import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import types

import numpy as np
import scipy.sparse as sp
import torch

MIRROR = '/work/.mirror/xurong-liang+CERP/repo'
COMMIT = 'ed5222b'
FILES = ['CERP/models/com_embedding.py', 'CERP/models/modules.py',
         'CERP/models/factorizer.py', 'CERP/utils/train.py']


def extract_official(dst: str, mirror: str) -> None:
    for f in FILES:
        src = subprocess.run(['git', '-C', mirror, 'show', f'{COMMIT}:{f}'],
                             check=True, capture_output=True).stdout
        out = os.path.join(dst, f[len('CERP/'):])
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, 'wb') as fp:
            fp.write(src)
    for pkg in ('models', 'utils'):
        open(os.path.join(dst, pkg, '__init__.py'), 'a').close()


def stub_torchfm() -> None:
    r"""torchfm.layer as in rixwew/pytorch-fm (only MultiLayerPerceptron is
    used by the MLP model; FM/LR layers are imported but unused by LightGCN)."""
    layer = types.ModuleType('torchfm.layer')

    class MultiLayerPerceptron(torch.nn.Module):
        def __init__(self, input_dim, embed_dims, dropout, output_layer=True):
            super().__init__()
            layers = []
            for embed_dim in embed_dims:
                layers.append(torch.nn.Linear(input_dim, embed_dim))
                layers.append(torch.nn.BatchNorm1d(embed_dim))
                layers.append(torch.nn.ReLU())
                layers.append(torch.nn.Dropout(p=dropout))
                input_dim = embed_dim
            if output_layer:
                layers.append(torch.nn.Linear(input_dim, 1))
            self.mlp = torch.nn.Sequential(*layers)

        def forward(self, x):
            return self.mlp(x)

    class _Unused(torch.nn.Module):
        def __init__(self, *a, **k):
            super().__init__()

    layer.MultiLayerPerceptron = MultiLayerPerceptron
    layer.FactorizationMachine = layer.FeaturesLinear = _Unused
    pkg = types.ModuleType('torchfm')
    pkg.layer = layer
    sys.modules['torchfm'] = pkg
    sys.modules['torchfm.layer'] = layer


def read_split(path, max_users, max_items):
    rows = []
    with open(path) as fp:
        for u, line in enumerate(fp):
            if u >= max_users:
                break
            items = [int(t) for t in line.split()[1:]]
            rows += [(u, i) for i in items if i < max_items]
    return rows


def build_data(args, data_dir):
    r"""interact_mat / s_pre_adj_mat / train samples as the official
    LightGCN-derived pickles: one (u, pos) group per training interaction,
    5 uniform negatives not in the user's training items, drawn once (the
    official samples are a fixed pickle), rows in file order (the official
    DataLoader does not shuffle)."""
    rows = read_split(os.path.join(args.root, 'gowalla-lightgcnpp', 'raw',
                                   'train.txt'), args.users, args.items)
    U = max(u for u, _ in rows) + 1
    I = args.items
    R = sp.csr_matrix((np.ones(len(rows)), ([u for u, _ in rows],
                                            [i for _, i in rows])),
                      shape=(U, I))
    sp.save_npz(os.path.join(data_dir, 'interact_mat.npz'), R)
    # LightGCN: A = [[0, R], [R^T, 0]], D^-1/2 A D^-1/2.
    A = sp.bmat([[None, R], [R.T, None]]).tocsr()
    deg = np.asarray(A.sum(1)).ravel()
    d = np.power(deg, -0.5, where=deg > 0, out=np.zeros_like(deg))
    norm = sp.diags(d) @ A @ sp.diags(d)
    sp.save_npz(os.path.join(data_dir, 's_pre_adj_mat.npz'), norm.tocsr())
    rng = np.random.default_rng(args.seed)
    pos = [set(R.indices[R.indptr[u]:R.indptr[u + 1]]) for u in range(U)]
    data = np.empty((len(rows) * 6, 2), dtype=np.int64)
    k = 0
    for u, i in rows:
        negs = []
        while len(negs) < 5:
            j = int(rng.integers(I))
            if j not in pos[u]:
                negs.append(j)
        for it in [i] + negs:
            data[k] = (u, it)
            k += 1
    return U, I, torch.from_numpy(data)


class Sampler:
    def __init__(self, data, batch_rows):
        self.data = data
        self.batch_rows = batch_rows
        self.num_batches_train = math.ceil(len(data) / batch_rows)
        self._it = iter([])

    def _epoch(self):
        for s in range(0, len(self.data), self.batch_rows):
            chunk = self.data[s:s + self.batch_rows]
            yield chunk, torch.zeros(len(chunk), 1)

    def get_sample(self, kind):
        try:
            return next(self._it)
        except StopIteration:
            self._it = self._epoch()
            return next(self._it)


@torch.no_grad()
def diagnostics(model, N):
    emb = model.embedding
    P, Q = emb.sparse_R_v, emb.sparse_Q_v  # R: k mod b, Q: k // ceil(N/b)
    k = torch.arange(N)
    zp = (P == 0).float()[emb.get_R_idx(k)]
    zq = (Q == 0).float()[emb.get_Q_idx(k)]
    s = torch.cat([emb.R_s.flatten(), emb.Q_s.flatten()])
    return dict(overlap=float((zp * zq).mean()),
                independent=float((zp.mean(1) * zq.mean(1)).mean()),
                s_mean=float(s.mean()), s_std=float(s.std()),
                s_std_P=float(emb.R_s.std()), s_std_Q=float(emb.Q_s.std()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--root', default=os.environ.get('PYG_CERP_DATA',
                                                     '/work/shared/data'))
    ap.add_argument('--mirror', default=MIRROR)
    ap.add_argument('--users', type=int, default=3000)
    ap.add_argument('--items', type=int, default=4000)
    ap.add_argument('--bucket-size', type=int, default=700)
    ap.add_argument('--latent-dim', type=int, default=64)
    ap.add_argument('--threshold-init', type=float, default=-100.)
    ap.add_argument('--gamma-init', type=float, default=1.)
    ap.add_argument('--epochs', type=int, default=6)
    ap.add_argument('--targets', type=float, nargs='+',
                    default=[0.10, 0.05, 0.01],
                    help='fractions of the full table N*d')
    ap.add_argument('--log-every', type=int, default=1000)
    ap.add_argument('--seed', type=int, default=3407)
    ap.add_argument('--out', default=None, help='JSON-lines log')
    args = ap.parse_args()
    torch.set_num_threads(1)

    tmp = tempfile.mkdtemp(prefix='cerp_official_')
    extract_official(tmp, args.mirror)
    stub_torchfm()
    np.long = np.int64  # removed in numpy >= 1.24; com_embedding.py uses it
    sys.path.insert(0, tmp)
    factorizer = importlib.import_module('models.factorizer')
    from torch.optim.lr_scheduler import ExponentialLR
    factorizer.ExponentialLR = (  # 'verbose' is gone from torch
        lambda opt, gamma, verbose=None: ExponentialLR(opt, gamma=gamma))

    data_dir = os.path.join(tmp, 'data')
    os.makedirs(data_dir)
    U, I, rows = build_data(args, data_dir)
    N = U + I
    d, b = args.latent_dim, args.bucket_size
    # Defaults of CERP/utils/util.py setup_args() (lines 41-126), gcn model:
    opt = dict(data_type='gowalla', model='gcn', GCN_pretrain_emb=False,
               gamma_init=args.gamma_init, gamma_decay_rate=.5, K=100.,
               batch_size_train_factor=10, latent_dim=d, device_id='cpu',
               Q_v_R_v_concat_method='add',
               threshold_init=args.threshold_init, clip_grad_norm=True,
               threshold_type='element-wise', threshold_init_method='all_ones',
               fm_lr=1e-3, fm_l2_regularization=1e-5, l2_penalty=0.,
               prune_max_epoch=args.epochs, seed=args.seed, num_layers=3,
               dropout=0., fm_optimizer='adam', fm_amsgrad=False,
               fm_eps=1e-8, fm_betas=(0.9, 0.999), fm_grad_clip=100,
               fm_lr_exp_decay=1, g_type='sigmoid', gk=1, re_init=False,
               bucket_size=b, field_dims=[U, I], data_path=data_dir)
    full = N * d
    targets = sorted(args.targets, reverse=True)
    opt['max_param'] = 2 * b * d
    # setup_seed (util.py:13)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    fz = factorizer.setup_factorizer(opt)
    fz.init_episode()
    model = fz.model
    sampler = Sampler(rows, opt['batch_size_train_factor'] * 6)
    nb = sampler.num_batches_train
    out = open(args.out, 'w') if args.out else None

    def log(rec):
        line = json.dumps(rec)
        print(line, flush=True)
        if out:
            print(line, file=out, flush=True)

    log(dict(event='setup', users=U, items=I, N=N, d=d, b=b,
             train_pairs=len(rows) // 6, steps_per_epoch=nb,
             meta_over_full=2 * b * d / full, targets_full=targets,
             threshold_init=args.threshold_init, gamma_init=args.gamma_init))
    gamma = opt['gamma_init']
    reached = {}
    ep_bpr = ep_reg = 0.
    ep_n = 0
    t0 = time.time()
    # Engine.train_an_episode (engine.py:199-308), pruning mode:
    for step_idx in range(nb * args.epochs + 1):
        loss, r_s, q_s, reg, rec = fz.update(sampler, gamma)
        ep_bpr += rec
        ep_reg += reg
        ep_n += 1
        epoch_idx = step_idx // nb
        _, params = model.calc_sparsity()  # every step (log_interval=1)
        for t in targets:
            if t not in reached and params <= t * full:
                reached[t] = dict(step=step_idx, epoch=step_idx / nb,
                                  full_fraction=params / full)
                log(dict(event='reached', target=t, **reached[t],
                         **diagnostics(model, N)))
        boundary = step_idx % nb == 0 and step_idx != 0
        if boundary or step_idx % args.log_every == 0:
            log(dict(event='epoch' if boundary else 'step', step=step_idx,
                     epoch=step_idx / nb, gamma=gamma,
                     bpr=ep_bpr / ep_n, reg=ep_reg / ep_n,
                     full_fraction=params / full,
                     meta_density=params / (2 * b * d),
                     time=time.time() - t0, **diagnostics(model, N)))
        if boundary:
            gamma *= opt['gamma_decay_rate']  # engine.py:273-277
            ep_bpr = ep_reg = 0.
            ep_n = 0
        if len(reached) == len(targets):
            break
    log(dict(event='end', reached=reached))


if __name__ == '__main__':
    main()
