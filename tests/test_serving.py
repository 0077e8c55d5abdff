import pytest
import torch
from torch_geometric.nn.models import LightGCN

from pyg_cerp import serving
from pyg_cerp.metrics import deterministic_topk
from pyg_cerp.nn import CompactEmbedding, CompositionalEmbedding, MLPScorer
from pyg_cerp.nn.compact import FormatError
from pyg_cerp.utils.io import content_digest

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


def skeleton():
    # A served LightGCN as built for training, any compact embedding.
    model = LightGCN(NU + NI, D, num_layers=3)
    model.embedding = CompactEmbedding(NU + NI, D, 1)
    return model


def reference_topk(scores, edge_index, k):
    scores = scores.clone()
    scores[edge_index[0], edge_index[1]] = float('-inf')
    # Reference order: descending score, then ascending item id.
    order = torch.sort(-scores, dim=1, stable=True).indices
    return order[:, :k]


def lgcn_scores(model, ei):
    emb = model.get_embedding(homogeneous(ei)).detach()
    return emb[:NU] @ emb[NU:].t()


def test_topk_breaks_ties_by_id():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (50, 30), generator=gen).float()
    scores[0] = 1.  # all tied
    scores[1, :] = float('-inf')
    idx = deterministic_topk(scores, 7)
    expected = torch.sort(-scores, dim=1, stable=True).indices[:, :7]
    assert torch.equal(idx, expected)
    assert idx[0].tolist() == list(range(7))
    with pytest.raises(ValueError, match="'k'"):
        deterministic_topk(scores, 31)


def test_export_copies_only_the_rest():
    model = lightgcn()
    served = serving.export(model, 'int8')
    assert isinstance(served.embedding, CompactEmbedding)
    assert served.embedding.dtype_name == 'int8'
    assert isinstance(model.embedding, CompositionalEmbedding)
    assert not served.training and torch.equal(served.alpha, model.alpha)
    with pytest.raises(TypeError, match='CompositionalEmbedding'):
        serving.export(LightGCN(NU + NI, D, num_layers=3))


@pytest.mark.parametrize('layout', ['csr', 'bitmap'])
def test_lightgcn_float32_same_scores_and_topk(layout):
    model = lightgcn()
    ei = graph()
    ei = torch.cat([ei, ei[:, :5]], dim=1)  # duplicates count, as in PyG
    ref_scores = lgcn_scores(model, ei)
    served = serving.export(model, layout=layout)
    assert (lgcn_scores(served, ei) - ref_scores).abs().max() <= 1e-6
    users = torch.arange(NU)
    top, val = serving.recommend(served, users, 10, exclude=ei,
                                 edge_index=homogeneous(ei), num_users=NU,
                                 return_scores=True, batch_size=7)
    assert torch.equal(top, reference_topk(ref_scores, ei, 10))
    assert top.shape == val.shape == (NU, 10)
    # No training item is ever recommended.
    train = set(map(tuple, ei.t().tolist()))
    assert not any((u, i) in train for u in range(NU)
                   for i in top[u].tolist())
    with pytest.raises(ValueError, match='edge_index'):
        serving.recommend(served, users, 10)


@pytest.mark.parametrize('dtype,tol', [(torch.float16, 2e-3),
                                       (torch.int8, 2e-2)])
def test_lightgcn_reduced_precision_close(dtype, tol):
    model = lightgcn()
    ei = graph()
    ref = serving.export(model)
    rec = serving.export(model, dtype)
    ref_scores = lgcn_scores(ref, ei)
    err = (lgcn_scores(rec, ei) - ref_scores).abs().max()
    assert 0 < err <= tol * ref_scores.abs().max()
    users = torch.arange(NU)
    kw = dict(exclude=ei, edge_index=homogeneous(ei), num_users=NU)
    top_ref = serving.recommend(ref, users, 10, **kw)
    top = serving.recommend(rec, users, 10, **kw)
    overlap = sum(len(set(a) & set(b)) for a, b in zip(
        top.tolist(), top_ref.tolist())) / top.numel()
    assert overlap >= 0.9


@pytest.mark.parametrize('dtype', ['float32', 'int8', 'int4'])
def test_lightgcn_round_trip(tmp_path, dtype):
    model = lightgcn()
    ei = graph()
    rec = serving.export(model, dtype)
    path = tmp_path / 'lightgcn.pt'
    serving.save(rec, path)
    users = torch.tensor([3, 0, 3, 39])
    kw = dict(exclude=ei, edge_index=homogeneous(ei), num_users=NU)
    for decode in ('cache', 'lookup'):
        loaded = serving.load(skeleton(), path)
        loaded.embedding.set_decode(decode)
        assert loaded.embedding.nbytes == rec.embedding.nbytes
        assert torch.equal(lgcn_scores(loaded, ei), lgcn_scores(rec, ei))
        assert torch.equal(serving.recommend(loaded, users, 5, **kw),
                           serving.recommend(rec, users, 5, **kw))
    # The file is the compact E0 and alpha: no graph, no dense table.
    raw = torch.load(path, weights_only=True)['content']
    payload = sum(t.numel() * t.element_size() for t in raw.values()
                  if torch.is_tensor(t))
    assert payload == rec.embedding.nbytes + 4 * 4


def test_files_errors(tmp_path):
    rec = serving.export(lightgcn())
    path = tmp_path / 'rec.pt'
    serving.save(rec, path)
    data = path.read_bytes()
    truncated = tmp_path / 'truncated.pt'
    truncated.write_bytes(data[:-100])
    with pytest.raises(FormatError, match='truncated.pt'):
        serving.load(skeleton(), truncated)
    raw = torch.load(path, weights_only=True)
    torch.save({**raw, 'version': 7}, path)
    with pytest.raises(FormatError, match='version 7'):
        serving.load(skeleton(), path)
    # A file of the other backbone is refused by name.
    serving.save(serving.export(mlp_scorer()), path)
    with pytest.raises(FormatError, match='MLPScorer'):
        serving.load(skeleton(), path)


def mlp_scorer(seed=0, **kwargs):
    torch.manual_seed(seed)
    emb = CompositionalEmbedding(NU + NI, D, 11, threshold_init=-2.5)
    return MLPScorer(NU, NI, emb, hidden_channels=(16, 8), **kwargs).eval()


def mlp_skeleton():
    return MLPScorer(NU, NI, CompactEmbedding(NU + NI, D, 1),
                     hidden_channels=(16, 8))


def test_mlp_float32_same_scores_and_topk(tmp_path):
    scorer = mlp_scorer()
    ei = graph()
    users = torch.arange(NU)
    ref_scores = scorer.score_all(users).detach()
    rec = serving.export(scorer)
    assert (rec.score_all(users, item_batch_size=7) -
            ref_scores).abs().max() <= 1e-6
    top = serving.recommend(rec, users, 10, exclude=ei, batch_size=9)
    assert torch.equal(top, reference_topk(ref_scores, ei, 10))
    path = tmp_path / 'mlp.pt'
    serving.save(rec, path)
    for decode in ('cache', 'lookup'):
        loaded = serving.load(mlp_skeleton(), path)
        loaded.embedding.set_decode(decode)
        assert torch.equal(serving.recommend(loaded, users, 10, exclude=ei),
                           top)
        assert loaded.embedding.nbytes == rec.embedding.nbytes
    mlp_bytes = sum(t.numel() * t.element_size()
                    for t in rec.mlp.state_dict().values())
    assert mlp_bytes == 4 * (16 * 16 + 16 + 8 * 16 + 8 + 8 + 1)


def test_mlp_official_preset_is_served_as_is():
    # Batch norm and input normalisation come with MLPScorer itself.
    scorer = mlp_scorer(batch_norm=True, normalize_input=True)
    users = torch.arange(NU)
    ref = scorer.score_all(users).detach()
    assert (serving.export(scorer).score_all(users) - ref).abs().max() <= 1e-5


@pytest.mark.parametrize('dtype,tol', [('float16', 2e-3), ('int8', 3e-2)])
def test_mlp_reduced_precision_close(dtype, tol):
    scorer = mlp_scorer()
    users = torch.arange(NU)
    ref = scorer.score_all(users).detach()
    rec = serving.export(scorer, dtype)
    err = (rec.score_all(users) - ref).abs().max()
    assert 0 < err <= tol * ref.abs().max()


def test_mlp_tampered_layers_rejected(tmp_path):
    path = tmp_path / 'mlp.pt'
    serving.save(serving.export(mlp_scorer()), path)
    raw = torch.load(path, weights_only=True)
    raw['content']['mlp.lins.1.weight'] = torch.zeros(8, 3)
    raw['sha256'] = content_digest(raw['content'])
    torch.save(raw, path)
    with pytest.raises(FormatError, match='size mismatch'):
        serving.load(mlp_skeleton(), path)


def test_recommend_exclusion_edge_cases():
    rec = serving.export(mlp_scorer())
    # User 0 has seen every item but 2 and 5: those come first, then -inf.
    seen = torch.tensor([i for i in range(NI) if i not in (2, 5)])
    ei = torch.stack([torch.zeros_like(seen), seen])
    top, val = serving.recommend(rec, torch.tensor([0, 1, 0]), 4, exclude=ei,
                                 return_scores=True)
    assert set(top[0, :2].tolist()) == {2, 5}
    assert torch.isinf(val[0, 2:]).all() and top[0, 2:].tolist() == [0, 1]
    assert torch.equal(top[0], top[2])
    assert torch.isfinite(val[1]).all()
    empty = serving.recommend(rec, torch.empty(0, dtype=torch.long), 3)
    assert empty.shape == (0, 3)
    with pytest.raises(ValueError, match="'k'"):
        serving.recommend(rec, torch.tensor([0]), NI + 1)
    with pytest.raises(IndexError, match='user'):
        serving.recommend(rec, torch.tensor([NU]), 3)
    with pytest.raises(ValueError, match='exclude'):
        serving.recommend(rec, torch.tensor([0]), 3,
                          exclude=torch.tensor([[0], [NI]]))
    with pytest.raises(ValueError, match='exclude'):
        serving.recommend(rec, torch.tensor([0]), 3, exclude=seen)
