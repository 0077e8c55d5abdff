import pytest
import torch

from pyg_cerp.utils.adjacency import lightgcn_adjacency


def dense_reference(edge_index, num_users, num_items):
    n = num_users + num_items
    A = torch.zeros(n, n, dtype=torch.float64)
    for u, i in edge_index.t().tolist():
        A[u, num_users + i] = A[num_users + i, u] = 1.0
    deg = A.sum(1)
    inv = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    return inv.view(-1, 1) * A * inv.view(1, -1)


def test_matches_dense_reference():
    # User 3 and items 4, 5 are isolated; (0, 1) is duplicated.
    edge_index = torch.tensor([[0, 0, 1, 2, 2, 0], [0, 1, 1, 2, 3, 1]])
    adj = lightgcn_adjacency(edge_index, num_users=4, num_items=6)
    assert adj.layout == torch.sparse_csr
    assert adj.shape == (10, 10)
    dense = adj.to_dense()
    ref = dense_reference(edge_index, 4, 6).to(dense.dtype)
    assert torch.allclose(dense, ref)
    assert torch.equal(dense, dense.t())
    assert torch.isfinite(dense).all()
    for node in (3, 4 + 4, 4 + 5):  # isolated -> zero rows and columns
        assert dense[node].abs().sum() == 0 and dense[:, node].abs().sum() == 0
    # Value check by hand: user 0 has degree 2, item 1 has degree 2.
    assert dense[0, 4 + 1].item() == pytest.approx(1 / 2)


def test_random_graph_symmetric():
    gen = torch.Generator().manual_seed(0)
    edge_index = torch.stack([torch.randint(0, 30, (200, ), generator=gen),
                              torch.randint(0, 50, (200, ), generator=gen)])
    adj = lightgcn_adjacency(edge_index, 30, 50).to_dense()
    assert torch.allclose(adj, adj.t())
    assert torch.allclose(adj, dense_reference(edge_index, 30, 50).float(),
                          atol=1e-6)
    # Bipartite: no user-user or item-item entries.
    assert adj[:30, :30].abs().sum() == 0 and adj[30:, 30:].abs().sum() == 0


def test_matches_to_homogeneous_order():
    from torch_geometric.data import HeteroData
    data = HeteroData()
    data['user'].num_nodes = 3
    data['item'].num_nodes = 2
    ei = torch.tensor([[0, 2], [1, 0]])
    data['user', 'rates', 'item'].edge_index = ei
    homo = data.to_homogeneous()
    src, dst = homo.edge_index[:, 0].tolist()
    adj = lightgcn_adjacency(ei, 3, 2).to_dense()
    assert adj[src, dst] > 0 and adj[dst, src] > 0


def test_bad_ids():
    with pytest.raises(ValueError, match='item id 5 >= num_items'):
        lightgcn_adjacency(torch.tensor([[0], [5]]), 2, 5)
    with pytest.raises(ValueError, match='user id 2 >= num_users'):
        lightgcn_adjacency(torch.tensor([[2], [0]]), 2, 5)
