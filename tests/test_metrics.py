import math

import pytest
import torch
from torch_geometric.metrics import LinkPredNDCG, LinkPredRecall

from pyg_cerp.metrics import (
    combine_ranking_sums,
    deterministic_topk,
    ranking_metrics,
    ranking_metrics_from_scores,
)


def brute_force(scores, train, test, ks):
    # Per-user Python reference: rank by (-score, item id), skip train items.
    num_users, num_items = scores.shape
    train_sets = [set() for _ in range(num_users)]
    test_sets = [set() for _ in range(num_users)]
    for u, i in train.t().tolist():
        train_sets[u].add(i)
    for u, i in test.t().tolist():
        test_sets[u].add(i)
    out = {f'{m}@{k}': 0.0 for k in ks for m in ('recall', 'ndcg')}
    count = 0
    for u in range(num_users):
        if not test_sets[u]:
            continue
        count += 1
        ranked = sorted((i for i in range(num_items)
                         if i not in train_sets[u]),
                        key=lambda i: (-scores[u, i].item(), i))
        for k in ks:
            top = ranked[:k]
            hits = [int(i in test_sets[u]) for i in top]
            out[f'recall@{k}'] += sum(hits) / len(test_sets[u])
            dcg = sum(h / math.log2(j + 2) for j, h in enumerate(hits))
            idcg = sum(1 / math.log2(j + 2)
                       for j in range(min(len(test_sets[u]), k)))
            out[f'ndcg@{k}'] += dcg / idcg
    return {key: value / count for key, value in out.items()}


def random_problem(num_users=37, num_items=60, seed=0, ties=False,
                   num_train=500, num_test=200):
    gen = torch.Generator().manual_seed(seed)
    user_emb = torch.randn(num_users, 8, generator=gen)
    item_emb = torch.randn(num_items, 8, generator=gen)
    if ties:  # few distinct scores -> many ties
        user_emb = user_emb.round()
        item_emb = (item_emb > 0).float()
    key = torch.randperm(num_users * num_items,
                         generator=gen)[:num_train + num_test]
    ei = torch.stack([key // num_items, key % num_items])
    train, test = ei[:, :num_train], ei[:, num_train:]
    return user_emb, item_emb, train, test


def test_hand_computed():
    # 1 user, 5 items, scores descending with the item id.
    user_emb = torch.ones(2, 1)
    item_emb = torch.tensor([[5.], [4.], [3.], [2.], [1.]])
    train = torch.tensor([[0], [0]])  # item 0 (best score) excluded
    test = torch.tensor([[0, 0], [2, 4]])  # ranking: 1, 2, 3, 4
    m = ranking_metrics(user_emb, item_emb, train, test, ks=(1, 2, 4))
    assert m['recall@1'] == 0.0 and m['ndcg@1'] == 0.0
    assert m['recall@2'] == pytest.approx(0.5)
    assert m['ndcg@2'] == pytest.approx((1 / math.log2(3)) /
                                        (1 + 1 / math.log2(3)))
    assert m['recall@4'] == pytest.approx(1.0)
    assert m['ndcg@4'] == pytest.approx(
        (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    # User 1 has no test items and is skipped (the means are for user 0).
    assert ranking_metrics(user_emb, item_emb, train, test, ks=2,
                           return_sums=True)['num_users'] == 1


def test_training_positives_excluded():
    user_emb = torch.ones(1, 1)
    item_emb = torch.tensor([[3.], [2.], [1.]])
    test = torch.tensor([[0], [1]])
    # Without exclusion item 0 would take the single slot:
    assert ranking_metrics(user_emb, item_emb, torch.empty(2, 0, dtype=torch
                                                           .long), test,
                           ks=1)['recall@1'] == 0.0
    assert ranking_metrics(user_emb, item_emb, torch.tensor([[0], [0]]),
                           test, ks=1)['recall@1'] == 1.0


@pytest.mark.parametrize('ties', [False, True])
@pytest.mark.parametrize('batch_size', [1, 8, 1000])
def test_brute_force_reference(ties, batch_size):
    user_emb, item_emb, train, test = random_problem(seed=int(ties),
                                                     ties=ties)
    ks = (1, 5, 20)
    out = ranking_metrics(user_emb, item_emb, train, test, ks=ks,
                          batch_size=batch_size)
    ref = brute_force(user_emb @ item_emb.t(), train, test, ks)
    assert out.keys() == ref.keys()
    for key in ref:
        assert out[key] == pytest.approx(ref[key], abs=1e-12), key


def test_agrees_with_pyg_link_pred_metrics():
    user_emb, item_emb, train, test = random_problem(seed=3)
    scores = user_emb @ item_emb.t()
    scores[train[0], train[1]] = float('-inf')
    for k in (5, 20):
        top = deterministic_topk(scores, k)
        recall, ndcg = LinkPredRecall(k), LinkPredNDCG(k)
        recall.update(top, test)
        ndcg.update(top, test)
        out = ranking_metrics(user_emb, item_emb, train, test, ks=k,
                              batch_size=10)
        assert out[f'recall@{k}'] == pytest.approx(float(recall.compute()),
                                                   abs=1e-6)
        assert out[f'ndcg@{k}'] == pytest.approx(float(ndcg.compute()),
                                                 abs=1e-6)
        assert recall.compute() > 0  # non-trivial check


def test_deterministic_topk_ties():
    scores = torch.tensor([[1., 2., 2., 2., 0., 2.],
                           [0., 0., 0., 0., 0., 0.],
                           [5., 4., 3., 2., 1., 0.]])
    assert deterministic_topk(scores, 2).tolist() == [[1, 2], [0, 1], [0, 1]]
    assert deterministic_topk(scores, 5).tolist() == [[1, 2, 3, 5, 0],
                                                      [0, 1, 2, 3, 4],
                                                      [0, 1, 2, 3, 4]]
    # Many ties on a large row, beyond the boundary of torch.topk:
    big = torch.zeros(3, 5000)
    big[:, 4321] = 1.0
    assert deterministic_topk(big, 4).tolist() == [[4321, 0, 1, 2]] * 3
    with pytest.raises(ValueError, match="'k' must be in"):
        deterministic_topk(scores, 7)


def test_ties_in_metrics():
    # All scores equal: the ranking is by item id, train items skipped.
    user_emb = torch.zeros(1, 4)
    item_emb = torch.zeros(10, 4)
    train = torch.tensor([[0, 0], [0, 2]])
    test = torch.tensor([[0, 0], [3, 9]])  # ranking: 1, 3, 4, ...
    m = ranking_metrics(user_emb, item_emb, train, test, ks=(1, 2))
    assert m['recall@1'] == 0.0
    assert m['recall@2'] == 0.5
    assert m['ndcg@2'] == pytest.approx((1 / math.log2(3)) /
                                        (1 + 1 / math.log2(3)))


def test_sharded_sums_combine_exactly():
    user_emb, item_emb, train, test = random_problem(seed=5)
    full = ranking_metrics(user_emb, item_emb, train, test, ks=(5, 10))
    perm = torch.randperm(user_emb.size(0),
                          generator=torch.Generator().manual_seed(0))
    parts = [ranking_metrics(user_emb, item_emb, train, test, ks=(5, 10),
                             user_ids=shard, return_sums=True, batch_size=4)
             for shard in perm.chunk(3)]
    assert sum(p['num_users'] for p in parts) == \
        torch.unique(test[0]).numel()
    combined = combine_ranking_sums(parts)
    for key in full:
        assert combined[key] == pytest.approx(full[key], rel=1e-12)


def test_score_fn_matches_embeddings():
    user_emb, item_emb, train, test = random_problem(seed=6)
    calls = []

    def score_fn(users):
        calls.append(users.numel())
        return user_emb[users] @ item_emb.t()

    a = ranking_metrics_from_scores(score_fn, user_emb.size(0),
                                    item_emb.size(0), train, test, ks=(3, 7),
                                    batch_size=16)
    b = ranking_metrics(user_emb, item_emb, train, test, ks=(3, 7))
    assert a == pytest.approx(b)
    assert max(calls) <= 16


def test_k_larger_than_num_items():
    user_emb, item_emb, train, test = random_problem(
        num_items=12, seed=2, num_train=150, num_test=100)
    assert test.size(1) == 100
    out = ranking_metrics(user_emb, item_emb, train, test, ks=(50, ))
    assert out['recall@50'] == pytest.approx(1.0)  # every item is ranked
    ref = brute_force(user_emb @ item_emb.t(), train, test, (50, ))
    assert out['ndcg@50'] == pytest.approx(ref['ndcg@50'])


def test_errors():
    user_emb, item_emb, train, test = random_problem()
    with pytest.raises(ValueError, match="'ks' must be positive"):
        ranking_metrics(user_emb, item_emb, train, test, ks=(0, ))
    with pytest.raises(ValueError, match='outside'):
        ranking_metrics(user_emb[:5], item_emb, train, test)
    with pytest.raises(ValueError, match='Scores must have shape'):
        ranking_metrics_from_scores(lambda u: torch.zeros(len(u), 3),
                                    37, 60, train, test)
    with pytest.raises(ValueError, match="'user_ids' must be in"):
        ranking_metrics(user_emb, item_emb, train, test,
                        user_ids=torch.tensor([99]))


def test_mlp_scorer_score_all():
    from pyg_cerp.nn import MLPScorer
    torch.manual_seed(0)
    user_emb, item_emb, train, test = random_problem(seed=9)
    num_users, num_items = user_emb.size(0), item_emb.size(0)
    model = MLPScorer(num_users, num_items,
                      torch.nn.Embedding(num_users + num_items, 8),
                      hidden_channels=(16, ))
    out = ranking_metrics_from_scores(model.score_all, num_users, num_items,
                                      train, test, ks=(5, 10), batch_size=7)
    with torch.no_grad():
        scores = model.score_all(torch.arange(num_users))
    ref = brute_force(scores, train, test, (5, 10))
    for key in ref:
        assert out[key] == pytest.approx(ref[key], abs=1e-12), key


def test_ranking_evaluator_reuse():
    from pyg_cerp.metrics import RankingEvaluator
    user_emb, item_emb, train, test = random_problem(seed=11)
    evaluator = RankingEvaluator(user_emb.size(0), item_emb.size(0), train,
                                 test, ks=10)
    assert evaluator.num_eval_users == torch.unique(test[0]).numel()
    assert repr(evaluator) == \
        'RankingEvaluator(num_users=37, num_items=60, ks=(10,))'
    for scale in (1.0, -1.0):  # two different "models"
        u = scale * user_emb

        def score_fn(users):
            return u[users] @ item_emb.t()

        out = evaluator(score_fn, batch_size=5)
        assert out == pytest.approx(ranking_metrics(u, item_emb, train, test,
                                                    ks=10))


def _toy_split():
    train = torch.tensor([[0, 1, 2], [0, 1, 2]])
    test = torch.tensor([[0, 1, 2], [1, 2, 0]])
    return train, test


@pytest.mark.parametrize('where', ['all', 'one'])
def test_nan_scores_raise(where):
    from pyg_cerp.metrics import ranking_metrics_from_scores
    train, test = _toy_split()

    def score_fn(users):
        scores = torch.randn(users.numel(), 5)
        if where == 'all':
            return scores.fill_(float('nan'))
        scores[-1, 4] = float('nan')
        return scores

    with pytest.raises(ValueError, match="'score_fn' returned nan scores"):
        ranking_metrics_from_scores(score_fn, 3, 5, train, test, ks=2)


def test_non_integer_k_and_empty_test_set():
    from pyg_cerp.metrics import ranking_metrics_from_scores
    train, test = _toy_split()

    def score_fn(users):
        return torch.randn(users.numel(), 5)

    with pytest.raises(TypeError, match="'ks' must be positive integers "
                       "\\(got float 2.5"):
        ranking_metrics_from_scores(score_fn, 3, 5, train, test, ks=2.5)
    with pytest.raises(ValueError, match='No evaluated user has a test item'):
        ranking_metrics_from_scores(score_fn, 3, 5, train, test[:, :0])
    with pytest.raises(ValueError, match='No evaluated user'):
        ranking_metrics_from_scores(score_fn, 3, 5, train, test,
                                    user_ids=torch.zeros(0, dtype=torch.long))


def test_test_pairs_in_train_warn():
    from pyg_cerp.metrics import ranking_metrics_from_scores
    train, _ = _toy_split()
    test = torch.tensor([[0, 1], [0, 2]])  # (0, 0) is a training pair
    with pytest.warns(UserWarning, match='1 test .* also training pairs'):
        ranking_metrics_from_scores(lambda u: torch.randn(u.numel(), 5), 3,
                                    5, train, test, ks=2)


def test_pinned_values():
    # Bit-exact values (pinned before the issue-13 rewrite of
    # `pyg_cerp.metrics`): the committed benchmark numbers depend on them.
    gen = torch.Generator().manual_seed(0)
    user_emb = torch.randn(9, 4, generator=gen)
    item_emb = torch.randn(15, 4, generator=gen)
    key = torch.randperm(9 * 15, generator=gen)[:60]
    ei = torch.stack([key // 15, key % 15])
    out = ranking_metrics(user_emb, item_emb, ei[:, :40], ei[:, 40:],
                          ks=(3, 10))
    assert {k: v.hex() for k, v in out.items()} == {
        'recall@3': '0x1.4888888888888p-3',
        'ndcg@3': '0x1.7ad23bd2b8bd0p-3',
        'recall@10': '0x1.c000000000000p-1',
        'ndcg@10': '0x1.00c378333ff05p-1'}
