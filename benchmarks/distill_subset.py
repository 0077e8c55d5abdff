r"""Ranking distillation with and without (issue 14, part 2), on a Gowalla
subset, by :class:`pyg_cerp.train.ConvergedRunner`: one cell per
distillation weight (weight 0: no distillation, the converged profile as
it is), all with one converged full table as the teacher, so that every
weight's model is tested once. Prints one ``RESULT`` JSON line per
(method, weight).

Example (the numbers of ``benchmarks/results/distill_subset.md``)::

    python benchmarks/distill_subset.py --subset 6000 8000 \
        --methods full,cerp,qr-mul,magnitude --weights 0,1,4
    python benchmarks/distill_subset.py --subset 6000 8000 \
        --methods full,cerp,qr-mul,magnitude --weights 0.3 --temperature 3
"""
import argparse
import importlib.util
import json
import os.path as osp
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from torch_geometric.nn.models import LightGCN  # noqa: E402

from pyg_cerp import train  # noqa: E402
from pyg_cerp.nn import use_symmetric_propagation  # noqa: E402
from pyg_cerp.utils.adjacency import lightgcn_adjacency  # noqa: E402


def _harness():
    path = osp.join(osp.dirname(osp.abspath(__file__)), 'memory_vs_ndcg.py')
    spec = importlib.util.spec_from_file_location('memory_vs_ndcg', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--root', default='../shared/data')
    parser.add_argument('--dataset', default='gowalla-lightgcnpp')
    parser.add_argument('--subset', type=int, nargs=2, default=(6000, 8000))
    parser.add_argument('--methods', default='full,cerp,qr-mul,magnitude')
    parser.add_argument('--weights', default='0,1')
    parser.add_argument('--budget', type=float, default=0.05)
    parser.add_argument('--batch-size', type=int, default=4096)
    parser.add_argument('--max-epochs', type=int, default=60)
    parser.add_argument('--num-samples', type=int, default=20)
    parser.add_argument('--top-k', type=int, default=10)
    parser.add_argument('--temperature', type=float, default=1.)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    h = _harness()
    split = train.load_split(h.resolve_dataset(args.dataset, args.root),
                             subset=args.subset)
    n = split.num_users + split.num_items
    config = train.CERPConfig.preset('faithful', ks=(10, 20),
                                     batch_size=args.batch_size)
    adj = lightgcn_adjacency(split.train, split.num_users, split.num_items)
    print(f'{split.num_users} users, {split.num_items} items, '
          f'{split.train.size(1)} / {split.valid.size(1)} / '
          f'{split.test.size(1)} pairs; {vars(args)}', flush=True)

    def build(embedding):
        model = LightGCN(n, config.dim, 3)
        use_symmetric_propagation(model)
        model.embedding = embedding
        model.reset_parameters()
        return train.LightGCNRecommender(model, adj, split.num_users,
                                         split.num_items)

    def sampler(edge_index, seed):
        return train.make_sampler(edge_index, split.num_users,
                                  split.num_items, config.num_negatives,
                                  config.batch_size, seed)

    options = dict(num_samples=args.num_samples, top_k=args.top_k,
                   temperature=args.temperature)
    weights = [float(w) for w in args.weights.split(',')]
    runner = train.ConvergedRunner(  # One converged teacher for all.
        split, build, sampler, config,
        train.EarlyStopping(max_epochs=args.max_epochs, eval_every=2,
                            patience=3),
        bucket_ratios=(1.5, ), log=lambda s: print('  ', s, flush=True),
        distill_options=options)
    for method in args.methods.split(','):
        for weight in ([None] if method == 'full' else weights):
            start = time.time()
            out = runner.run(method, 1. if method == 'full' else
                             args.budget, args.seed,
                             () if weight is None else (weight, ))
            row = {k: ({str(a): b for a, b in v.items()}
                       if isinstance(v, dict) else v)
                   for k, v in out.items() if k != 'recommender'}
            print('RESULT', json.dumps(row), f'{time.time() - start:.0f}s',
                  flush=True)


if __name__ == '__main__':
    main()
