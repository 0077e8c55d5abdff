import pytest
import torch
from torch_geometric.nn.models import LightGCN

from pyg_cerp.nn import CompositionalEmbedding, MLPScorer
from pyg_cerp.nn.compact import FormatError, write_file
from pyg_cerp.serving import (CompactLightGCNRecommender,
                              CompactMLPRecommender, InteractionIndex,
                              lightgcn_propagate, topk_deterministic)

NU, NI, D = 40, 60, 8


def graph(num_edges=300, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(NU, (num_edges, ), generator=gen),
                        torch.randint(NI, (num_edges, ), generator=gen)])


def lightgcn(seed=0, threshold_init=-2.5):
    torch.manual_seed(seed)
    model = LightGCN(NU + NI, D, num_layers=3)
    model.embedding = CompositionalEmbedding(NU + NI, D, 11,
                                             threshold_init=threshold_init)
    return model


def homogeneous(edge_index):
    user, item = edge_index[0], edge_index[1] + NU
    return torch.cat([torch.stack([user, item]),
                      torch.stack([item, user])], dim=1)


def reference_topk(scores, edge_index, k):
    scores = scores.clone()
    scores[edge_index[0], edge_index[1]] = float('-inf')
    # Reference order: descending score, then ascending item id.
    order = torch.sort(-scores, dim=1, stable=True).indices
    return order[:, :k]


def test_topk_deterministic_breaks_ties_by_id():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (50, 30), generator=gen).float()
    scores[0] = 1.  # all tied
    scores[1, :] = float('-inf')
    val, idx = topk_deterministic(scores, 7)
    expected = torch.sort(-scores, dim=1, stable=True).indices[:, :7]
    assert torch.equal(idx, expected)
    assert torch.equal(val, scores.gather(1, expected))
    assert idx[0].tolist() == list(range(7))
    with pytest.raises(ValueError, match="'k'"):
        topk_deterministic(scores, 31)


def test_propagation_matches_pyg_lightgcn():
    model = lightgcn()
    ei = graph()
    ei = torch.cat([ei, ei[:, :5]], dim=1)  # duplicates count, as in PyG
    expected = model.get_embedding(homogeneous(ei)).detach()
    out = lightgcn_propagate(model.embedding.weight.detach(), ei, NU, NI,
                             model.alpha)
    assert (out - expected).abs().max() <= 1e-6


@pytest.mark.parametrize('mode', ['propagate', 'final'])
def test_deduplicate_counts_pairs_once(mode):
    model = lightgcn()
    ei = graph()
    unique = torch.unique(ei[0] * NI + ei[1])
    unique = torch.stack([unique // NI, unique % NI])
    expected = model.get_embedding(homogeneous(unique)).detach()
    doubled = torch.cat([ei, ei[:, :50]], dim=1)
    rec = CompactLightGCNRecommender.from_lightgcn(
        model, doubled, NU, NI, mode=mode, deduplicate=True)
    user, item = rec.embeddings()
    assert (torch.cat([user, item]) - expected).abs().max() <= 1e-6


@pytest.mark.parametrize('mode', ['propagate', 'final'])
def test_lightgcn_float32_same_scores_and_topk(mode):
    model = lightgcn()
    ei = graph()
    emb = model.get_embedding(homogeneous(ei)).detach()
    ref_scores = emb[:NU] @ emb[NU:].t()
    rec = CompactLightGCNRecommender.from_lightgcn(model, ei, NU, NI,
                                                   mode=mode)
    users = torch.arange(NU)
    assert (rec.score_all(users) - ref_scores).abs().max() <= 1e-6
    top, val = rec.recommend(users, 10, exclude=ei, return_scores=True)
    assert torch.equal(top, reference_topk(ref_scores, ei, 10))
    assert top.shape == val.shape == (NU, 10)
    # No training item is ever recommended.
    train = set(map(tuple, ei.t().tolist()))
    assert not any((u, i) in train for u in range(NU)
                   for i in top[u].tolist())


@pytest.mark.parametrize('dtype,tol', [(torch.float16, 2e-3),
                                       (torch.int8, 2e-2)])
@pytest.mark.parametrize('mode', ['propagate', 'final'])
def test_lightgcn_reduced_precision_close(mode, dtype, tol):
    model = lightgcn()
    ei = graph()
    ref = CompactLightGCNRecommender.from_lightgcn(model, ei, NU, NI)
    rec = CompactLightGCNRecommender.from_lightgcn(model, ei, NU, NI,
                                                   mode=mode, dtype=dtype)
    users = torch.arange(NU)
    ref_scores = ref.score_all(users)
    err = (rec.score_all(users) - ref_scores).abs().max()
    assert 0 < err <= tol * ref_scores.abs().max()
    top_ref = ref.recommend(users, 10, exclude=ei)
    top = rec.recommend(users, 10, exclude=ei)
    overlap = sum(len(set(a) & set(b)) for a, b in zip(
        top.tolist(), top_ref.tolist())) / top.numel()
    assert overlap >= 0.9


@pytest.mark.parametrize('mode,dtype', [('propagate', 'float32'),
                                        ('propagate', 'int8'),
                                        ('final', 'float16'),
                                        ('final', 'int8')])
def test_lightgcn_round_trip(tmp_path, mode, dtype):
    model = lightgcn()
    ei = graph()
    rec = CompactLightGCNRecommender.from_lightgcn(model, ei, NU, NI,
                                                   mode=mode, dtype=dtype)
    path = tmp_path / 'lightgcn.pt'
    rec.save(path)
    users = torch.tensor([3, 0, 3, 39])
    for decode in ('cache', 'lookup'):
        loaded = CompactLightGCNRecommender.load(path, decode=decode)
        assert loaded.mode == mode and loaded.nbytes == rec.nbytes
        assert torch.equal(loaded.score_all(users), rec.score_all(users))
        assert torch.equal(loaded.recommend(users, 5, exclude=ei),
                           rec.recommend(users, 5, exclude=ei))
    if mode == 'propagate':
        stored = loaded.train_edge_index
        assert sorted(map(tuple, stored.t().tolist())) == sorted(
            map(tuple, ei.t().tolist()))
        assert torch.equal(loaded.recommend(users, 5, exclude=stored),
                           rec.recommend(users, 5, exclude=ei))
        assert torch.equal(
            loaded.recommend(users, 5, exclude=loaded.train_index),
            rec.recommend(users, 5, exclude=ei))
    else:
        assert loaded.train_edge_index is None


def test_lightgcn_nbytes_by_hand():
    model = lightgcn()
    ei = graph(num_edges=300)
    rec = CompactLightGCNRecommender.from_lightgcn(model, ei, NU, NI)
    emb = model.embedding.to_compact()
    assert rec.nbytes == emb.nbytes + 2 * 300 + 4 * (NU + 1) + 4 * 4  # uint16
    final = CompactLightGCNRecommender.from_lightgcn(model, ei, NU, NI,
                                                     mode='final',
                                                     dtype='int8')
    assert final.nbytes == (NU + NI) * D + 4 * (NU + NI)
    lookup = CompactLightGCNRecommender.from_lightgcn(
        model, ei, NU, NI, mode='final', dtype='int8', decode='lookup')
    assert lookup.resident_nbytes == final.nbytes
    assert final.resident_nbytes == final.nbytes + 4 * (NU + NI) * D


def test_lightgcn_tampered_graph_is_rejected(tmp_path):
    rec = CompactLightGCNRecommender.from_lightgcn(lightgcn(), graph(), NU,
                                                   NI)
    path = tmp_path / 'bad.pt'
    data = rec.to_dict()
    data['items'] = data['items'].clone()
    data['items'][0] = NI
    write_file(data, path)
    with pytest.raises(FormatError, match='item ids'):
        CompactLightGCNRecommender.load(path)
    data = rec.to_dict()
    data['indptr'] = data['indptr'].flip(0)
    write_file(data, path)
    with pytest.raises(FormatError, match='monotone'):
        CompactLightGCNRecommender.load(path)


def test_files_errors(tmp_path):
    rec = CompactLightGCNRecommender.from_lightgcn(lightgcn(), graph(), NU,
                                                   NI)
    path = tmp_path / 'rec.pt'
    rec.save(path)
    data = path.read_bytes()
    truncated = tmp_path / 'truncated.pt'
    truncated.write_bytes(data[:-100])
    with pytest.raises(FormatError, match='truncated.pt'):
        CompactLightGCNRecommender.load(truncated)
    write_file({**rec.to_dict(), 'version': 7}, path)
    with pytest.raises(FormatError, match='version 7'):
        CompactLightGCNRecommender.load(path)
    # A file of the other backbone is refused by name.
    mlp = CompactMLPRecommender.from_scorer(mlp_scorer())
    mlp.save(path)
    with pytest.raises(FormatError, match='CompactMLPRecommender'):
        CompactLightGCNRecommender.load(path)


def mlp_scorer(seed=0):
    torch.manual_seed(seed)
    emb = CompositionalEmbedding(NU + NI, D, 11, threshold_init=-2.5)
    return MLPScorer(NU, NI, emb, hidden_channels=(16, 8)).eval()


def test_mlp_float32_same_scores_and_topk(tmp_path):
    scorer = mlp_scorer()
    ei = graph()
    users = torch.arange(NU)
    ref_scores = scorer.score_all(users).detach()
    rec = CompactMLPRecommender.from_scorer(scorer, item_batch_size=7)
    assert (rec.score_all(users) - ref_scores).abs().max() <= 1e-6
    top = rec.recommend(users, 10, exclude=ei, user_batch_size=9)
    assert torch.equal(top, reference_topk(ref_scores, ei, 10))
    path = tmp_path / 'mlp.pt'
    rec.save(path)
    for decode in ('cache', 'lookup'):
        loaded = CompactMLPRecommender.load(path, decode=decode)
        assert torch.equal(loaded.recommend(users, 10, exclude=ei), top)
        assert loaded.nbytes == rec.nbytes
    hand = rec.embedding.nbytes + 4 * (16 * 16 + 16 + 8 * 16 + 8 + 8 + 1)
    assert rec.nbytes == hand


@pytest.mark.parametrize('dtype,tol', [('float16', 2e-3), ('int8', 3e-2)])
def test_mlp_reduced_precision_close(dtype, tol):
    scorer = mlp_scorer()
    users = torch.arange(NU)
    ref = scorer.score_all(users).detach()
    rec = CompactMLPRecommender.from_scorer(scorer, dtype=dtype)
    err = (rec.score_all(users) - ref).abs().max()
    assert 0 < err <= tol * ref.abs().max()


def test_mlp_tampered_layers_rejected(tmp_path):
    rec = CompactMLPRecommender.from_scorer(mlp_scorer())
    path = tmp_path / 'mlp.pt'
    data = rec.to_dict()
    data['weights'][1] = torch.zeros(8, 3)
    write_file(data, path)
    with pytest.raises(FormatError, match='do not chain'):
        CompactMLPRecommender.load(path)


def test_recommend_exclusion_edge_cases():
    rec = CompactMLPRecommender.from_scorer(mlp_scorer())
    # User 0 has seen every item but 2 and 5: those come first, then -inf.
    seen = torch.tensor([i for i in range(NI) if i not in (2, 5)])
    ei = torch.stack([torch.zeros_like(seen), seen])
    top, val = rec.recommend(torch.tensor([0, 1, 0]), 4, exclude=ei,
                             return_scores=True)
    assert set(top[0, :2].tolist()) == {2, 5}
    assert torch.isinf(val[0, 2:]).all() and top[0, 2:].tolist() == [0, 1]
    assert torch.equal(top[0], top[2])
    assert torch.isfinite(val[1]).all()
    empty = rec.recommend(torch.empty(0, dtype=torch.long), 3)
    assert empty.shape == (0, 3)
    with pytest.raises(ValueError, match="'k'"):
        rec.recommend(torch.tensor([0]), NI + 1)
    with pytest.raises(IndexError, match='user_ids'):
        rec.recommend(torch.tensor([NU]), 3)
    with pytest.raises(IndexError, match='exclude'):
        rec.recommend(torch.tensor([0]), 3,
                      exclude=torch.tensor([[0], [NI]]))
    index = InteractionIndex.from_edge_index(ei, NU, NI)
    assert index.items.dtype == torch.uint16 and index.nbytes == \
        2 * ei.size(1) + 4 * (NU + 1)
    assert torch.equal(rec.recommend(torch.tensor([0, 1]), 4, exclude=index),
                       top[:2])
    with pytest.raises(ValueError, match='InteractionIndex over'):
        rec.recommend(torch.tensor([0]), 3,
                      exclude=InteractionIndex.from_edge_index(ei, NU, NI + 1))
