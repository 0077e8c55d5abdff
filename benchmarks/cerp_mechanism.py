r"""Phase 1 of CERP (LightGCN) on a Gowalla slice with the *validation* split
(gowalla-lightgcnpp: train.txt for training, valid.txt for evaluation; the
test split is never read), logging what issue 11 asks for: per epoch BPR,
density, threshold-logit spread; per snapshot the overlap of the two pruned
tables vs the independent expectation; optionally the retrained NDCG@20
(validation) per target.

Usage::

    nice -n 19 env OMP_NUM_THREADS=1 PYTHONPATH=. python \
        benchmarks/cerp_mechanism.py --subset 3000 4000 --batch-size 1024
    ... --gamma 0            # the no-regulariser ablation
    ... --preset legacy      # the pre-issue-11 defaults
"""
import argparse
import json
import os
import time

import torch
from torch_geometric.nn.models import LightGCN

from pyg_cerp.diagnostics import overlap_rate  # noqa: E402
from pyg_cerp.nn import use_symmetric_propagation  # noqa: E402
from pyg_cerp.train import (CERPConfig, CERPRunner, Interactions,  # noqa
                            LightGCNRecommender, make_sampler)
from pyg_cerp.datasets import read_lightgcn_file  # noqa: E402
from pyg_cerp.utils import lightgcn_adjacency  # noqa: E402


def load_valid_split(root, max_users, max_items):
    raw = os.path.join(root, 'gowalla-lightgcnpp', 'raw')
    tr = read_lightgcn_file(os.path.join(raw, "train.txt"))[0]
    va = read_lightgcn_file(os.path.join(raw, "valid.txt"))[0]
    nu = int(max(tr[0].max(), va[0].max())) + 1
    ni = int(max(tr[1].max(), va[1].max())) + 1
    data = Interactions(tr, va, nu, ni)
    if max_users <= 0:  # --subset 0 0: all of it
        return data
    return data.subset(max_users, max_items)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('--root', default=os.environ.get('PYG_CERP_DATA',
                                                     '/work/shared/data'))
    ap.add_argument('--subset', type=int, nargs=2, default=[3000, 4000])
    ap.add_argument('--preset', default='faithful')
    ap.add_argument('--batch-size', type=int, default=1024)
    ap.add_argument('--bucket-size', type=int, default=None)
    ap.add_argument('--gamma', type=float, default=None)
    ap.add_argument('--prune-start', type=int, default=None)
    ap.add_argument('--prune-speed', type=float, default=None)
    ap.add_argument('--prune-epochs', type=int, default=None)
    ap.add_argument('--threshold-wd-factor', type=float, default=None,
                    help='multiply the derived threshold weight decay')
    ap.add_argument('--threshold-drive', type=float, default=None)
    ap.add_argument('--retrain-epochs', type=int, default=0)
    ap.add_argument('--targets', type=float, nargs='+', default=None,
                    help='memory targets (fractions of the full table)')
    ap.add_argument('--gamma-at-onset', action='store_true',
                    help='count the gamma schedule from the onset')
    ap.add_argument('--onset-quantile', type=float, default=None)
    ap.add_argument('--lr', type=float, default=None)
    ap.add_argument('--pace-epochs', type=float, default=None,
                    help='prune along a planned density (see CERPConfig)')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', default=None, help='JSON summary')
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    over = dict(batch_size=args.batch_size, baseline_epochs=0,
                retrain_epochs=args.retrain_epochs, seed=args.seed,
                ks=(20, ))
    if args.targets:
        over['targets'] = tuple(args.targets)
    if args.gamma_at_onset:
        over['gamma_at_onset'] = True
    for k in ('bucket_size', 'prune_start', 'prune_speed', 'prune_epochs',
              'onset_quantile', 'lr', 'pace_epochs'):
        if getattr(args, k) is not None:
            over[k] = getattr(args, k)
    if args.threshold_drive is not None:
        over.update(threshold_drive=args.threshold_drive,
                    threshold_weight_decay=0.)
    if args.gamma is not None:
        over['gamma_init'] = args.gamma
    cfg = CERPConfig.preset(args.preset, **over)
    if args.threshold_wd_factor is not None:
        base = cfg.derived(1, 1)['threshold_weight_decay']
        cfg = CERPConfig.preset(
            args.preset, threshold_weight_decay=base *
            args.threshold_wd_factor, **over)
    data = load_valid_split(args.root, *args.subset)
    adj = lightgcn_adjacency(data.train, data.num_users, data.num_items)
    N = data.num_users + data.num_items

    def build(emb):
        model = LightGCN(N, cfg.dim, 3, normalize=False)
        use_symmetric_propagation(model)
        model.embedding = emb
        model.reset_parameters()
        return LightGCNRecommender(model, adj, data.num_users,
                                   data.num_items)

    def sampler(seed):
        return make_sampler(data.train, data.num_users, data.num_items,
                            cfg.num_negatives, cfg.batch_size, seed)

    runner = CERPRunner(cfg, data, build, sampler, log=lambda m: None)
    print(json.dumps(dict(N=N, train=int(data.train.size(1)),
                          preset=args.preset, **runner.derived)), flush=True)
    # Per-epoch threshold spread: wrap the epoch function.
    epoch_logs = []
    orig = runner._train_epoch

    def train_epoch(model, *a, **k):
        out = orig(model, *a, **k)
        sched = k.get('scheduler', a[3] if len(a) > 3 else None)
        runner._last_drive = getattr(sched, 'pace_offset', None)
        emb = model.embedding
        s = torch.cat([emb.threshold_P.flatten(), emb.threshold_Q.flatten()]).detach()
        mem = emb.num_nonzero() / emb.num_full_params
        rec = dict(epoch=len(epoch_logs) + 1, bpr=out['bpr'], reg=out['reg'],
                   full_fraction=mem, s_mean=float(s.mean()),
                   s_std=float(s.std()), time=out['time'],
                   pace_offset=getattr(runner, '_last_drive', None))
        if not emb.is_retraining:
            ov = overlap_rate(emb)
            rec.update(overlap=ov.mean, independent=ov.independent)
            epoch_logs.append(rec)
            print(json.dumps(rec), flush=True)
        return out

    runner._train_epoch = train_epoch
    t0 = time.time()
    state = runner.run()
    prune = state['prune']
    snaps = {}
    for snap in prune['scheduler']['snapshots']:
        t = float(snap['target'])
        model = build(runner._default_embedding('cerp'))
        model.load_state_dict(prune['target_models'][f'{t:g}'])
        emb = model.embedding
        s = torch.cat([emb.threshold_P.flatten(), emb.threshold_Q.flatten()])
        emb.freeze_masks(snap['masks'])
        ov = overlap_rate(emb)
        snaps[f'{t:g}'] = dict(
            step=snap['step'], epoch=snap['epoch'],
            epoch_frac=snap['step'] / runner.derived['steps_per_epoch'],
            full_fraction=snap['full_fraction'], overlap=ov.mean,
            independent=ov.independent,
            ratio=ov.mean / max(ov.independent, 1e-12),
            s_std=float(s.std()))
        res = state['results'].get(f'retrain@{t:g}')
        if res:
            snaps[f'{t:g}']['valid_ndcg@20'] = res['ndcg@20']
            snaps[f'{t:g}']['valid_recall@20'] = res['recall@20']
    summary = dict(args=vars(args), derived=runner.derived,
                   missing=prune.get('missing', []), snapshots=snaps,
                   epochs=epoch_logs, seconds=time.time() - t0)
    print(json.dumps(dict(snapshots=snaps, missing=summary['missing'],
                          seconds=summary['seconds'])), flush=True)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(summary, f, indent=1)


if __name__ == '__main__':
    main()
