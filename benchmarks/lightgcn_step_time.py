r"""Training-step time of PyG's ``LightGCN`` on Gowalla: stock vs. symmetric
propagation vs. symmetric propagation + ``CompositionalEmbedding``.

One training step is: propagation forward (``num_layers`` sparse products and
the ``alpha``-weighted layer sum) on the full symmetric-normalised adjacency,
scores of a batch of (user, positive item, negative item) triples through
``LightGCN.forward(adj, edge_label_index)``, ``LightGCN.recommendation_loss``
(BPR + L2), backward, and an Adam step.
All variants run on the same adjacency and the same pre-sampled batches, and
their repeats are interleaved, so they see the same machine noise.

Variants:

* ``stock``: PyG ``LightGCN(normalize=False)`` + ``nn.Embedding`` on a torch
  CSR adjacency (``torch.sparse.mm`` transposes the matrix in every backward);
* ``symmetric``: the same model after
  ``pyg_cerp.nn.propagation.use_symmetric_propagation`` (backward re-uses the
  forward matrix);
* ``symmetric + CERP``: the same with
  ``pyg_cerp.CompositionalEmbedding(N, d, bucket_size)`` as ``model.embedding``
  (skipped with a message if it cannot be imported).

``--ablations`` adds: the same variants on a COO adjacency, the propagation
alone (forward + backward of ``get_embedding``), and a breakdown of the
remaining step components (layer sum, score gather + BPR loss, Adam step).

Example (with the package installed, ``pip install -e .``, or with
``PYTHONPATH=.`` from the repository root)::

    python benchmarks/lightgcn_step_time.py --root /work/shared/data \
        --dim 64 --layers 3 --batch-size 2048 --repeats 15 --threads 2

On a busy machine, prefer ``--threads 1``: with more threads than free cores,
every parallel kernel waits for its slowest (descheduled) thread.
"""
import argparse
import json
import os
import statistics
import time
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.nn.models import LightGCN
from torch_geometric.utils import to_torch_csr_tensor, to_undirected

import pyg_cerp.nn.propagation as propagation
from pyg_cerp.nn.propagation import (
    symmetric_lightgcn_propagation,
    use_symmetric_propagation,
)

warnings.filterwarnings('ignore', message='.*[Ss]parse.*')


# Data ########################################################################
def read_interactions(path: str) -> Tuple[Tensor, Tensor]:
    r"""Parses a LightGCN-format file (``user item item ...`` per line) into
    flat ``(user, item)`` id vectors."""
    users: List[int] = []
    items: List[int] = []
    with open(path) as f:
        for line in f:
            ids = line.split()
            if len(ids) < 2:
                continue
            users.extend([int(ids[0])] * (len(ids) - 1))
            items.extend(int(i) for i in ids[1:])
    return torch.tensor(users), torch.tensor(items)


def _lightgcn_adjacency(edge_index: Tensor, num_users: int,
                        num_items: int) -> Tensor:
    r"""The symmetric-normalised LightGCN adjacency
    :math:`\mathbf{D}^{-1/2}\mathbf{A}\mathbf{D}^{-1/2}` of the user-item
    graph (items shifted by ``num_users``) as a torch CSR tensor.

    Private stand-in for ``pyg_cerp.utils.adjacency.lightgcn_adjacency``.
    """
    num_nodes = num_users + num_items
    row, col = edge_index
    edge_index = torch.stack([row, col + num_users], dim=0)
    edge_index = to_undirected(edge_index, num_nodes=num_nodes)
    edge_index, edge_weight = gcn_norm(edge_index, None, num_nodes,
                                       add_self_loops=False)
    return to_torch_csr_tensor(edge_index, edge_weight,
                               size=(num_nodes, num_nodes))


def load_gowalla(root: str) -> Tuple[Tensor, int, int]:
    raw = os.path.join(root, 'gowalla', 'raw')
    user, item = read_interactions(os.path.join(raw, 'train.txt'))
    num_users, num_items = int(user.max()) + 1, int(item.max()) + 1
    test_path = os.path.join(raw, 'test.txt')
    if os.path.exists(test_path):  # Only for the id range.
        test_user, test_item = read_interactions(test_path)
        num_users = max(num_users, int(test_user.max()) + 1)
        num_items = max(num_items, int(test_item.max()) + 1)
    return torch.stack([user, item], dim=0), num_users, num_items


def sample_batches(edge_index: Tensor, num_users: int, num_items: int,
                   batch_size: int, num_batches: int,
                   seed: int = 0) -> List[Tensor]:
    r"""Uniformly samples ``(user, pos, neg)`` triples and returns them as
    ``edge_label_index`` tensors ``[[u, u], [pos, neg]]`` of shape
    ``[2, 2 * batch_size]`` (node ids, items shifted by ``num_users``)."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        idx = torch.randint(edge_index.size(1), (batch_size, ), generator=gen)
        user, pos = edge_index[0, idx], edge_index[1, idx] + num_users
        neg = torch.randint(num_items, (batch_size, ),
                            generator=gen) + num_users
        batches.append(torch.stack([user.repeat(2), torch.cat([pos, neg])]))
    return batches


# Timing ######################################################################
def train_step(model: LightGCN, optimizer: torch.optim.Optimizer, adj: Tensor,
               edge_label_index: Tensor, fused: bool = False) -> None:
    optimizer.zero_grad(set_to_none=True)
    if fused:  # Reference only: bypasses `LightGCN.get_embedding`.
        out = symmetric_lightgcn_propagation(adj, model.embedding.weight,
                                             model.alpha)
        rank = (out[edge_label_index[0]] * out[edge_label_index[1]]).sum(-1)
    else:
        rank = model(adj, edge_label_index)
    pos_rank, neg_rank = rank.chunk(2)
    loss = model.recommendation_loss(pos_rank, neg_rank,
                                     node_id=edge_label_index.unique())
    loss.backward()
    optimizer.step()


def propagation_step(model: LightGCN, adj: Tensor, grad: Tensor,
                     addmm_kernel: bool = False) -> None:
    model.zero_grad(set_to_none=True)
    spmm = propagation._spmm
    if addmm_kernel:  # Ablation: plain `torch.sparse.mm` (addmm/MKL path).
        propagation._spmm = torch.sparse.mm
    try:
        model.get_embedding(adj).backward(grad)
    finally:
        propagation._spmm = spmm


def interleaved(fns: Dict[str, Callable[[int], None]], repeats: int,
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


def make_model(num_nodes: int, args: argparse.Namespace, symmetric: bool,
               cerp: bool) -> LightGCN:
    torch.manual_seed(0)
    model = LightGCN(num_nodes, args.dim, args.layers, normalize=False)
    if symmetric:
        use_symmetric_propagation(model)
    if cerp:
        from pyg_cerp import CompositionalEmbedding
        model.embedding = CompositionalEmbedding(num_nodes, args.dim,
                                                 args.bucket_size)
    return model


def make_optimizer(model: torch.nn.Module,
                   args: argparse.Namespace) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=1e-3,
                            fused=True if args.fused_adam else None)


def markdown(times: Dict[str, List[float]], base: str, title: str) -> str:
    r"""Markdown table: median and min wall time, ratio of medians and the
    median of per-round ratios (rounds are interleaved, so the paired ratio
    cancels slow drifts in machine load)."""
    ref = times[base]
    lines = [
        f'| {title} | median ms | min ms | ratio vs {base} | '
        f'paired ratio |', '|---|---:|---:|---:|---:|'
    ]
    for name, ts in times.items():
        med = statistics.median(ts)
        paired = statistics.median(t / r for t, r in zip(ts, ref))
        lines.append(f'| {name} | {med:.1f} | {min(ts):.1f} | '
                     f'{med / statistics.median(ref):.2f}x | {paired:.2f}x |')
    return '\n'.join(lines)


def run(args: argparse.Namespace, adj: Tensor, batches: List[Tensor],
        num_nodes: int) -> Dict[str, Dict[str, List[float]]]:
    results: Dict[str, Dict[str, List[float]]] = {}
    n_batches = len(batches)

    # Training steps ##########################################################
    specs = {'stock': (False, False), 'symmetric': (True, False)}
    if not args.skip_cerp:
        try:
            from pyg_cerp import CompositionalEmbedding  # noqa: F401
            specs['symmetric + CERP'] = (True, True)
        except ImportError as e:
            print(f'> Skipping "symmetric + CERP": cannot import '
                  f'pyg_cerp.CompositionalEmbedding ({e})\n')
    layouts = {'csr': adj}
    if args.ablations:
        layouts['coo'] = adj.to_sparse_coo().coalesce()

    fns: Dict[str, Callable[[int], None]] = {}
    for layout, a in layouts.items():
        for name, (symmetric, cerp) in specs.items():
            if layout == 'coo' and cerp:
                continue
            model = make_model(num_nodes, args, symmetric, cerp)
            opt = make_optimizer(model, args)
            label = name if layout == 'csr' else f'{name} (COO)'
            fns[label] = (lambda i, m=model, o=opt, a=a: train_step(
                m, o, a, batches[i % n_batches]))
    if args.ablations:
        for name, (symmetric, cerp) in specs.items():
            if symmetric:
                model = make_model(num_nodes, args, symmetric, cerp)
                opt = make_optimizer(model, args)
                fns[f'{name}, fused propagation (reference)'] = (
                    lambda i, m=model, o=opt: train_step(
                        m, o, adj, batches[i % n_batches], fused=True))
    results['training step'] = interleaved(fns, args.repeats, args.warmup)

    if not args.ablations:
        return results

    # Propagation only (forward + backward of `get_embedding`) ###############
    grad = torch.randn(num_nodes, args.dim)
    fns = {}
    for layout, a in layouts.items():
        for symmetric in (False, True):
            model = make_model(num_nodes, args, symmetric, cerp=False)
            label = ('symmetric' if symmetric else 'stock') + f' ({layout})'
            fns[label] = (lambda i, m=model, a=a: propagation_step(m, a, grad))
    model = make_model(num_nodes, args, True, cerp=False)
    fns['symmetric (csr), torch.sparse.mm without reduce'] = (
        lambda i, m=model: propagation_step(m, adj, grad, addmm_kernel=True))
    results['propagation fwd+bwd'] = interleaved(fns, args.repeats,
                                                 args.warmup)

    # Remaining components of a step ##########################################
    model = make_model(num_nodes, args, True, False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    layers = [
        torch.randn(num_nodes, args.dim, requires_grad=True)
        for _ in range(args.layers + 1)
    ]
    emb = torch.randn(num_nodes, args.dim, requires_grad=True)

    def layer_sum(i: int) -> None:
        out = layers[0] * model.alpha[0]
        for k in range(1, len(layers)):
            out = out + layers[k] * model.alpha[k]
        out.backward(grad)

    def gather_bpr(i: int) -> None:
        eli = batches[i % n_batches]
        out = emb * 1.0  # Stands in for the propagated embedding.
        rank = (out[eli[0]] * out[eli[1]]).sum(dim=-1)
        pos_rank, neg_rank = rank.chunk(2)
        model.recommendation_loss(pos_rank, neg_rank,
                                  node_id=eli.unique()).backward()

    fused_opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

    def adam_step(i: int, opt: torch.optim.Optimizer = opt) -> None:
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()

    def one_spmm(i: int) -> None:
        torch.sparse.mm(adj, grad)

    results['step components'] = interleaved(
        {
            'one CSR spmm (N x d)': one_spmm,
            'alpha-weighted layer sum fwd+bwd': layer_sum,
            'score gather + BPR loss fwd+bwd': gather_bpr,
            'Adam step (N x d)': adam_step,
            'Adam(fused=True) step (N x d)':
            lambda i: adam_step(i, fused_opt),
        }, args.repeats, args.warmup)
    return results


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--root', default=os.environ.get('PYG_CERP_DATA'),
                        help='data folder holding gowalla/raw/train.txt '
                        '(default: $PYG_CERP_DATA)')
    parser.add_argument('--dim', type=int, default=64, help='embedding size')
    parser.add_argument('--layers', type=int, default=3,
                        help='number of LGConv layers')
    parser.add_argument('--batch-size', type=int, default=2048,
                        help='BPR triples per step')
    parser.add_argument('--bucket-size', type=int, default=5000,
                        help='meta-table rows b of CompositionalEmbedding')
    parser.add_argument('--repeats', type=int, default=15,
                        help='timed steps per variant')
    parser.add_argument('--warmup', type=int, default=3,
                        help='untimed steps per variant')
    parser.add_argument('--threads', type=str, default=None,
                        help='comma-separated torch thread counts to run, '
                        'e.g. "1,2" (default: torch default)')
    parser.add_argument('--ablations', action='store_true',
                        help='also time COO layout, propagation alone and the '
                        'other step components')
    parser.add_argument('--fused-adam', action='store_true',
                        help='use torch.optim.Adam(fused=True) in all '
                        'training-step variants')
    parser.add_argument('--skip-cerp', action='store_true',
                        help='skip the CompositionalEmbedding variant')
    parser.add_argument('--json', default=None,
                        help='also write all raw timings to this JSON file')
    args = parser.parse_args(argv)
    if args.root is None:
        parser.error('pass --root or set PYG_CERP_DATA')

    edge_index, num_users, num_items = load_gowalla(args.root)
    num_nodes = num_users + num_items
    adj = _lightgcn_adjacency(edge_index, num_users, num_items)
    batches = sample_batches(edge_index, num_users, num_items,
                             args.batch_size, num_batches=16)

    threads = ([int(t) for t in args.threads.split(',')]
               if args.threads else [torch.get_num_threads()])
    report = dict(config=dict(vars(args), num_users=num_users,
                              num_items=num_items,
                              num_train=edge_index.size(1),
                              nnz=adj._nnz(), torch=torch.__version__),
                  runs={})
    for t in threads:
        torch.set_num_threads(t)
        print(f'## Gowalla: {num_users} users, {num_items} items, '
              f'{edge_index.size(1)} train interactions (nnz={adj._nnz()}); '
              f'd={args.dim}, layers={args.layers}, batch={args.batch_size}, '
              f'threads={t}, repeats={args.repeats}\n')
        results = run(args, adj, batches, num_nodes)
        for title, times in results.items():
            base = next(iter(times))
            print(markdown(times, base, title) + '\n')
        report['runs'][str(t)] = results

    if args.json:
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=1)


if __name__ == '__main__':
    main()
