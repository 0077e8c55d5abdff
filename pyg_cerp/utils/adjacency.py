r"""The normalized user-item adjacency matrix of LightGCN."""
import warnings

import torch
from torch import Tensor
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import to_torch_csr_tensor, to_undirected

from pyg_cerp.utils.validation import check_edge_ids


def lightgcn_adjacency(edge_index: Tensor, num_users: int,
                       num_items: int) -> Tensor:
    r"""Returns the symmetrically normalized bipartite adjacency matrix of
    LightGCN,

    .. math::
        \hat{\mathbf{A}} = \mathbf{D}^{-1/2} \mathbf{A} \mathbf{D}^{-1/2},
        \qquad
        \mathbf{A} = \begin{bmatrix} \mathbf{0} & \mathbf{R} \\
        \mathbf{R}^{\top} & \mathbf{0} \end{bmatrix},

    with :math:`\mathbf{R} \in \{0, 1\}^{U \times I}` the interactions
    (duplicates count once) and :math:`\mathbf{D}` the degrees of
    :math:`\mathbf{A}` (:func:`~torch_geometric.nn.conv.gcn_conv.gcn_norm`
    without self-loops; isolated nodes get zero rows, no :obj:`nan`).  Node
    :math:`u < U` is user :math:`u`, node :math:`U + i` item :math:`i`, the
    order of :meth:`~torch_geometric.data.HeteroData.to_homogeneous`.

    Args:
        edge_index (torch.Tensor): The :obj:`[2, E]` (user, item) pairs.
        num_users (int): :math:`U`.
        num_items (int): :math:`I`.

    Returns:
        A :obj:`torch.sparse_csr` tensor of shape :obj:`[U + I, U + I]`.
    """
    check_edge_ids(edge_index, num_users, num_items)
    num_nodes = num_users + num_items
    edge_index = edge_index.to(torch.long)
    homo = torch.stack([edge_index[0], edge_index[1] + num_users])
    homo = to_undirected(homo, num_nodes=num_nodes)  # also coalesces
    homo, weight = gcn_norm(homo, None, num_nodes, add_self_loops=False)
    with warnings.catch_warnings():  # PyTorch's "beta" notes on CSR tensors
        warnings.filterwarnings('ignore', message='.*[Ss]parse.*')
        return to_torch_csr_tensor(homo, weight, size=(num_nodes, num_nodes))
