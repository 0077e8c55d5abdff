r"""An NCF-style MLP scorer over any embedding module."""
from typing import List, Optional, Sequence

import torch
from torch import Tensor
from torch.nn import Module
from torch_geometric.nn.models import MLP

from pyg_cerp.utils.validation import check_index

#: The named architectures of :class:`MLPScorer` (see its docstring).
MLP_PRESETS = ('small', 'official')


class MLPScorer(Module):
    r"""Scores (user, item) pairs with an MLP over the concatenated user and
    item embeddings (the MLP branch of `"Neural Collaborative Filtering"
    <https://arxiv.org/abs/1708.05031>`_),

    .. math::
        \hat{y}_{ui} = \mathrm{MLP}(\mathbf{x}_{ui}), \qquad
        \mathbf{x}_{ui} = [\mathbf{e}_u \,\|\, \mathbf{e}_{N_U + i}]
        \ \big/ \max(1, \|[\mathbf{e}_u \,\|\, \mathbf{e}_{N_U + i}]\|_0)
        \ \text{(with normalize\_input)},

    hidden layers Linear, BatchNorm (optional), ReLU, Dropout and a linear
    output. Users and items share one embedding over :math:`N_U + N_I`
    entities, items offset by :math:`N_U` (PyG's node order), so any module
    with the :class:`torch.nn.Embedding` interface plugs in.

    Presets: :obj:`'small'` (one hidden layer of 64, no normalisations;
    :meth:`score_all` ranks all of Gowalla in about a minute on two cores)
    and :obj:`'official'` (the official CERP MLP: input normalisation, hidden
    widths :math:`4d, 8d, 16d` with batch normalisation; Xavier-uniform
    weights; needs a GPU for full ranking). Explicit arguments override the
    preset. In training mode batch normalisation mixes the pairs of one call:
    score positives and negatives together (as
    :class:`~pyg_cerp.train.MLPRecommender` does).

    Args:
        num_users (int): The number of users :math:`N_U`.
        num_items (int): The number of items :math:`N_I`.
        embedding (torch.nn.Module): The embedding of :math:`N_U + N_I`
            entities, with :obj:`embedding_dim`.
        hidden_channels (Sequence[int], optional): The hidden sizes
            (:obj:`None`: the preset's). (default: :obj:`None`)
        dropout (float, optional): Dropout after each hidden layer
            (:obj:`None`: :obj:`0.`). (default: :obj:`None`)
        batch_norm (bool, optional): Batch normalisation in the hidden layers
            (:obj:`None`: the preset's). (default: :obj:`None`)
        normalize_input (bool, optional): Divide the input by its number of
            non-zeros (:obj:`None`: the preset's). (default: :obj:`None`)
        preset (str, optional): :obj:`'small'` or :obj:`'official'`.
            (default: :obj:`'small'`)
    """
    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding: Module,
        hidden_channels: Optional[Sequence[int]] = None,
        dropout: Optional[float] = None,
        batch_norm: Optional[bool] = None,
        normalize_input: Optional[bool] = None,
        preset: str = 'small',
    ) -> None:
        super().__init__()
        if preset not in MLP_PRESETS:
            raise ValueError(f"'preset' must be one of {MLP_PRESETS} "
                             f"(got {preset!r})")
        num_embeddings = getattr(embedding, 'num_embeddings', None)
        if num_embeddings is not None and \
                num_embeddings != num_users + num_items:
            raise ValueError(
                f"'embedding' holds {num_embeddings} entities, but "
                f"num_users + num_items = {num_users + num_items}")
        dim = getattr(embedding, 'embedding_dim', None)
        if dim is None:
            raise ValueError("'embedding' must expose 'embedding_dim'")
        official = preset == 'official'
        if hidden_channels is None:
            hidden_channels = ((4 * dim, 8 * dim, 16 * dim) if official else
                               (64, ))
        hidden_channels = tuple(int(h) for h in hidden_channels)
        if any(h < 1 for h in hidden_channels):
            raise ValueError(f"'hidden_channels' must be positive "
                             f"(got {hidden_channels})")
        if len(hidden_channels) == 0:
            raise ValueError("'hidden_channels' must hold at least one layer")
        dropout = 0. if dropout is None else float(dropout)
        if not 0. <= dropout < 1.:
            raise ValueError(f"'dropout' must be in [0, 1) (got {dropout})")
        self.num_users = num_users
        self.num_items = num_items
        self.embedding = embedding
        self.preset = preset
        self.batch_norm = official if batch_norm is None else bool(batch_norm)
        self.normalize_input = (official if normalize_input is None else
                                bool(normalize_input))
        self.mlp = MLP([2 * dim, *hidden_channels, 1], dropout=dropout,
                       norm='batch_norm' if self.batch_norm else None,
                       act='relu', plain_last=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Resets the embedding, the MLP and (Xavier uniform) its linear
        weights."""
        self.embedding.reset_parameters()
        self.mlp.reset_parameters()
        for lin in self.mlp.lins:
            torch.nn.init.xavier_uniform_(lin.weight)

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        r"""The scores of the pairs :obj:`(user, item)` (broadcastable
        local ids in :math:`[0, N_U)` and :math:`[0, N_I)`), of their
        broadcast shape."""
        check_index(user, self.num_users, 'user')
        check_index(item, self.num_items, 'item')
        user, item = torch.broadcast_tensors(user, item)
        e_u = self.embedding(user)
        e_i = self.embedding(item + self.num_users)
        x = torch.cat([e_u, e_i], dim=-1)
        if self.normalize_input:
            x = x / x.count_nonzero(dim=-1).clamp_(min=1).unsqueeze(-1)
        shape = x.shape[:-1]
        # BatchNorm1d takes [pairs, channels]: flatten the pair dimensions.
        return self.mlp(x.reshape(-1, x.size(-1))).view(shape)

    def score_all(self, user: Tensor, item_batch_size: int = 8192) -> Tensor:
        r"""The :obj:`[len(user), num_items]` scores of every item for the
        local user ids :obj:`user` (full ranking, batch normalisation in
        evaluation mode), with the first layer split into its user and item
        halves, :math:`\mathbf{W}_1 \mathbf{x}_{ui} = (\mathbf{W}_1^{(u)}
        \mathbf{e}_u + \mathbf{W}_1^{(i)} \mathbf{e}_i) / c_{ui}`, each
        computed once per user or item.

        Args:
            user (torch.Tensor): Local user ids :obj:`[U]`.
            item_batch_size (int, optional): Items per chunk.
                (default: :obj:`8192`)
        """
        check_index(user, self.num_users, 'user')
        if item_batch_size < 1:
            raise ValueError(f"'item_batch_size' must be positive "
                             f"(got {item_batch_size})")
        e_u = self.embedding(user)  # [U, d]
        items = torch.arange(self.num_items, device=e_u.device)
        e_i_all = self.embedding(items + self.num_users)  # [I, d]
        first = self.mlp.lins[0]
        d = e_u.size(-1)
        h_u = e_u @ first.weight[:, :d].t()
        h_i = e_i_all @ first.weight[:, d:].t()
        c_u = c_i = None
        if self.normalize_input:
            c_u = e_u.count_nonzero(dim=-1).to(h_u.dtype)
            c_i = e_i_all.count_nonzero(dim=-1).to(h_u.dtype)
        outs: List[Tensor] = []
        for start in range(0, self.num_items, item_batch_size):
            stop = start + item_batch_size
            h = h_u.unsqueeze(1) + h_i[start:stop]  # [U, I', hidden]
            if c_u is not None:
                c = (c_u.unsqueeze(1) + c_i[start:stop]).clamp_(min=1)
                h = h / c.unsqueeze(-1)
            if first.bias is not None:
                h = h + first.bias
            shape = h.shape[:-1]
            out = self._rest(h.reshape(-1, h.size(-1)))
            outs.append(out.view(shape))
        return torch.cat(outs, dim=1)

    def _rest(self, h: Tensor) -> Tensor:
        # Everything in the MLP after the first linear layer (the order of
        # torch_geometric.nn.models.MLP.forward: lin, norm, act, dropout).
        mlp = self.mlp
        for i, norm in enumerate(mlp.norms):
            if i > 0:
                h = mlp.lins[i](h)
            h = norm(h)
            h = mlp.act(h)
            h = torch.nn.functional.dropout(h, p=mlp.dropout[i],
                                            training=mlp.training)
        h = mlp.lins[-1](h)
        return h.squeeze(-1)

    def extra_repr(self) -> str:
        return (f'num_users={self.num_users}, num_items={self.num_items}, '
                f'preset={self.preset!r}, channels={self.mlp.channel_list}, '
                f'batch_norm={self.batch_norm}, '
                f'normalize_input={self.normalize_input}')
