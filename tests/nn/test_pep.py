import pytest
import torch

from pyg_cerp.nn.pep import PEPEmbedding, magnitude_mask


def make_pep(s=-5.):
    torch.manual_seed(0)
    return PEPEmbedding(100, 8, threshold_init=s)


def test_pep_prunes_and_freezes_with_rewind():
    emb = make_pep(-4.6)  # tau ~ 0.01, about half of xavier(100, 8)
    init = emb.initial_state()
    (mask, ) = emb.masks()
    assert 0 < int(mask.sum()) < mask.numel()
    assert emb.num_nonzero() == int(mask.sum())
    assert emb.full_table_fraction() == pytest.approx(mask.float().mean())
    assert not hasattr(emb, 'pruning_loss')

    with torch.no_grad():
        emb.V.add_(0.5)
    emb.freeze_masks((mask, ), rewind_to=init)
    assert emb.is_retraining and not emb.threshold.requires_grad
    assert torch.equal(emb.weight, init['V'] * mask)

    opt = torch.optim.SGD(emb.parameters(), lr=1.)
    emb.weight.sum().backward()
    opt.step()
    assert not bool((emb.weight[~mask] != 0).any())
    assert emb.num_nonzero() <= int(mask.sum())

    with pytest.raises(KeyError, match='V'):
        emb.freeze_masks(rewind_to={'P': init['V']})
    with pytest.raises(ValueError, match='shape'):
        emb.freeze_masks((mask[:3], ))

    # Without rewind, the pruned values are kept at the switch.
    other = make_pep(-4.6)
    before = other.weight.detach().clone()
    other.freeze_masks()
    assert torch.allclose(other.weight, before)

    # The state dict carries mask and mode.
    fresh = make_pep()
    fresh.load_state_dict(emb.state_dict())
    assert fresh.is_retraining and not fresh.threshold.requires_grad
    assert torch.equal(fresh.weight, emb.weight)

    emb.reset_parameters()
    assert not emb.is_retraining and bool(emb.mask.all())


def test_pep_rejects_uint8_ids_and_bad_rewind():
    pep = PEPEmbedding(50, 4, check_index=False)
    with pytest.raises(TypeError, match='torch.uint8'):
        pep(torch.arange(5, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"'rewind_to\['V'\]' must have "
                       r"shape \(50, 4\)"):
        pep.freeze_masks(rewind_to={'V': torch.zeros(3, 4)})
    with pytest.raises(ValueError, match="'threshold_init' must be a finite"):
        PEPEmbedding(50, 4, threshold_init=float('nan'))
    with torch.no_grad():
        pep.V[0, 0] = float('nan')
    with pytest.raises(FloatingPointError, match='PEPEmbedding holds 1 nan'):
        pep.num_nonzero()


def test_magnitude_mask_and_from_magnitude():
    w = torch.tensor([[0.5, -3., 0.], [2., 0.5, -0.1]])
    m = magnitude_mask(w, 3)
    assert m.tolist() == [[True, True, False], [True, False, False]]
    assert int(magnitude_mask(w, 6).sum()) == 6
    with pytest.raises(ValueError, match='num_values'):
        magnitude_mask(w, 7)
    torch.manual_seed(0)
    full = torch.randn(50, 8)
    emb = PEPEmbedding.from_magnitude(full, 0.1)
    assert emb.is_retraining and emb.num_nonzero() == 40
    kept = emb.weight
    # The kept entries are the largest ones, with their trained values.
    assert float(full[kept == 0].abs().max()) <= \
        float(full[kept != 0].abs().min())
    assert torch.equal(kept[kept != 0], full[kept != 0])
    # Fine-tuning keeps the pattern.
    opt = torch.optim.Adam([emb.V], lr=0.1)
    emb(torch.arange(50)).pow(2).sum().backward()
    opt.step()
    assert torch.equal(emb.weight != 0, kept != 0)
    with pytest.raises(ValueError, match='keeps none'):
        PEPEmbedding.from_magnitude(full, 0.001)
    with pytest.raises(ValueError, match='N x d'):
        PEPEmbedding.from_magnitude(full.flatten(), 0.1)
