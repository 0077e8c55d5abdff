r"""An NCF-style MLP scorer over any embedding module."""
from typing import List, Sequence

import torch
from torch import Tensor
from torch.nn import Module

from torch_geometric.nn.models import MLP


class MLPScorer(Module):
    r"""Scores (user, item) pairs with a multi-layer perceptron over the
    concatenated user and item embeddings (the MLP branch of NCF, `"Neural
    Collaborative Filtering" <https://arxiv.org/abs/1708.05031>`_),

    .. math::
        \hat{y}_{ui} = \mathrm{MLP}\left([\mathbf{e}_u \,\|\,
        \mathbf{e}_{N_U + i}]\right) \in \mathbb{R}.

    Users and items share one embedding module over :math:`N_U + N_I`
    entities, users first, items offset by :math:`N_U` (the node order of
    :meth:`HeteroData.to_homogeneous` and of PyG's
    :class:`~torch_geometric.nn.models.LightGCN`), so any module with the
    :class:`torch.nn.Embedding` interface plugs in: :class:`torch.nn.Embedding`
    or :class:`~pyg_cerp.nn.CompositionalEmbedding`.

    Args:
        num_users (int): The number of users :math:`N_U`.
        num_items (int): The number of items :math:`N_I`.
        embedding (torch.nn.Module): The embedding module over
            :math:`N_U + N_I` entities; :obj:`embedding(index)` must return
            :obj:`[*index.shape, d]`.
        hidden_channels (Sequence[int], optional): The hidden layer sizes.
            (default: :obj:`(128, 64)`)
        dropout (float, optional): Dropout between hidden layers.
            (default: :obj:`0.`)
    """
    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding: Module,
        hidden_channels: Sequence[int] = (128, 64),
        dropout: float = 0.,
    ) -> None:
        super().__init__()
        num_embeddings = getattr(embedding, 'num_embeddings', None)
        if num_embeddings is not None and \
                num_embeddings != num_users + num_items:
            raise ValueError(
                f"'embedding' holds {num_embeddings} entities, but "
                f"num_users + num_items = {num_users + num_items}")
        dim = getattr(embedding, 'embedding_dim', None)
        if dim is None:
            raise ValueError("'embedding' must expose 'embedding_dim'")
        self.num_users = num_users
        self.num_items = num_items
        self.embedding = embedding
        self.mlp = MLP([2 * dim, *hidden_channels, 1], dropout=dropout,
                       norm=None, act='relu')
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Resets all learnable parameters of the module."""
        self.embedding.reset_parameters()
        self.mlp.reset_parameters()

    def _check(self, index: Tensor, size: int, name: str) -> None:
        from pyg_cerp.utils.validation import check_index
        check_index(index, size, name)

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        r"""Scores the pairs :obj:`(user[i], item[i])` (broadcastable shapes of
        local user and item ids).

        Returns:
            The scores, of the broadcast shape of :obj:`user` and :obj:`item`.
        """
        self._check(user, self.num_users, 'user')
        self._check(item, self.num_items, 'item')
        user, item = torch.broadcast_tensors(user, item)
        e_u = self.embedding(user)
        e_i = self.embedding(item + self.num_users)
        return self.mlp(torch.cat([e_u, e_i], dim=-1)).squeeze(-1)

    def score_all(self, user: Tensor, item_batch_size: int = 8192) -> Tensor:
        r"""Scores every item for each user in :obj:`user` (for full-ranking
        evaluation), in chunks of :obj:`item_batch_size` items.

        Returns:
            A tensor of shape :obj:`[len(user), num_items]`.
        """
        self._check(user, self.num_users, 'user')
        e_u = self.embedding(user)  # [U, d]
        items = torch.arange(self.num_items, device=e_u.device)
        e_i_all = self.embedding(items + self.num_users)  # [I, d]
        # The first layer is linear in [e_u || e_i]: split it so that the
        # user and item halves are computed once, not once per pair.
        first = self.mlp.lins[0]
        d = e_u.size(-1)
        h_u = e_u @ first.weight[:, :d].t()
        h_i = e_i_all @ first.weight[:, d:].t() + first.bias
        outs: List[Tensor] = []
        for start in range(0, self.num_items, item_batch_size):
            h = h_u.unsqueeze(1) + h_i[start:start + item_batch_size]
            outs.append(self._rest(h).squeeze(-1))
        return torch.cat(outs, dim=1)

    def _rest(self, h: Tensor) -> Tensor:
        # Apply everything in the MLP after the first linear layer.
        mlp = self.mlp
        for i, lin in enumerate(mlp.lins[1:], start=1):
            h = mlp.act(h)
            h = torch.nn.functional.dropout(h, p=mlp.dropout[i - 1],
                                            training=mlp.training)
            h = lin(h)
        return h

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_users={self.num_users}, '
                f'num_items={self.num_items}, embedding={self.embedding}, '
                f'mlp={self.mlp.channel_list})')
