r"""Ranking distillation from a frozen teacher (the full-table model) into a
compressed student, as an extra term of the training loss,

.. math::
    \mathcal{L} = \mathcal{L}_{\textrm{BPR}} + \alpha
    \mathcal{L}_{\textrm{KD}},

on sampled items (never a full ranking per step). Two standard terms:

* :obj:`'listwise'` (knowledge distillation of Hinton *et al.* over a
  sampled candidate list): for each batch user :math:`u`, the candidates
  :math:`\mathcal{C}_u` are the batch's positive and negative items, plus
  :obj:`num_samples` uniform items and the teacher's top-:obj:`top_k`
  items, and

  .. math::
      \mathcal{L}_{\textrm{KD}} = \frac{\tau^2}{B} \sum_{u} \sum_{c \in
      \mathcal{C}_u} p^{T}_{uc} \left(\log p^{T}_{uc} - \log p^{S}_{uc}
      \right), \qquad p_{uc} = \frac{\exp(\hat{y}_{uc} / \tau)}{\sum_{c'
      \in \mathcal{C}_u} \exp(\hat{y}_{uc'} / \tau)},

  the KL divergence of the student's from the teacher's softmax over the
  candidates (the :math:`\tau^2` keeps its gradient's scale independent of
  :math:`\tau`).

* :obj:`'rd'` (`"Ranking Distillation" <https://arxiv.org/abs/1809.07428>`_,
  Tang & Wang, KDD 2018): the teacher's top-:math:`K` items
  :math:`\pi_{u,1}, \ldots, \pi_{u,K}` (training positives excluded) are
  extra positives of the student, weighted by their position,

  .. math::
      \mathcal{L}_{\textrm{KD}} = -\frac{1}{B} \sum_{u} \sum_{r=1}^{K} w_r
      \log \sigma(\hat{y}^{S}_{u \pi_{u,r}}), \qquad w_r = \frac{e^{-r /
      \lambda}}{\sum_{r'} e^{-r' / \lambda}},

  the paper's position-importance weighting (its dynamic, student-rank
  weighting is not implemented).

The teacher is frozen and in evaluation mode: a
:class:`~pyg_cerp.train.LightGCNRecommender`'s final embeddings are
propagated once and cached (:meth:`RankingDistillation.refresh` drops the
cache), other recommenders score the candidates with :meth:`scores` under
:obj:`torch.no_grad()`; the teacher's top-:math:`K` lists are ranked once
over all items. The uniform samples come from the object's own generator,
so the global random stream (the sampler's, the initialisation's) is the
same with and without distillation.
"""
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pyg_cerp.metrics import deterministic_topk
from pyg_cerp.serving import exclude_
from pyg_cerp.train.recommender import (LightGCNRecommender, Recommender,
                                        bpr_loss, pair_scores)
from pyg_cerp.utils.validation import check_float, check_int

__all__ = ['RankingDistillation', 'teacher_top_items']

LOSSES = ('listwise', 'rd')


@torch.no_grad()
def teacher_top_items(teacher: Recommender, k: int,
                      exclude: Optional[Tensor] = None,
                      batch_size: int = 1024) -> Tensor:
    r"""The :math:`k` items of highest teacher score of every user
    :obj:`[N_U, k]`, never an item of :obj:`exclude` (ties by item id, as in
    evaluation).

    Args:
        teacher (Recommender): The teacher.
        k (int): Items per user, :math:`1 \leq k \leq N_I`.
        exclude (torch.Tensor, optional): :obj:`[2, E]` (user, item) pairs
            left out (the training positives). (default: :obj:`None`)
        batch_size (int, optional): Users ranked at once.
            (default: :obj:`1024`)
    """
    check_int('k', k, minimum=1)
    if k > teacher.num_items:
        raise ValueError(f"'k' must be at most num_items="
                         f"{teacher.num_items} (got {k})")
    if exclude is not None:
        exclude = exclude.contiguous()
    was_training = teacher.training
    teacher.eval()
    try:
        score = teacher.score_function()
        users = torch.arange(teacher.num_users)
        out = []
        for batch in users.split(batch_size):
            scores = score(batch.to(_device_of(teacher)))
            if exclude is not None:
                exclude_(scores, batch.to(scores.device), exclude)
            out.append(deterministic_topk(scores, k))
        return torch.cat(out)
    finally:
        teacher.train(was_training)


def _device_of(module: torch.nn.Module) -> torch.device:
    for param in module.parameters():
        return param.device
    return torch.device('cpu')


class RankingDistillation:
    r"""The ranking-distillation term :math:`\alpha \mathcal{L}_{\textrm{KD}}`
    of a frozen :obj:`teacher` (see the module docstring), passed as
    :obj:`distill` to :func:`~pyg_cerp.train.train_step`,
    :func:`~pyg_cerp.train.train_epoch` and :func:`~pyg_cerp.train.fit`.
    With :obj:`weight=0` the step is exactly the step without it.

    Args:
        teacher (Recommender): The teacher over the same users and items
            (put in evaluation mode; never updated).
        weight (float, optional): :math:`\alpha \geq 0`.
            (default: :obj:`1.`)
        loss (str, optional): :obj:`'listwise'` or :obj:`'rd'`.
            (default: :obj:`'listwise'`)
        temperature (float, optional): :math:`\tau > 0` of
            :obj:`'listwise'`. (default: :obj:`1.`)
        num_samples (int, optional): Uniform items added to each user's
            candidates (:obj:`'listwise'`). (default: :obj:`0`)
        top_k (int, optional): The teacher's top-:math:`K` items added to
            the candidates (:obj:`'listwise'`; :obj:`'rd'` needs
            :math:`K \geq 1`). (default: :obj:`0`)
        rank_decay (float, optional): :math:`\lambda > 0` of :obj:`'rd'`.
            (default: :obj:`1.`)
        exclude (torch.Tensor, optional): :obj:`[2, E]` pairs left out of
            the teacher's top-:math:`K` (the training positives).
            (default: :obj:`None`)
        seed (int, optional): The seed of the uniform samples.
            (default: :obj:`0`)
    """
    def __init__(self, teacher: Recommender, weight: float = 1.,
                 loss: str = 'listwise', temperature: float = 1.,
                 num_samples: int = 0, top_k: int = 0,
                 rank_decay: float = 1., exclude: Optional[Tensor] = None,
                 seed: int = 0) -> None:
        if not isinstance(teacher, Recommender):
            raise TypeError(f"'teacher' must be a Recommender (got "
                            f"{type(teacher).__name__})")
        check_float('weight', weight, low=0.)
        if loss not in LOSSES:
            raise ValueError(f"'loss' must be one of {LOSSES} (got {loss!r})")
        check_float('temperature', temperature, low=0., low_open=True)
        check_float('rank_decay', rank_decay, low=0., low_open=True)
        check_int('num_samples', num_samples, minimum=0)
        check_int('top_k', top_k, minimum=0)
        if loss == 'rd' and top_k < 1:
            raise ValueError("loss='rd' needs 'top_k' >= 1 (the teacher's "
                             "top items are its targets)")
        if top_k > teacher.num_items:
            raise ValueError(f"'top_k' must be at most num_items="
                             f"{teacher.num_items} (got {top_k})")
        self.teacher = teacher.eval()
        self.weight = float(weight)
        self.loss_type = loss
        self.temperature = float(temperature)
        self.num_samples = int(num_samples)
        self.top_k = int(top_k)
        self.rank_decay = float(rank_decay)
        self.exclude = exclude
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self._embedding: Optional[Tensor] = None
        self._top: Optional[Tensor] = None

    @property
    def active(self) -> bool:
        r"""Whether the term is added (:obj:`weight > 0`)."""
        return self.weight > 0

    def refresh(self) -> None:
        r"""Drops the cached teacher embeddings and top-:math:`K` lists
        (after changing the teacher)."""
        self._embedding = self._top = None

    def top_items(self) -> Tensor:
        r"""The teacher's top-:math:`K` items :obj:`[N_U, K]` (computed
        once, see :func:`teacher_top_items`)."""
        if self._top is None:
            self._top = teacher_top_items(self.teacher, self.top_k,
                                          self.exclude)
        return self._top

    def candidates(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        r"""The extra items :obj:`[B, m]` scored besides the batch's
        :obj:`pos` :obj:`[B]` and :obj:`neg` :obj:`[B, n]`: the teacher's
        top-:math:`K`, then :obj:`num_samples` uniform items
        (:obj:`'listwise'`), or the top-:math:`K` only (:obj:`'rd'`)."""
        parts = []
        if self.top_k:
            parts.append(self.top_items().to(users.device)[users])
        if self.num_samples and self.loss_type == 'listwise':
            parts.append(torch.randint(
                self.teacher.num_items, (users.numel(), self.num_samples),
                generator=self.generator).to(users.device))
        if not parts:
            return neg.new_empty(users.numel(), 0)
        return torch.cat(parts, dim=1).to(neg.dtype)

    @torch.no_grad()
    def teacher_scores(self, users: Tensor, items: Tensor) -> Tensor:
        r"""The teacher's scores :obj:`[B, m]` of :obj:`items` :obj:`[B, m]`
        for :obj:`users` :obj:`[B]`."""
        teacher = self.teacher
        if isinstance(teacher, LightGCNRecommender):
            if self._embedding is None:
                self._embedding = teacher.propagate().as_subclass(Tensor)
            return pair_scores(self._embedding, users,
                               items + teacher.num_users)
        pos, neg = teacher.scores(users, items[:, 0], items[:, 1:])
        return torch.cat([pos.unsqueeze(1), neg], dim=1)

    def loss(self, users: Tensor, items: Optional[Tensor],
             student_scores: Tensor) -> Tensor:
        r""":math:`\mathcal{L}_{\textrm{KD}}` (unweighted) from the
        student's scores :obj:`[B, m]` of the candidate :obj:`items`
        :obj:`[B, m]` of :obj:`users` :obj:`[B]` (for :obj:`'rd'`: scores
        whose last :math:`K` columns are the teacher's top-:math:`K` in
        order; :obj:`items` is not needed)."""
        if self.loss_type == 'rd':
            k = self.top_k
            rank = torch.arange(1, k + 1, dtype=student_scores.dtype,
                                device=student_scores.device)
            w = torch.softmax(-rank / self.rank_decay, 0)
            return -(F.logsigmoid(student_scores[:, -k:]) * w).sum(1).mean()
        tau = self.temperature
        log_t = torch.log_softmax(self.teacher_scores(users, items) / tau, 1)
        log_s = torch.log_softmax(student_scores / tau, 1)
        kl = (log_t.exp() * (log_t - log_s)).sum(1)
        return tau * tau * kl.mean()

    def bpr_and_distill(self, student: Recommender, users: Tensor,
                        pos: Tensor, neg: Tensor) -> Tuple[Tensor, Tensor]:
        r"""The student's :func:`~pyg_cerp.train.bpr_loss` and the weighted
        term :math:`\alpha \mathcal{L}_{\textrm{KD}}` from one call of its
        :meth:`~pyg_cerp.train.Recommender.candidate_scores` on the
        positives, the negatives and the :meth:`candidates` (for LightGCN
        the BPR part equals :meth:`Recommender.loss`; a batch-normalised MLP
        also sees the extra items in its batch statistics)."""
        extra = self.candidates(users, pos, neg)
        pos_s, neg_s, extra_s = student.candidate_scores(users, pos, neg,
                                                         extra)
        bpr = bpr_loss(pos_s, neg_s)
        if self.loss_type == 'rd':
            kd = self.loss(users, extra, extra_s)
        else:
            items = torch.cat([pos.unsqueeze(1), neg, extra], 1)
            kd = self.loss(users, items, torch.cat(
                [pos_s.unsqueeze(1), neg_s, extra_s], 1))
        return bpr, self.weight * kd

    def __repr__(self) -> str:
        out = (f'{self.__class__.__name__}(weight={self.weight:g}, '
               f'loss={self.loss_type!r}')
        if self.loss_type == 'listwise':
            out += (f', temperature={self.temperature:g}, '
                    f'num_samples={self.num_samples}')
        else:
            out += f', rank_decay={self.rank_decay:g}'
        return out + f', top_k={self.top_k})'


def _check(distill: Any) -> Optional[RankingDistillation]:
    # The term to add, or None (also for weight 0: the step without it).
    if distill is None:
        return None
    if not isinstance(distill, RankingDistillation):
        raise TypeError(f"'distill' must be a RankingDistillation (got "
                        f"{type(distill).__name__})")
    return distill if distill.active else None
