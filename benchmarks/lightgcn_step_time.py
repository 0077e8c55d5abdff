r"""Training-step time of PyG's ``LightGCN`` on Gowalla against the floor of
its sparse products.

One training step of the README's path: ``rank = model(adj,
edge_label_index)`` (PyG's unmodified ``LightGCN.forward``: propagation of
the whole graph, then the scores of the batch), BPR over every (positive,
negative) pair, for CERP in phase 1 plus ``gamma * pruning_loss`` over the
batch's entities, backward, Adam step. The batch is ``--batch-size``
(user, positive) pairs with ``--num-negatives`` negatives each.

Variants (same adjacency, same pre-sampled batches, repeats interleaved
round-robin so that every variant sees the same machine noise):

* ``floor: 6 CSR spmm``: ``2 * num_layers`` calls of
  ``torch.sparse.mm(adj, x)`` on an ``N x d`` matrix, the sparse work that
  any exact step must do (forward and backward propagation), on the
  adjacency as PyG builds it (int64 indices) and with int32 indices (what
  the fused propagation hands to MKL);
* ``stock PyG``: ``LightGCN(normalize=False)`` + ``nn.Embedding`` +
  ``torch.optim.Adam`` on the same torch CSR adjacency;
* ``ours, full table``: after ``use_symmetric_propagation(model)`` (fused
  propagation) with fused Adam;
* ``ours, CERP retrain``: the same with ``CompositionalEmbedding`` (masks
  frozen, BPR only);
* ``ours, CERP prune``: phase 1, BPR + ``gamma * pruning_loss``;
* ``runner, CERP prune``: ``pyg_cerp.train.train_step`` on a
  ``LightGCNRecommender`` with a ``PruningScheduler`` (what the pipeline
  runs, including its checks);
* ``runner, full table + distillation``: the same for a full table with
  ``RankingDistillation`` (listwise, temperature 3, 20 uniform samples and
  the teacher's top-10 per user: 36 scored items per user with 5
  negatives), as ``benchmarks/memory_vs_ndcg.py --distill-weights`` runs.

``--ablations`` also times the scores of the batch's users against
``--score-candidates`` items each (a distillation step's candidates), in
the gather-and-multiply form and by ``pair_scores`` (a sampled product).

The table prints the median and the paired ratio (median over rounds of
variant / floor). ``--ablations`` adds the components of a step.

Example::

    python benchmarks/lightgcn_step_time.py --root ../shared/data \
        --batch-size 8192 --num-negatives 5 --repeats 20
"""
import argparse
import json
import os
import statistics
import time
import warnings
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor
from torch_geometric.nn.models import LightGCN

from pyg_cerp import CompositionalEmbedding
from pyg_cerp.datasets import Gowalla
from pyg_cerp.nn.propagation import RowGatherTensor, \
    symmetric_lightgcn_propagation
from pyg_cerp.train import LightGCNRecommender, PruningScheduler, \
    RankingDistillation, bpr_loss, make_optimizer, train_step
from pyg_cerp.train.recommender import pair_scores
from pyg_cerp.utils import lightgcn_adjacency
from pyg_cerp.nn import use_symmetric_propagation

warnings.filterwarnings('ignore', message='.*[Ss]parse.*')

Step = Callable[[int], None]


def sample_batches(edge_index: Tensor, num_users: int, num_items: int,
                   batch_size: int, num_negatives: int, num_batches: int,
                   seed: int = 0) -> List[Dict[str, Tensor]]:
    r"""Uniform (user, positive, negatives) batches, as local ids and as
    the ``edge_label_index`` ``[[u, u, ...], [pos, neg_1, ...]]`` (node ids)
    that ``LightGCN.forward`` takes."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        idx = torch.randint(edge_index.size(1), (batch_size, ), generator=gen)
        user, pos = edge_index[0, idx], edge_index[1, idx]
        neg = torch.randint(num_items, (batch_size, num_negatives),
                            generator=gen)
        eli = torch.stack([
            user.repeat(num_negatives + 1),
            torch.cat([pos, neg.t().reshape(-1)]) + num_users
        ])
        entities = torch.cat([user.unique(), eli[1]])
        batches.append(dict(user=user, pos=pos, neg=neg, eli=eli,
                            entities=entities))
    return batches


def interleaved(fns: Dict[str, Step], repeats: int,
                warmup: int) -> Dict[str, List[float]]:
    r"""Calls every ``fn(i)`` ``warmup + repeats`` times, round-robin, and
    returns the wall times (ms) after warm-up."""
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(i)
            elapsed = (time.perf_counter() - start) * 1e3
            if i >= warmup:
                times[name].append(elapsed)
    return times


def markdown(times: Dict[str, List[float]], base: str, title: str) -> str:
    r"""Median and min wall time, and the median over rounds of the ratio to
    ``base`` (rounds are interleaved, so the paired ratio cancels slow drifts
    of the machine load)."""
    ref = times[base]
    lines = [
        f'| {title} | median ms | min ms | paired ratio vs {base} |',
        '|---|---:|---:|---:|'
    ]
    for name, ts in times.items():
        paired = statistics.median(t / r for t, r in zip(ts, ref))
        lines.append(f'| {name} | {statistics.median(ts):.1f} | '
                     f'{min(ts):.1f} | {paired:.2f}x |')
    return '\n'.join(lines)


def readme_step(model: LightGCN, opt: torch.optim.Optimizer, adj: Tensor,
                batch: Dict[str, Tensor], gamma: Optional[float]) -> None:
    r"""The README's loop body."""
    opt.zero_grad(set_to_none=True)
    rank = model(adj, batch['eli'])
    size = batch['pos'].numel()
    loss = bpr_loss(rank[:size], rank[size:].view(-1, size).t())
    if gamma is not None:
        loss = loss + gamma * model.embedding.pruning_loss(batch['entities'])
    loss.backward()
    opt.step()


def build(num_nodes: int, args: argparse.Namespace, ours: bool,
          embedding: str) -> LightGCN:
    torch.manual_seed(0)
    model = LightGCN(num_nodes, args.dim, args.layers, normalize=False)
    if ours:
        use_symmetric_propagation(model)
    if embedding != 'full':
        model.embedding = CompositionalEmbedding(
            num_nodes, args.dim, args.bucket_size, threshold_init=-6.)
        if embedding == 'retrain':
            model.embedding.freeze_masks()
    return model


def run(args: argparse.Namespace, adj: Tensor, batches: List[Dict[str, Tensor]],
        num_users: int, num_items: int) -> Dict[str, Dict[str, List[float]]]:
    num_nodes = num_users + num_items
    nb = len(batches)
    x = torch.randn(num_nodes, args.dim)

    def floor(i: int) -> None:
        for _ in range(2 * args.layers):
            torch.sparse.mm(adj, x)

    adj32 = torch.sparse_csr_tensor(adj.crow_indices().int(),
                                    adj.col_indices().int(), adj.values(),
                                    adj.size())

    def floor32(i: int) -> None:
        for _ in range(2 * args.layers):
            torch.sparse.mm(adj32, x)

    fns: Dict[str, Step] = {
        f'floor: {2 * args.layers} CSR spmm': floor,
        f'floor: {2 * args.layers} CSR spmm, int32 indices': floor32,
    }
    specs = [('stock PyG, full table', False, 'full', None),
             ('ours, full table', True, 'full', None),
             ('ours, CERP retrain', True, 'retrain', None),
             ('ours, CERP prune', True, 'prune', args.gamma)]
    for name, ours, emb, gamma in specs:
        model = build(num_nodes, args, ours, emb)
        opt = (make_optimizer(model, lr=1e-3, weight_decay=0.) if ours else
               torch.optim.Adam(model.parameters(), lr=1e-3))
        fns[name] = (lambda i, m=model, o=opt, g=gamma: readme_step(
            m, o, adj, batches[i % nb], g))

    model = build(num_nodes, args, True, 'prune')
    rec = LightGCNRecommender(model, adj, num_users, num_items)
    opt = make_optimizer(rec, lr=1e-3, weight_decay=0.)
    sched = PruningScheduler(model.embedding, targets=(1e-9, ),
                             gamma_init=args.gamma)

    def runner_step(i: int) -> None:
        b = batches[i % nb]
        train_step(rec, opt, (b['user'], b['pos'], b['neg']), sched)

    fns['runner train_step, CERP prune'] = runner_step

    # Distillation (ConvergedRunner's options: listwise, 20 samples, the
    # teacher's top-10) into a full table; the teacher's top-10 lists are
    # ranked in the warm-up.
    teacher = LightGCNRecommender(build(num_nodes, args, True, 'full'), adj,
                                  num_users, num_items)
    distill = RankingDistillation(teacher, 0.3, temperature=3.,
                                  num_samples=20, top_k=10)
    student = LightGCNRecommender(build(num_nodes, args, True, 'full'), adj,
                                  num_users, num_items)
    opt_student = make_optimizer(student, lr=1e-3, weight_decay=0.)

    def distill_step(i: int) -> None:
        b = batches[i % nb]
        train_step(student, opt_student, (b['user'], b['pos'], b['neg']),
                   distill=distill)

    fns['runner train_step, full table + distillation'] = distill_step
    results = {'training step': interleaved(fns, args.repeats, args.warmup)}
    if not args.ablations:
        return results

    # Components of the CERP step #############################################
    emb = CompositionalEmbedding(num_nodes, args.dim, args.bucket_size,
                                 threshold_init=-6.)
    xl = torch.randn(num_nodes, args.dim, requires_grad=True)
    out = torch.randn(num_nodes, args.dim, requires_grad=True)
    grad = torch.randn(num_nodes, args.dim)
    alpha = torch.full((args.layers + 1, ), 1. / (args.layers + 1))

    def propagation(i: int) -> None:
        symmetric_lightgcn_propagation(adj, xl, alpha).backward(grad)
        xl.grad = None

    def gather_bpr(i: int) -> None:
        b = batches[i % nb]
        e = (out * 1.).as_subclass(RowGatherTensor)
        rank = (e[b['eli'][0]] * e[b['eli'][1]]).sum(-1)
        size = b['pos'].numel()
        bpr_loss(rank[:size], rank[size:].view(-1, size).t()).backward()
        out.grad = None

    # Scores of B users against m candidates each (a distillation step's
    # 1 + negatives + teacher's top-10 + 20 samples): the broadcast form
    # the recommender used before, and pair_scores.
    cand = torch.randint(num_items, (args.batch_size, args.score_candidates),
                         generator=torch.Generator().manual_seed(1))
    cand += num_users

    def gather_multiply(i: int) -> None:
        e = (out * 1.).as_subclass(RowGatherTensor)
        user = batches[i % nb]['user']
        (e[user].unsqueeze(1) * e[cand]).sum(-1).sum().backward()
        out.grad = None

    def sampled_product(i: int) -> None:
        pair_scores(out * 1., batches[i % nb]['user'], cand).sum().backward()
        out.grad = None

    def compose(i: int) -> None:
        emb.weight.backward(grad)

    def prune_loss(i: int) -> None:
        emb.pruning_loss(batches[i % nb]['entities']).backward()

    opt = make_optimizer(emb, lr=1e-3)
    for p in emb.parameters():
        p.grad = torch.zeros_like(p)
    results['components of a step'] = interleaved(
        {
            'one CSR spmm (N x d)': lambda i: torch.sparse.mm(adj, x),
            'fused propagation fwd+bwd': propagation,
            'CERP .weight fwd+bwd': compose,
            'row gathers + BPR fwd+bwd (incl. one N x d mul)': gather_bpr,
            'pruning_loss over the batch fwd+bwd': prune_loss,
            f'B x {args.score_candidates} scores, gather and multiply '
            'fwd+bwd': gather_multiply,
            f'B x {args.score_candidates} scores, pair_scores fwd+bwd':
            sampled_product,
            'fused Adam on the meta tables': lambda i: opt.step(),
        }, args.repeats, args.warmup)
    return results


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--root', default=os.environ.get('PYG_CERP_DATA'),
                        help='data folder holding gowalla/raw/ '
                        '(default: $PYG_CERP_DATA)')
    parser.add_argument('--dim', type=int, default=64, help='embedding size')
    parser.add_argument('--layers', type=int, default=3,
                        help='number of LGConv layers')
    parser.add_argument('--batch-size', type=int, default=8192,
                        help='(user, positive) pairs per step')
    parser.add_argument('--num-negatives', type=int, default=5,
                        help='negatives per positive')
    parser.add_argument('--bucket-size', type=int, default=5000,
                        help='meta-table rows b of CompositionalEmbedding')
    parser.add_argument('--score-candidates', type=int, default=36,
                        help='candidates per user of the --ablations score '
                        'rows (36: a distillation step with 5 negatives)')
    parser.add_argument('--gamma', type=float, default=1.,
                        help='weight of pruning_loss in the prune step')
    parser.add_argument('--repeats', type=int, default=20,
                        help='timed steps per variant')
    parser.add_argument('--warmup', type=int, default=3,
                        help='untimed steps per variant')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads (default: torch default)')
    parser.add_argument('--ablations', action='store_true',
                        help='also time the components of a step')
    parser.add_argument('--json', default=None,
                        help='also write all raw timings to this JSON file')
    args = parser.parse_args(argv)
    if args.root is None:
        parser.error('pass --root or set PYG_CERP_DATA')
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    data = Gowalla(os.path.join(args.root, 'gowalla'))[0]
    edge_index = data['user', 'rates', 'item'].edge_index
    num_users, num_items = data['user'].num_nodes, data['item'].num_nodes
    adj = lightgcn_adjacency(edge_index, num_users, num_items)
    batches = sample_batches(edge_index, num_users, num_items,
                             args.batch_size, args.num_negatives, 8)
    print(f'## Gowalla: {num_users} users, {num_items} items, nnz='
          f'{adj._nnz()}; d={args.dim}, layers={args.layers}, batch='
          f'{args.batch_size} x {args.num_negatives} negatives, threads='
          f'{torch.get_num_threads()}, repeats={args.repeats}, torch '
          f'{torch.__version__}, load average {os.getloadavg()[0]:.2f}\n')
    results = run(args, adj, batches, num_users, num_items)
    for title, times in results.items():
        print(markdown(times, next(iter(times)), title) + '\n')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(config=vars(args), results=results), f, indent=1)


if __name__ == '__main__':
    main()
