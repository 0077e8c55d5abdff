import copy

import pytest
import torch
from torch_geometric.nn.conv import LGConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.nn.models import LightGCN
from torch_geometric.utils import (
    to_torch_coo_tensor,
    to_torch_csr_tensor,
    to_undirected,
)

from pyg_cerp.nn.propagation import (
    SymmetricLGConv,
    SymmetricSpMM,
    check_symmetric,
    is_symmetric,
    symmetric_spmm,
    use_symmetric_propagation,
)

NUM_USERS, NUM_ITEMS = 11, 13
NUM_NODES = NUM_USERS + NUM_ITEMS


def random_bipartite_edge_index(seed: int = 0) -> torch.Tensor:
    """Undirected user-item graph, items shifted by ``NUM_USERS``."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(NUM_USERS, NUM_ITEMS, generator=gen) < 0.3
    mask[torch.arange(NUM_USERS), torch.arange(NUM_USERS) % NUM_ITEMS] = True
    mask[torch.arange(NUM_ITEMS) % NUM_USERS, torch.arange(NUM_ITEMS)] = True
    user, item = mask.nonzero().t()
    edge_index = torch.stack([user, item + NUM_USERS], dim=0)
    return to_undirected(edge_index, num_nodes=NUM_NODES)


def normalized_adj(edge_index: torch.Tensor, layout: str = 'csr',
                   dtype: torch.dtype = torch.float) -> torch.Tensor:
    edge_index, edge_weight = gcn_norm(edge_index, None, NUM_NODES,
                                       add_self_loops=False, dtype=dtype)
    size = (NUM_NODES, NUM_NODES)
    if layout == 'csr':
        return to_torch_csr_tensor(edge_index, edge_weight, size=size)
    return to_torch_coo_tensor(edge_index, edge_weight, size=size)


def model_pair(normalize: bool = False, num_layers: int = 3):
    torch.manual_seed(12345)
    stock = LightGCN(NUM_NODES, embedding_dim=8, num_layers=num_layers,
                     normalize=normalize)
    fast = use_symmetric_propagation(copy.deepcopy(stock))
    return stock, fast


def loss_and_grad(model, edge_index, edge_label_index=None):
    model.zero_grad()
    out = model(edge_index, edge_label_index)
    (out * torch.linspace(-1, 2, out.numel())).sum().backward()
    return out.detach(), model.embedding.weight.grad.clone()


@pytest.mark.parametrize('layout', ['csr', 'coo'])
def test_symmetric_spmm_matches_sparse_mm(layout):
    adj = normalized_adj(random_bipartite_edge_index(), layout)
    x1 = torch.randn(NUM_NODES, 5, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    grad = torch.randn(NUM_NODES, 5)

    out1 = torch.sparse.mm(adj, x1)
    out1.backward(grad)
    out2 = symmetric_spmm(adj, x2, check=True)
    out2.backward(grad)
    assert torch.allclose(out1, out2, atol=1e-6)
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)


def test_symmetric_spmm_gradcheck():
    adj = normalized_adj(random_bipartite_edge_index(), dtype=torch.double)
    x = torch.randn(NUM_NODES, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: SymmetricSpMM.apply(adj, x),
                                    (x, ))
    assert torch.autograd.gradgradcheck(
        lambda x: symmetric_spmm(adj, x, check=True), (x, ))


def test_lightgcn_gradcheck_float64():
    adj = normalized_adj(random_bipartite_edge_index(), dtype=torch.double)
    model = LightGCN(NUM_NODES, 4, num_layers=2, normalize=False).double()
    use_symmetric_propagation(model)
    x = torch.randn(NUM_NODES, 4, dtype=torch.double, requires_grad=True)

    def propagate(x):
        out = x * model.alpha[0]
        for i, conv in enumerate(model.convs):
            x = conv(x, adj)
            out = out + x * model.alpha[i + 1]
        return out

    assert torch.autograd.gradcheck(propagate, (x, ))


@pytest.mark.parametrize('layout', ['csr', 'coo'])
def test_lightgcn_matches_stock_on_same_adjacency(layout):
    edge_index = random_bipartite_edge_index()
    adj = normalized_adj(edge_index, layout)
    stock, fast = model_pair(normalize=False)
    assert type(fast) is LightGCN
    assert all(isinstance(conv, SymmetricLGConv) for conv in fast.convs)

    label_index = torch.tensor([[0, 1, 2, 3], [NUM_USERS, 12, 15, 20]])
    for eli in [label_index, None]:  # `None` goes through `to_edge_index`.
        out1, grad1 = loss_and_grad(stock, adj, eli)
        out2, grad2 = loss_and_grad(fast, adj, eli)
        assert torch.allclose(out1, out2, atol=1e-6)
        assert torch.allclose(grad1, grad2, atol=1e-6)

    emb1 = stock.get_embedding(adj)
    emb2 = fast.get_embedding(adj)
    assert torch.allclose(emb1, emb2, atol=1e-6)


def test_lightgcn_matches_stock_on_edge_index():
    edge_index = random_bipartite_edge_index()
    adj = normalized_adj(edge_index)
    stock, _ = model_pair(normalize=True)  # PyG's own normalisation.
    _, fast = model_pair(normalize=False)  # Pre-normalised CSR.
    label_index = torch.tensor([[0, 4, 7], [NUM_USERS + 1, 14, 23]])

    out1, grad1 = loss_and_grad(stock, edge_index, label_index)
    out2, grad2 = loss_and_grad(fast, adj, label_index)
    assert torch.allclose(out1, out2, atol=1e-6)
    assert torch.allclose(grad1, grad2, atol=1e-6)


def test_normalize_true_on_raw_sparse_adjacency():
    edge_index = random_bipartite_edge_index()
    raw = to_torch_csr_tensor(edge_index, size=(NUM_NODES, NUM_NODES))
    stock, fast = model_pair(normalize=True)
    out1, grad1 = loss_and_grad(stock, edge_index)
    out2, grad2 = loss_and_grad(fast, raw, edge_index)
    assert torch.allclose(out1, out2, atol=1e-6)
    assert torch.allclose(grad1, grad2, atol=1e-6)


def test_fallback_for_edge_index_and_learnable_values():
    edge_index = random_bipartite_edge_index()
    x = torch.randn(NUM_NODES, 4)
    conv, ref = SymmetricLGConv(), LGConv()
    assert torch.allclose(conv(x, edge_index), ref(x, edge_index))

    # Learnable adjacency values: stock path, with gradients for the values.
    edge_index, edge_weight = gcn_norm(edge_index, None, NUM_NODES,
                                       add_self_loops=False)
    edge_weight.requires_grad_()
    adj = to_torch_csr_tensor(edge_index, edge_weight,
                              size=(NUM_NODES, NUM_NODES))
    out = SymmetricLGConv(normalize=False)(x, adj)
    out.sum().backward()
    assert edge_weight.grad is not None


def test_recommend_and_recommendation_loss():
    edge_index = random_bipartite_edge_index()
    adj = normalized_adj(edge_index)
    stock, fast = model_pair(normalize=False)

    src_index = torch.arange(NUM_USERS)
    dst_index = torch.arange(NUM_USERS, NUM_NODES)
    rec1 = stock.recommend(adj, src_index=src_index, dst_index=dst_index, k=3)
    rec2 = fast.recommend(adj, src_index=src_index, dst_index=dst_index, k=3)
    assert rec2.size() == (NUM_USERS, 3)
    assert bool((rec2 >= NUM_USERS).all())
    assert torch.equal(rec1, rec2)

    pos = torch.tensor([[0, 1, 2], [NUM_USERS, NUM_USERS + 1, 20]])
    neg = torch.tensor([[0, 1, 2], [NUM_USERS + 5, 22, 17]])
    node_id = torch.cat([pos, neg], dim=1).unique()
    grads = []
    for model in (stock, fast):
        model.zero_grad()
        rank = model(adj, torch.cat([pos, neg], dim=1))
        pos_rank, neg_rank = rank.chunk(2)
        loss = model.recommendation_loss(pos_rank, neg_rank, node_id=node_id)
        assert loss.dim() == 0 and torch.isfinite(loss)
        loss.backward()
        grads.append(model.embedding.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_non_symmetric_input_raises():
    edge_index = random_bipartite_edge_index()
    directed = edge_index[:, edge_index[0] < NUM_USERS]  # user -> item only
    adj = to_torch_csr_tensor(directed, size=(NUM_NODES, NUM_NODES))
    assert not is_symmetric(adj)
    with pytest.raises(ValueError, match='not symmetric'):
        check_symmetric(adj)

    _, fast = model_pair(normalize=False)
    with pytest.raises(ValueError, match='not symmetric'):
        fast.get_embedding(adj)
    with pytest.raises(ValueError, match='not symmetric'):
        symmetric_spmm(adj, torch.randn(NUM_NODES, 2), check=True)

    # Small value asymmetry on a structurally symmetric matrix:
    sym = normalized_adj(edge_index)
    values = sym.values().clone()
    values[0] += 0.1
    bad = torch.sparse_csr_tensor(sym.crow_indices(), sym.col_indices(),
                                  values, sym.size())
    assert is_symmetric(sym) and not is_symmetric(bad)
    with pytest.raises(ValueError, match='not symmetric'):
        fast.get_embedding(bad)

    # Opting out of the check skips it:
    conv = SymmetricLGConv(normalize=False, check_symmetric=False)
    conv(torch.randn(NUM_NODES, 2), adj)


def test_invalid_inputs_raise():
    rect = to_torch_csr_tensor(torch.tensor([[0, 1], [1, 2]]), size=(2, 3))
    with pytest.raises(ValueError, match='square'):
        check_symmetric(rect)
    with pytest.raises(TypeError, match='torch.sparse.Tensor'):
        check_symmetric(torch.eye(3))
    adj = normalized_adj(random_bipartite_edge_index())
    with pytest.raises(ValueError, match="'x' of shape"):
        symmetric_spmm(adj, torch.randn(NUM_NODES + 1, 2))
    with pytest.raises(TypeError, match='LightGCN'):
        use_symmetric_propagation(torch.nn.Linear(2, 2))


def test_use_symmetric_propagation_is_idempotent_and_keeps_optimizer():
    model = LightGCN(NUM_NODES, 8, num_layers=2, normalize=False)
    params = list(model.parameters())
    assert use_symmetric_propagation(model) is model
    convs = list(model.convs)
    use_symmetric_propagation(model)
    assert all(a is b for a, b in zip(convs, model.convs))
    assert all(a is b for a, b in zip(params, model.parameters()))
    assert 'SymmetricLGConv' in str(model.convs)


def test_symmetric_lightgcn_propagation():
    from pyg_cerp.nn.propagation import symmetric_lightgcn_propagation
    adj = normalized_adj(random_bipartite_edge_index(), dtype=torch.double)
    stock = LightGCN(NUM_NODES, 4, num_layers=3, normalize=False).double()
    stock.alpha = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.double)
    grad = torch.randn(NUM_NODES, 4, dtype=torch.double)

    stock.get_embedding(adj).backward(grad)
    x = stock.embedding.weight.detach().clone().requires_grad_()
    out = symmetric_lightgcn_propagation(adj, x, stock.alpha, check=True)
    out.backward(grad)
    assert torch.allclose(out, stock.get_embedding(adj))
    assert torch.allclose(x.grad, stock.embedding.weight.grad)

    x = torch.randn(NUM_NODES, 3, dtype=torch.double, requires_grad=True)
    alpha = torch.rand(4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, a: symmetric_lightgcn_propagation(adj, x, a), (x, alpha))


def test_fused_get_embedding_is_one_node_and_matches_stock():
    from pyg_cerp.nn.propagation import RowGatherTensor
    edge_index = random_bipartite_edge_index()
    adj = normalized_adj(edge_index)
    stock, fast = model_pair(normalize=False)
    assert 'get_embedding' in vars(fast)
    out = fast.get_embedding(adj)
    assert isinstance(out, RowGatherTensor)
    node = out.grad_fn.next_functions[0][0]  # Behind the subclass alias.
    assert type(node).__name__.startswith('_SymmetricLightGCN')
    assert torch.allclose(out, stock.get_embedding(adj), atol=1e-6)

    # Integer-tensor row gathers (1-D and 2-D) equal advanced indexing, and
    # their gradients too; other keys keep their meaning.
    index = torch.tensor([[3, 0, 3], [23, 5, 5]])
    ref = out.detach().clone().requires_grad_()
    view = ref.as_subclass(RowGatherTensor)
    for key in [index, index[0], index.int()]:
        assert torch.equal(view[key], ref.detach()[key.long()])
        grad = torch.randn(*key.shape, 8)
        g1, = torch.autograd.grad(view[key], ref, grad)
        g2, = torch.autograd.grad(ref[key.long()], ref, grad)
        assert torch.allclose(g1, g2)
    assert torch.equal(view[1:3], ref.detach()[1:3])
    assert torch.equal(view[view[:, 0] > 0], ref.detach()[ref[:, 0] > 0])
    assert type(view * 2) is torch.Tensor

    # Edge-index input and edge weights go through PyG's own method.
    e1 = fast.get_embedding(edge_index)
    assert not isinstance(e1, RowGatherTensor)
    assert torch.allclose(e1, stock.get_embedding(edge_index), atol=1e-6)

    # A deep copy keeps the fused path bound to the copy.
    twin = copy.deepcopy(fast)
    assert twin.get_embedding.__self__ is twin
    assert isinstance(twin.get_embedding(adj), RowGatherTensor)

    use_symmetric_propagation(fast, fused=False)
    assert 'get_embedding' not in vars(fast)
    assert not isinstance(fast.get_embedding(adj), RowGatherTensor)


def test_fused_get_embedding_with_compositional_embedding():
    from pyg_cerp.nn import CompositionalEmbedding
    adj = normalized_adj(random_bipartite_edge_index())
    stock, fast = model_pair(normalize=False)
    torch.manual_seed(1)
    stock.embedding = CompositionalEmbedding(NUM_NODES, 8, 6,
                                             threshold_init=-3.)
    fast.embedding = copy.deepcopy(stock.embedding)
    eli = torch.tensor([[0, 1, 2, 3, 0], [NUM_USERS, 12, 15, 20, 21]])
    grads = []
    for model in (stock, fast):
        model.zero_grad()
        (model(adj, eli) * torch.arange(5.)).sum().backward()
        grads.append([p.grad.clone() for p in model.embedding.parameters()])
    for g1, g2 in zip(*grads):
        assert torch.allclose(g1, g2, atol=1e-6)


def test_int32_kernel_matrix_is_cached_and_exact():
    from pyg_cerp.nn import propagation
    adj = normalized_adj(random_bipartite_edge_index())
    k1 = propagation._kernel_matrix(adj)
    assert k1.crow_indices().dtype == torch.int32
    assert propagation._kernel_matrix(adj) is k1
    x = torch.randn(NUM_NODES, 5)
    assert torch.allclose(torch.sparse.mm(k1, x), torch.sparse.mm(adj, x))
    key = id(adj)
    del adj, k1
    assert key not in propagation._INT32_CSR
