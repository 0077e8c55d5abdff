import pytest
import torch

from pyg_cerp.nn import CompositionalEmbedding, MLPScorer


@pytest.mark.parametrize('kind', ['full', 'cerp'])
def test_mlp_scorer_shapes_and_score_all(kind):
    torch.manual_seed(0)
    nu, ni, d = 7, 11, 8
    emb = (torch.nn.Embedding(nu + ni, d) if kind == 'full' else
           CompositionalEmbedding(nu + ni, d, 5, threshold_init=-4.))
    model = MLPScorer(nu, ni, emb, hidden_channels=(16, 8)).eval()
    user = torch.tensor([0, 3, 6])
    item = torch.tensor([10, 0, 4])
    assert model(user, item).shape == (3, )
    assert model(user.view(3, 1), torch.arange(ni)).shape == (3, ni)
    all_scores = model.score_all(user, item_batch_size=4)
    assert all_scores.shape == (3, ni)
    expected = model(user.view(3, 1), torch.arange(ni))
    assert torch.allclose(all_scores, expected, atol=1e-5)


def test_mlp_scorer_validates():
    # Learning with each embedding: test_baselines.test_inside_mlp_scorer.
    nu, ni = 20, 30
    model = MLPScorer(nu, ni, CompositionalEmbedding(nu + ni, 8, 8,
                                                     threshold_init=-8.))
    with pytest.raises(IndexError, match='item'):
        model(torch.tensor([0]), torch.tensor([ni]))
    with pytest.raises(ValueError, match='num_users'):
        MLPScorer(nu, ni + 1, torch.nn.Embedding(nu + ni, 8))


@pytest.mark.parametrize('kind', ['full', 'cerp'])
def test_official_preset_architecture_and_score_all(kind):
    torch.manual_seed(0)
    nu, ni, d = 6, 9, 4
    emb = (torch.nn.Embedding(nu + ni, d) if kind == 'full' else
           CompositionalEmbedding(nu + ni, d, 5, threshold_init=-100.))
    model = MLPScorer(nu, ni, emb, preset='official')
    # Expanding widths 2d*2, 2d*4, 2d*8, then one output.
    assert model.mlp.channel_list == [2 * d, 4 * d, 8 * d, 16 * d, 1]
    assert model.batch_norm and model.normalize_input
    norms = [type(n).__name__ for n in model.mlp.norms]
    assert norms == ['BatchNorm'] * 3
    # Xavier-uniform bound sqrt(6 / (fan_in + fan_out)).
    for lin in model.mlp.lins:
        bound = (6 / (lin.in_channels + lin.out_channels))**0.5
        assert float(lin.weight.abs().max()) <= bound + 1e-6
    # Train a few steps so the running statistics are not the identity.
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    user = torch.randint(nu, (64, 1))
    item = torch.randint(ni, (64, 3))
    for _ in range(5):
        loss = model(user, item).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(model.mlp.norms[0].module.running_var.sub(1).abs().max()) \
        > 1e-3
    model.eval()
    users = torch.arange(nu)
    expected = model(users.view(-1, 1), torch.arange(ni))
    assert torch.allclose(model.score_all(users, item_batch_size=4),
                          expected, atol=1e-5)
    assert 'official' in repr(model)


def test_input_normalisation_divides_by_nonzero_count():
    torch.manual_seed(0)
    nu, ni, d = 2, 3, 4
    emb = torch.nn.Embedding(nu + ni, d)
    model = MLPScorer(nu, ni, emb, hidden_channels=(5, ),
                      normalize_input=True).eval()
    with torch.no_grad():  # After construction (which resets emb).
        emb.weight[0, :3] = 0.  # User 0 keeps one value.
        emb.weight[nu + 1] = 0.  # Item 1 is all zero.
    user = torch.tensor([0, 0, 1])
    item = torch.tensor([0, 1, 1])
    x = torch.cat([emb(user), emb(item + nu)], -1)
    count = (x != 0).sum(-1).clamp(min=1)
    assert count.tolist() == [5, 1, 4]
    # The scorer on x equals its MLP on x / count.
    ref = model.mlp(x / count.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(model(user, item), ref, atol=1e-6)
    assert not torch.allclose(model.mlp(x).squeeze(-1), ref, atol=1e-3)
    assert torch.allclose(model.score_all(torch.arange(nu)),
                          model(torch.arange(nu).view(-1, 1),
                                torch.arange(ni)), atol=1e-6)
    # An all-zero pair gives the bias path, not nan.
    with torch.no_grad():
        emb.weight[1] = 0.
    assert torch.isfinite(model(torch.tensor([1]), torch.tensor([1]))).all()
    assert torch.isfinite(model.score_all(torch.tensor([1]))).all()


def test_small_default_and_bad_arguments():
    emb = torch.nn.Embedding(5, 8)
    model = MLPScorer(2, 3, emb)
    assert model.mlp.channel_list == [16, 64, 1]
    assert not model.batch_norm and not model.normalize_input
    assert MLPScorer(2, 3, emb, hidden_channels=(4, 2), preset='official',
                     batch_norm=False).mlp.channel_list == [16, 4, 2, 1]
    with pytest.raises(ValueError, match='preset'):
        MLPScorer(2, 3, emb, preset='huge')
    with pytest.raises(ValueError, match='hidden_channels'):
        MLPScorer(2, 3, emb, hidden_channels=())
    with pytest.raises(ValueError, match='dropout'):
        MLPScorer(2, 3, emb, dropout=1.5)


def test_batch_norm_training_scores_pairs_in_one_batch():
    # MLPRecommender scores positives and negatives in one call, so batch
    # statistics mix them (separate calls would normalise away the gap).
    from pyg_cerp.train import MLPRecommender
    torch.manual_seed(0)
    nu, ni = 4, 6
    rec = MLPRecommender(MLPScorer(nu, ni, torch.nn.Embedding(nu + ni, 4),
                                   preset='official'))
    calls = []
    rec.scorer.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    users = torch.tensor([0, 1, 2])
    pos = torch.tensor([0, 1, 2])
    neg = torch.tensor([[3, 4], [5, 3], [4, 5]])
    p, n = rec.scores(users, pos, neg)
    assert p.shape == (3, ) and n.shape == (3, 2) and len(calls) == 1
