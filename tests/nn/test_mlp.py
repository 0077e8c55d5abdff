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


def test_mlp_scorer_learns_and_validates():
    torch.manual_seed(0)
    nu, ni = 20, 30
    model = MLPScorer(nu, ni, CompositionalEmbedding(nu + ni, 8, 8,
                                                     threshold_init=-8.))
    user = torch.randint(nu, (100, ))
    pos = torch.randint(ni, (100, ))
    neg = torch.randint(ni, (100, ))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    first = None
    for _ in range(50):
        loss = -torch.nn.functional.logsigmoid(
            model(user, pos) - model(user, neg)).mean()
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first
    with pytest.raises(IndexError, match='item'):
        model(user[:1], torch.tensor([ni]))
    with pytest.raises(ValueError, match='num_users'):
        MLPScorer(nu, ni + 1, torch.nn.Embedding(nu + ni, 8))
