r"""Backbones trained by the CERP pipeline behind one small interface."""
from typing import Any, Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module

from pyg_cerp.distributed import DistContext, RowPartition
from pyg_cerp.nn.propagation import RowGatherTensor

ScoreFn = Callable[[Tensor], Tensor]


def bpr_loss(pos_score: Tensor, neg_score: Tensor) -> Tensor:
    r"""The Bayesian personalised ranking loss with several negatives per
    positive,

    .. math::
        \mathcal{L}_{\textrm{BPR}} = \frac{1}{Bn} \sum_{b=1}^{B}
        \sum_{j=1}^{n} \mathrm{softplus}(\hat{y}_{b,j}^{-} - \hat{y}_b^{+})
        = -\frac{1}{Bn} \sum_{b,j} \log \sigma(\hat{y}_b^{+} -
        \hat{y}_{b,j}^{-}),

    *i.e.*, BPR over each (positive, negative) pair.

    Args:
        pos_score (torch.Tensor): Scores of the positives, shape :obj:`[B]`.
        neg_score (torch.Tensor): Scores of the negatives, shape
            :obj:`[B, n]` (or :obj:`[B]` for one negative).
    """
    if neg_score.dim() == 1:
        neg_score = neg_score.unsqueeze(-1)
    if neg_score.size(0) != pos_score.size(0):
        raise ValueError(f"'neg_score' has {neg_score.size(0)} rows but "
                         f"'pos_score' has {pos_score.size(0)}")
    return F.softplus(neg_score - pos_score.unsqueeze(-1)).mean()


def pair_scores(emb: Tensor, users: Tensor, items: Tensor) -> Tensor:
    r"""The inner products :math:`s_{b,j} = \mathbf{e}_{u_b}^{\top}
    \mathbf{e}_{i_{b,j}}` :obj:`[B, m]` of the rows :obj:`users` :obj:`[B]`
    and :obj:`items` :obj:`[B, m]` (row ids of :obj:`emb`) of the node
    embeddings :obj:`emb` :obj:`[N, d]`.

    On CPU (:obj:`float32`/:obj:`float64`) they are a sampled dense-dense
    product :math:`\mathbf{S} = \mathbf{M} \odot (\mathbf{E}_{\mathcal{U}}
    \mathbf{E}^{\top})` over the pattern :math:`\mathbf{M}` of the pairs
    (:func:`torch.sparse.sampled_addmm`), and the backward pass is two CSR
    products, :math:`\mathbf{G} \mathbf{E}` for the users' rows and
    :math:`\mathbf{G}^{\top} \mathbf{E}_{\mathcal{U}}` for the items'
    rows: no :obj:`[B, m, d]` tensor of gathered rows is materialised,
    which is what the gather-and-multiply form spends its time on at the
    :math:`m = 36` candidates of a distillation step (forward and backward
    4-6x faster at :math:`B = 32768`, ``benchmarks/lightgcn_step_time.py
    --ablations``). Elsewhere: row gathers and one batched matrix product.
    Ids must lie in :math:`[0, N)`; repeated pairs are allowed.

    It scores the distillation candidates
    (:meth:`LightGCNRecommender.candidate_scores`, the teacher's scores);
    the BPR scores keep the gather-and-multiply form, whose float rounding
    the pinned numbers of ``tests/train/test_pinned.py`` record.

    Args:
        emb (torch.Tensor): The embeddings :obj:`[N, d]`.
        users (torch.Tensor): Row ids :obj:`[B]`.
        items (torch.Tensor): Row ids :obj:`[B, m]`.
    """
    if emb.device.type == 'cpu' and emb.dtype in (torch.float32,
                                                  torch.float64):
        return _SampledPairScores.apply(emb, users, items)
    e_u = torch.index_select(emb, 0, users)
    e_i = torch.index_select(emb, 0, items.reshape(-1))
    return torch.bmm(e_i.view(*items.shape, emb.size(1)),
                     e_u.unsqueeze(-1)).squeeze(-1)


def _pattern(items: Tensor, values: Tensor, num_cols: int) -> Tensor:
    # The [B, N] CSR matrix with values[b * m + j] at (b, items[b, j])
    # (unsorted, possibly repeated columns: the sampled product and the CSR
    # product take them; no invariant check).
    B, m = items.shape
    crow = torch.arange(0, B * m + 1, m, device=items.device)
    return torch.sparse_csr_tensor(crow, items.reshape(-1), values,
                                   (B, num_cols), check_invariants=False)


class _SampledPairScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, emb: Tensor, users: Tensor,
                items: Tensor) -> Tensor:
        e_u = emb.index_select(0, users)
        ctx.save_for_backward(emb, users, items, e_u)
        if items.numel() == 0:  # Still a node of the graph.
            return emb.new_zeros(items.shape)
        pattern = _pattern(items, emb.new_zeros(items.numel()), emb.size(0))
        out = torch.sparse.sampled_addmm(pattern, e_u, emb.t(), beta=0.)
        return out.values().view(items.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], None,
                                                   None]:
        emb, users, items, e_u = ctx.saved_tensors
        out = torch.zeros_like(emb)
        if items.numel() == 0:
            return out, None, None
        g = grad.reshape(-1).contiguous()
        # Users' rows: G E; items' rows: G^T E_U, G^T built by a stable sort
        # of the item ids (rows of the transpose in batch order).
        out.index_add_(0, users, torch.sparse.mm(
            _pattern(items, g, emb.size(0)), emb))
        cols = items.reshape(-1)
        order = torch.argsort(cols, stable=True)
        crow = cols.new_zeros(emb.size(0) + 1)
        crow[1:] = torch.cumsum(torch.bincount(cols, minlength=emb.size(0)),
                                0)
        transpose = torch.sparse_csr_tensor(
            crow, order // items.size(1), g[order],
            (emb.size(0), users.numel()), check_invariants=False)
        out += torch.sparse.mm(transpose, e_u)
        return out, None, None


class Recommender(Module):
    r"""A user-item recommender trained with BPR, the interface of the
    training loop, the evaluation and the runner: users are entities
    :math:`0, \ldots, N_U - 1` of :attr:`embedding`, item :math:`i` is
    entity :math:`N_U + i`. Subclasses implement :meth:`scores` and
    :meth:`score_function`.

    Args:
        num_users (int): The number of users :math:`N_U`.
        num_items (int): The number of items :math:`N_I`.
    """
    def __init__(self, num_users: int, num_items: int) -> None:
        super().__init__()
        if num_users < 1 or num_items < 1:
            raise ValueError(f"'num_users' and 'num_items' must be positive "
                             f"(got {num_users}, {num_items})")
        self.num_users = int(num_users)
        self.num_items = int(num_items)

    @property
    def embedding(self) -> Module:
        r"""The (possibly prunable) embedding module over
        :math:`N_U + N_I` entities."""
        raise NotImplementedError

    def reset_parameters(self) -> None:
        r"""Resets all learnable parameters."""
        raise NotImplementedError

    def scores(self, users: Tensor, pos: Tensor,
               neg: Tensor) -> 'tuple[Tensor, Tensor]':
        r"""Returns the scores of the positive pairs :obj:`[B]` and of the
        negative pairs :obj:`[B, n]`."""
        raise NotImplementedError

    def candidate_scores(self, users: Tensor, pos: Tensor, neg: Tensor,
                         extra: Tensor) -> 'tuple[Tensor, Tensor, Tensor]':
        r"""The scores of :meth:`scores` and those of :obj:`extra`
        :obj:`[B, m]` more items per user (the candidates of
        :class:`~pyg_cerp.train.RankingDistillation`), from one forward pass:
        by default one call of :meth:`scores` over the negatives and the
        extra items (a batch-normalised MLP sees all of them in its batch
        statistics); :class:`LightGCNRecommender` scores the extra items by
        :func:`pair_scores`."""
        pos_score, neg_score = self.scores(users, pos,
                                           torch.cat([neg, extra], 1))
        n = neg.size(1)
        return pos_score, neg_score[:, :n], neg_score[:, n:]

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        r""":func:`bpr_loss` of a batch of users :obj:`[B]`, positive items
        :obj:`[B]` and negative items :obj:`[B, n]` (local ids)."""
        if neg.dim() == 1:
            neg = neg.unsqueeze(-1)
        pos_score, neg_score = self.scores(users, pos, neg)
        return bpr_loss(pos_score, neg_score)

    def entities(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        r"""The global entity ids a batch touches (the unique users, every
        positive and negative item), on which the pruning regulariser is
        computed."""
        return torch.cat([
            torch.unique(users), pos + self.num_users,
            neg.reshape(-1) + self.num_users
        ])

    def l2_penalty(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        r"""The L2 penalty of LightGCN on the batch's *ego* (layer-0)
        embeddings,

        .. math::
            \frac{1}{2B} \sum_{b=1}^{B} \Big( \|\mathbf{e}_{u_b}\|^2 +
            \|\mathbf{e}_{i_b^+}\|^2 + \sum_{j=1}^{n}
            \|\mathbf{e}_{i_{b,j}^-}\|^2 \Big),

        as in LightGCN-PyTorch; unlike weight decay, it touches only the
        batch's rows (arguments as in :meth:`loss`)."""
        ids = torch.cat([users, pos + self.num_users,
                         neg.reshape(-1) + self.num_users])
        emb = self.embedding(ids)
        flat = emb.reshape(-1)
        return 0.5 * torch.dot(flat, flat) / users.numel()

    def score_function(self) -> ScoreFn:
        r"""Returns a function mapping user ids :obj:`[U]` to the scores of
        every item :obj:`[U, N_I]`; called under :obj:`torch.no_grad()` in
        evaluation mode."""
        raise NotImplementedError

    def partition(self, world: DistContext) -> 'Recommender':
        r"""Splits the work of a step that does not depend on the batch over
        the ranks of :obj:`world` (from then on every rank must run the same
        steps and evaluations); returns :obj:`self`. Nothing to split by
        default: the triples of a batch are split by the sampler.

        Args:
            world (pyg_cerp.distributed.DistContext): The ranks.
        """
        return self

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_users={self.num_users}, '
                f'num_items={self.num_items}, embedding={self.embedding})')


class LightGCNRecommender(Recommender):
    r"""PyG's :class:`~torch_geometric.nn.models.LightGCN` over a fixed,
    pre-normalised adjacency,

    .. math::
        \mathbf{E}^{(l+1)} = \hat{\mathbf{A}} \mathbf{E}^{(l)}, \quad
        \mathbf{E} = \sum_{l=0}^{L} \alpha_l \mathbf{E}^{(l)}, \quad
        \hat{y}_{ui} = \mathbf{e}_u^\top \mathbf{e}_{N_U + i},

    where :math:`\mathbf{E}^{(0)}` is :obj:`model.embedding.weight`
    (a :class:`torch.nn.Embedding` or a
    :class:`~pyg_cerp.nn.CompositionalEmbedding`).

    Args:
        model (torch_geometric.nn.models.LightGCN): The model over
            :math:`N_U + N_I` nodes; its :obj:`convs` must accept
            :obj:`adj` (for a normalised adjacency, build it with
            :obj:`normalize=False` or use the symmetric propagation of
            :mod:`pyg_cerp.nn.propagation`).
        adj (torch.Tensor or SparseTensor): The normalised
            :math:`(N_U + N_I) \times (N_U + N_I)` adjacency of the training
            graph.
        num_users (int): The number of users :math:`N_U`.
        num_items (int): The number of items :math:`N_I`.
    """
    def __init__(self, model: Module, adj, num_users: int,
                 num_items: int) -> None:
        super().__init__(num_users, num_items)
        if model.num_nodes != num_users + num_items:
            raise ValueError(
                f"'model' has {model.num_nodes} nodes, but num_users + "
                f"num_items = {num_users + num_items}")
        self.model = model
        self.adj = adj
        self.row_partition: Optional[RowPartition] = None

    @property
    def embedding(self) -> Module:
        return self.model.embedding

    def reset_parameters(self) -> None:
        self.model.reset_parameters()

    def propagate(self) -> Tensor:
        r"""The final node embeddings :math:`\mathbf{E}`, shape
        :obj:`[N_U + N_I, d]`."""
        if self.row_partition is not None:
            out = self.row_partition(self.model.embedding.weight,
                                     self.model.alpha)
        else:
            out = self.model.get_embedding(self.adj)
        # Row gathers back-propagate through `index_add_` (see
        # `RowGatherTensor`), also for models without the fused propagation.
        return out.as_subclass(RowGatherTensor)

    def partition(self, world: DistContext) -> 'LightGCNRecommender':
        r"""Propagates by row blocks of :obj:`adj` over the ranks of
        :obj:`world` (:class:`~pyg_cerp.distributed.RowPartition`: each rank
        does :math:`1/W` of the sparse products); a no-op for one process.
        Needs a symmetric sparse :obj:`adj` and untrained layer weights.

        Args:
            world (pyg_cerp.distributed.DistContext): The ranks.
        """
        if world.is_distributed:
            self.row_partition = RowPartition(self.adj, world)
        return self

    def scores(self, users: Tensor, pos: Tensor, neg: Tensor):
        return self._scores(self.propagate(), users, pos, neg)

    def _scores(self, out: Tensor, users: Tensor, pos: Tensor, neg: Tensor):
        e_u = out[users]
        e_p = out[pos + self.num_users]
        e_n = out[neg + self.num_users]
        return (e_u * e_p).sum(-1), (e_u.unsqueeze(1) * e_n).sum(-1)

    def candidate_scores(self, users: Tensor, pos: Tensor, neg: Tensor,
                         extra: Tensor):
        # One propagation; the extra items through pair_scores (the BPR
        # scores exactly as in scores()).
        out = self.propagate()
        pos_score, neg_score = self._scores(out, users, pos, neg)
        return pos_score, neg_score, pair_scores(out, users,
                                                 extra + self.num_users)

    def score_function(self) -> ScoreFn:
        out = self.propagate()
        item = out[self.num_users:]
        return lambda users: out[users] @ item.t()


def chunked_scores(score_all: Callable[..., Tensor], chunk: int = 16,
                   item_chunk: int = 2048) -> ScoreFn:
    r"""Wraps :meth:`~pyg_cerp.nn.MLPScorer.score_all` so that it scores
    :obj:`chunk` users against :obj:`item_chunk` items at a time: the MLP
    materialises a :obj:`[users, items, hidden]` tensor, and a cache-sized
    one (:math:`16 \times 2048 \times 64` floats) was measured 4.5 times
    faster than :math:`64 \times 8192`.

    Args:
        score_all (Callable): Maps users and :obj:`item_batch_size` to
            scores :obj:`[U, N_I]`.
        chunk (int, optional): Users per call. (default: :obj:`16`)
        item_chunk (int, optional): Items per call. (default: :obj:`2048`)
    """
    def score(users: Tensor) -> Tensor:
        return torch.cat([score_all(users[i:i + chunk],
                                    item_batch_size=item_chunk)
                          for i in range(0, users.numel(), chunk)])
    return score


class MLPRecommender(Recommender):
    r"""An MLP scorer (:class:`~pyg_cerp.nn.MLPScorer`) as a recommender,
    :math:`\hat{y}_{ui} = \mathrm{MLP}([\mathbf{e}_u \,\|\,
    \mathbf{e}_{N_U + i}])`.

    Args:
        scorer (pyg_cerp.nn.MLPScorer): The scorer.
        user_chunk (int, optional): Rank this many users per call in
            evaluation (see :func:`chunked_scores`; :obj:`None`: all users
            of a batch at once, items in chunks of 8192).
            (default: :obj:`None`)
        item_chunk (int, optional): Items per call with :obj:`user_chunk`.
            (default: :obj:`2048`)
    """
    def __init__(self, scorer: Module, user_chunk: Optional[int] = None,
                 item_chunk: int = 2048) -> None:
        super().__init__(scorer.num_users, scorer.num_items)
        self.scorer = scorer
        self.user_chunk, self.item_chunk = user_chunk, int(item_chunk)

    @property
    def embedding(self) -> Module:
        return self.scorer.embedding

    def reset_parameters(self) -> None:
        self.scorer.reset_parameters()

    def scores(self, users: Tensor, pos: Tensor, neg: Tensor):
        # One call over all (1 + n) B pairs: a batch-normalised MLP must see
        # positives and negatives in the same batch statistics.
        out = self.scorer(users.unsqueeze(-1),
                          torch.cat([pos.unsqueeze(-1), neg], dim=-1))
        return out[:, 0], out[:, 1:]

    def score_function(self) -> ScoreFn:
        if self.user_chunk is None:
            return self.scorer.score_all
        return chunked_scores(self.scorer.score_all, int(self.user_chunk),
                              self.item_chunk)
