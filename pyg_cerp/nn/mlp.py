r"""An NCF-style MLP scorer over any embedding module."""
from typing import List, Optional, Sequence

import torch
from torch import Tensor
from torch.nn import Module

from torch_geometric.nn.models import MLP

#: The named architectures of :class:`MLPScorer` (see its docstring).
MLP_PRESETS = ('small', 'official')


class MLPScorer(Module):
    r"""Scores (user, item) pairs with a multi-layer perceptron over the
    concatenated user and item embeddings (the MLP branch of NCF, `"Neural
    Collaborative Filtering" <https://arxiv.org/abs/1708.05031>`_),

    .. math::
        \mathbf{x}_{ui} = [\mathbf{e}_u \,\|\, \mathbf{e}_{N_U + i}]
        \;\Big/\; \max\!\left(1, \|\mathbf{x}_{ui}\|_0\right)
        \ \text{(if normalize\_input)}, \qquad
        \hat{y}_{ui} = \mathbf{w}^\top \mathbf{h}_L + c, \quad
        \mathbf{h}_l = \mathrm{Dropout}(\mathrm{ReLU}(\mathrm{BN}(
        \mathbf{W}_l \mathbf{h}_{l-1} + \mathbf{b}_l))),
        \quad \mathbf{h}_0 = \mathbf{x}_{ui},

    where :math:`\|\mathbf{x}\|_0` counts the non-zero entries of the
    :math:`2d`-dimensional input (for a pruned embedding, heavily pruned
    entities get their few values scaled up) and :math:`\mathrm{BN}` is
    batch normalisation (identity if :obj:`batch_norm=False`).

    Two named architectures (:obj:`preset`):

    * :obj:`'small'` (the default): one hidden layer of 64 units, no batch
      normalisation, no input normalisation. Full-ranking evaluation costs
      about :math:`2 \cdot 64` multiply-adds per (user, item) pair after the
      first layer is split into its user and item halves
      (:meth:`score_all`), so all of Gowalla's :math:`3 \cdot 10^4 \times 4
      \cdot 10^4` pairs take about a minute on two CPU cores;
    * :obj:`'official'`: the MLP of the official CERP code
      (``CERP/models/modules.py``, class :obj:`MLP`, with torchfm's
      :obj:`MultiLayerPerceptron`): input divided by its non-zero count,
      :obj:`num_layers=3` *expanding* hidden layers of widths
      :math:`2d \cdot 2, 2d \cdot 4, 2d \cdot 8` (:math:`256, 512, 1024` for
      :math:`d = 64`), each Linear, BatchNorm, ReLU, Dropout(0), then a
      Linear output; Xavier-uniform weights (biases as
      :class:`torch.nn.Linear`). About :math:`6.6 \cdot 10^5`
      multiply-adds per pair at :math:`d = 64`: full ranking needs a GPU.

    Explicit arguments override the preset's values. In evaluation mode
    batch normalisation is the affine map of its running statistics, so
    :meth:`score_all` equals :meth:`forward` on every pair. In training mode
    it normalises over the pairs of one call: score positives and negatives
    in *one* call (as :class:`~pyg_cerp.train.MLPRecommender` does), or
    their statistics differ and the normalisation removes the score gap BPR
    learns from.

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
            :obj:`[*index.shape, d]` and it must expose
            :obj:`embedding_dim`.
        hidden_channels (Sequence[int], optional): The hidden layer sizes
            (:obj:`None`: the preset's, :obj:`(64,)` or
            :math:`(4d, 8d, 16d)`). (default: :obj:`None`)
        dropout (float, optional): Dropout after each hidden layer
            (:obj:`None`: the preset's, :obj:`0.`). (default: :obj:`None`)
        batch_norm (bool, optional): Batch normalisation after each hidden
            linear layer (:obj:`None`: the preset's). (default: :obj:`None`)
        normalize_input (bool, optional): Divide the concatenated input by
            its number of non-zeros (at least 1) (:obj:`None`: the
            preset's). (default: :obj:`None`)
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
        r"""Resets all learnable parameters of the module: the embedding's,
        Xavier-uniform weights of every linear layer (biases as
        :class:`torch.nn.Linear`), batch-norm statistics and affine
        parameters."""
        self.embedding.reset_parameters()
        self.mlp.reset_parameters()
        for lin in self.mlp.lins:
            torch.nn.init.xavier_uniform_(lin.weight)

    def _check(self, index: Tensor, size: int, name: str) -> None:
        from pyg_cerp.utils.validation import check_index
        check_index(index, size, name)

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        r"""Scores the pairs :obj:`(user[i], item[i])` (broadcastable shapes of
        local user and item ids).

        Args:
            user (torch.Tensor): Local user ids in :math:`[0, N_U)`.
            item (torch.Tensor): Local item ids in :math:`[0, N_I)`.

        Returns:
            The scores, of the broadcast shape of :obj:`user` and :obj:`item`.
        """
        self._check(user, self.num_users, 'user')
        self._check(item, self.num_items, 'item')
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
        r"""Scores every item for each user in :obj:`user` (for full-ranking
        evaluation, with batch normalisation in evaluation mode), in chunks
        of :obj:`item_batch_size` items. The first linear layer is split into
        its user and item halves, :math:`\mathbf{W}_1 \mathbf{x}_{ui} =
        (\mathbf{W}_1^{(u)} \mathbf{e}_u + \mathbf{W}_1^{(i)}
        \mathbf{e}_i) / c_{ui}` with :math:`c_{ui} = \max(1, \|\mathbf{e}_u
        \|_0 + \|\mathbf{e}_i\|_0)` (:math:`1` without input normalisation),
        so each half is computed once per user and item, not once per pair.

        Args:
            user (torch.Tensor): Local user ids :obj:`[U]`.
            item_batch_size (int, optional): Items per chunk.
                (default: :obj:`8192`)

        Returns:
            A tensor of shape :obj:`[len(user), num_items]`.
        """
        self._check(user, self.num_users, 'user')
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
