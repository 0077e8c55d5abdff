r"""The nn modules reproduce outputs recorded before the issue-13 redesign.

``reference_outputs.pth`` was written by ``python tests/nn/test_reference.py``
on the pre-redesign code (commit c3f0df8): parameters after a seeded
construction and after a seeded :meth:`reset_parameters`, forward outputs on
fixed ids, :attr:`weight`, gradients, pruning losses, masks after
:meth:`freeze_masks`, state-dict keys (in order), scorer and propagation
outputs. Every value must match to 1e-6 (on the recording machine: exactly)
one platform's record (``tests/conftest.py``: ``PLATFORMS``):
``reference_outputs_B.pth`` holds the values that the same pre-redesign code
(982d82f, ``python tests/nn/test_reference.py --write B`` there, one thread)
gives differently on platform B.
"""
import copy
import os.path as osp
import sys
import warnings
from typing import Dict

import torch
from torch import Tensor
from torch_geometric.nn.models import LightGCN

from pyg_cerp.nn import (CompositionalEmbedding, FullEmbedding, HashEmbedding,
                         MLPScorer, PEPEmbedding, QREmbedding,
                         symmetric_lightgcn_propagation,
                         use_symmetric_propagation)

PATH = osp.join(osp.dirname(__file__), 'reference_outputs.pth')
PLATFORM_PATH = osp.join(osp.dirname(__file__), 'reference_outputs_{}.pth')
IDS = torch.tensor([[0, 5, 99, 5], [37, 1, 98, 64]])


def references() -> Dict[str, Dict[str, Tensor]]:
    r"""Each platform's record: A's file, updated by the others' files."""
    ref = torch.load(PATH, weights_only=True)
    out = {'A': ref}
    for platform in ('B', ):
        diff = torch.load(PLATFORM_PATH.format(platform), weights_only=True)
        assert set(diff) <= set(ref)
        out[platform] = dict(ref, **diff)
    return out


def _record(out: Dict[str, Tensor], name: str, emb, seed: int) -> None:
    torch.manual_seed(seed)
    for key, value in emb.state_dict().items():
        if isinstance(value, Tensor):
            out[f'{name}/init/{key}'] = value.clone()
    out[f'{name}/keys'] = torch.tensor([ord(c) for c in ','.join(
        [*emb.state_dict()] + [n for n, _ in emb.named_parameters()])])
    weight = emb.weight
    out[f'{name}/weight'] = weight.detach().clone()
    fwd = emb(IDS)
    out[f'{name}/forward'] = fwd.detach().clone()
    coef = torch.linspace(-1., 2., weight.numel()).view_as(weight)
    loss = (weight * coef).sum() + fwd.pow(2).sum()
    if hasattr(emb, 'pruning_loss'):
        for i, index in enumerate((None, IDS)):
            pl = emb.pruning_loss(index, K=3.)
            out[f'{name}/pruning_loss{i}'] = pl.detach().clone()
            loss = loss + pl
    loss.backward()
    for key, p in emb.named_parameters():
        if p.grad is not None:
            out[f'{name}/grad/{key}'] = p.grad.clone()
    torch.manual_seed(seed + 1)
    emb.reset_parameters()
    for key, value in emb.state_dict().items():
        if isinstance(value, Tensor):
            out[f'{name}/reset/{key}'] = value.clone()


def outputs() -> Dict[str, Tensor]:
    out: Dict[str, Tensor] = {}
    warnings.simplefilter('ignore')
    n, d = 100, 4

    def build(name, fn, seed):
        torch.manual_seed(seed)
        return fn()

    for name, fn in [
        ('cerp', lambda: CompositionalEmbedding(n, d, 12, threshold_init=-1.)),
        ('cerp-small-b', lambda: CompositionalEmbedding(n, d, 7,
                                                        threshold_init=-2.)),
        ('pep', lambda: PEPEmbedding(n, d, threshold_init=-4.)),
        ('qr-add', lambda: QREmbedding(n, d, 13)),
        ('qr-mul', lambda: QREmbedding(n, d, 11, operation='mul')),
        ('hash', lambda: HashEmbedding(n, d, 17, seed=3)),
        ('hash-mod', lambda: HashEmbedding(n, d, 17, hash='mod')),
        ('full', lambda: FullEmbedding(n, d)),
    ]:
        _record(out, name, build(name, fn, 0), seed=10)

    # Retrain mode: CERP and PEP frozen with and without rewind.
    for name, fn in [
        ('cerp', lambda: CompositionalEmbedding(n, d, 12, threshold_init=-1.)),
        ('pep', lambda: PEPEmbedding(n, d, threshold_init=-4.)),
    ]:
        for rewind in (False, True):
            emb = build(name, fn, 1)
            init = emb.initial_state()
            with torch.no_grad():
                for p in emb.parameters():
                    p.mul_(1.5)
            emb.freeze_masks(rewind_to=init if rewind else None)
            for i, m in enumerate(emb.masks()):
                out[f'{name}-retrain{int(rewind)}/masks{i}'] = m.clone()
            _record(out, f'{name}-retrain{int(rewind)}', emb, seed=20)

    torch.manual_seed(2)
    full = torch.randn(n, d)
    _record(out, 'magnitude', PEPEmbedding.from_magnitude(full, 0.1), seed=30)

    # Scorers.
    for preset in ('small', 'official'):
        torch.manual_seed(3)
        emb = CompositionalEmbedding(50, 8, 8, threshold_init=-3.)
        model = MLPScorer(20, 30, emb, preset=preset)
        user = torch.tensor([0, 3, 19, 3])
        item = torch.tensor([[1], [29], [0], [7]])
        score = model(user, item)
        score.pow(2).sum().backward()
        out[f'mlp-{preset}/train'] = score.detach().clone()
        for key, p in model.named_parameters():
            out[f'mlp-{preset}/grad/{key}'] = p.grad.clone()
        model.eval()
        out[f'mlp-{preset}/eval'] = model(user, item).detach().clone()
        out[f'mlp-{preset}/score_all'] = model.score_all(
            user, item_batch_size=7).detach().clone()

    # Propagation.
    gen = torch.Generator().manual_seed(4)
    row = torch.randint(0, 30, (200, ), generator=gen)
    col = torch.randint(30, 60, (200, ), generator=gen)
    edge_index = torch.stack([torch.cat([row, col]), torch.cat([col, row])])
    from torch_geometric.nn.conv.gcn_conv import gcn_norm
    from torch_geometric.utils import to_torch_csr_tensor
    ei, ew = gcn_norm(edge_index, None, 60, add_self_loops=False)
    adj = to_torch_csr_tensor(ei, ew, size=(60, 60))
    torch.manual_seed(5)
    stock = LightGCN(60, 8, num_layers=3, normalize=False)
    fast = use_symmetric_propagation(copy.deepcopy(stock))
    label = torch.tensor([[0, 1, 29], [30, 59, 45]])
    for name, model in (('stock', stock), ('fast', fast)):
        pred = model(adj, label)
        pred.pow(2).sum().backward()
        out[f'lightgcn-{name}/pred'] = pred.detach().clone()
        out[f'lightgcn-{name}/grad'] = model.embedding.weight.grad.clone()
    x = torch.randn(60, 3, requires_grad=True)
    alpha = torch.tensor([0.4, 0.3, 0.2, 0.1], requires_grad=True)
    y = symmetric_lightgcn_propagation(adj, x, alpha, check=True)
    y.pow(2).sum().backward()
    out['propagation/out'] = y.detach().clone()
    out['propagation/grad_x'] = x.grad.clone()
    out['propagation/grad_alpha'] = alpha.grad.clone()
    return out


def _flat(values: Dict[str, Tensor]) -> Dict[str, float]:
    # Element-wise numbers, so that values compare to 1e-6 one by one.
    return {f'{k}/{i}': float(x) for k, v in values.items()
            for i, x in enumerate(v.flatten().tolist())}


def test_outputs_match_reference(match_platform):
    new, refs = outputs(), references()
    match_platform(_flat(new), {platform: _flat(ref)
                                for platform, ref in refs.items()})
    for ref in refs.values():  # Same keys and shapes everywhere.
        assert {k: v.shape for k, v in new.items()} == \
            {k: v.shape for k, v in ref.items()}


if __name__ == '__main__':  # pragma: no cover
    torch.set_num_threads(1)
    if sys.argv[1:] == ['--write']:  # Platform A: every value.
        torch.save(outputs(), PATH)
    elif sys.argv[1:2] == ['--write']:  # Another platform: what differs.
        ref, new = torch.load(PATH, weights_only=True), outputs()
        torch.save({k: v for k, v in new.items()
                    if not torch.equal(v, ref[k])},
                   PLATFORM_PATH.format(sys.argv[2]))
    else:  # Report which values differ bitwise.
        ref, new = torch.load(PATH, weights_only=True), outputs()
        for key in sorted(ref):
            if key not in new or not torch.equal(ref[key], new[key]):
                diff = ('missing' if key not in new else
                        float((ref[key].double() - new[key].double()).abs()
                              .max()) if ref[key].dtype != torch.bool else
                        'mask')
                print('DIFF', key, diff)
        print('extra', sorted(set(new) - set(ref)))
        print('checked', len(ref))
