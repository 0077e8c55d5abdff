r"""HybridEmbedding: exact rows for chosen entities, a base for the rest."""
import os
import sys

import pytest
import torch

from pyg_cerp.memory import (fixed_nbytes, layout_nbytes, memory_report,
                             stored_nbytes)
from pyg_cerp.nn import (CompositionalEmbedding, HybridEmbedding,
                         QREmbedding, most_frequent)
from pyg_cerp.nn.hybrid import (exact_ids_nbytes, exact_nbytes,
                                exact_rows_for_nbytes)
from pyg_cerp.train import PruningScheduler

N, D = 400, 16
IDS = torch.tensor([0, 5, 17, 200, 399])


def make(precision='float32', ids=IDS, **kwargs):
    torch.manual_seed(0)
    base = CompositionalEmbedding(N - ids.numel(), D, 40, precision=precision,
                                  operation='mul', **kwargs)
    return HybridEmbedding(base, ids, N)


def test_rows_come_from_the_exact_table_or_the_base_by_rank():
    emb = make()
    weight = emb.weight
    assert weight.shape == (N, D)
    assert torch.equal(weight[IDS], emb.exact.detach())
    rest = torch.ones(N, dtype=torch.bool)
    rest[IDS] = False
    assert torch.equal(weight[rest], emb.base.weight.detach())
    index = torch.tensor([[0, 1], [399, 6]])
    assert torch.equal(emb(index), weight[index])
    # Gradients reach the exact rows and the base's tables.
    emb(torch.tensor([5, 6])).sum().backward()
    assert emb.exact.grad[1].abs().sum() > 0
    assert emb.exact.grad[[0, 2, 3, 4]].abs().sum() == 0
    assert emb.base.P.grad.abs().sum() > 0
    with pytest.raises(IndexError):
        emb(torch.tensor([N]))


def test_stored_bytes_count_the_base_exact_rows_and_ids():
    emb = make('int8')
    report = memory_report(emb)
    base = memory_report(emb.base).nbytes
    exact = layout_nbytes(5, D, 5 * D, 'dense', 'int8')
    assert exact == 5 * D + 5 * 4  # Values and per-row scales.
    ids = report.tables['exact_ids']
    assert (ids.nbytes, ids.format) == (20, 'ids')  # 5 int32 < 400 bits.
    assert report.nbytes == stored_nbytes(emb) == base + exact + 20
    assert exact_nbytes(N, D, 5, 'int8') == exact + 20
    assert fixed_nbytes(emb) == exact + 20
    assert exact_ids_nbytes(400, 100) == 50  # The bitmap wins.
    assert exact_ids_nbytes(400, 0) == 0
    # The most rows that fit, and not one more.
    k = exact_rows_for_nbytes(N, D, 1000, 'int8')
    assert exact_nbytes(N, D, k, 'int8') <= 1000 < exact_nbytes(
        N, D, k + 1, 'int8')


def test_most_frequent_breaks_ties_to_the_smaller_id():
    degree = torch.tensor([3, 9, 3, 0, 9, 3])
    assert most_frequent(degree, 3).tolist() == [0, 1, 4]
    assert most_frequent(degree, 0).numel() == 0
    with pytest.raises(ValueError, match='at most'):
        most_frequent(degree, 7)


def test_bad_arguments_are_named():
    base = CompositionalEmbedding(N - 5, D, 40)
    with pytest.raises(ValueError, match='distinct'):
        HybridEmbedding(base, torch.tensor([1, 1, 2, 3, 4]), N)
    with pytest.raises(ValueError, match='distinct'):
        HybridEmbedding(base, torch.tensor([1, 2, 3, 4, N]), N)
    with pytest.raises(TypeError, match='torch.long'):
        HybridEmbedding(base, torch.tensor([1., 2.]), N)
    with pytest.raises(ValueError, match='other num_embeddings - k = 396'):
        HybridEmbedding(base, torch.tensor([1, 2, 3, 4]), N)


def test_state_dict_round_trip_restores_the_ids():
    emb = make()
    other = make(ids=torch.tensor([1, 2, 3, 4, 6]))
    other.load_state_dict(emb.state_dict())
    assert torch.equal(other.exact_index, IDS)
    assert torch.equal(other.weight, emb.weight)
    assert 'exact_rows=5' in repr(emb)


def test_pruning_loss_covers_the_base_entities_of_the_batch():
    emb = make()
    index = torch.tensor([0, 1, 2, 5])  # 0 and 5 are exact: base ids 0, 1.
    assert torch.equal(emb.pruning_loss(index),
                       emb.base.pruning_loss(torch.tensor([0, 1])))
    assert torch.equal(emb.pruning_loss(), emb.base.pruning_loss())


def test_scheduler_prunes_the_base_to_a_byte_target_with_exact_rows():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..',
                                    'train'))
    from test_bytes import prune
    emb = make('int8', threshold_init=-8.)
    start = emb.initial_state()
    assert set(start) == {'P', 'Q', 'exact'}
    s = PruningScheduler(emb, (0.05, ), 'bytes', gamma_init=0.,
                         exact_snapshots=True, threshold_drive=1e-2)
    assert s.nbytes() == stored_nbytes(emb) == s.nbytes(emb.masks())
    prune(emb, s)
    assert s.done
    target = 0.05 * 4 * N * D
    assert 0.97 * target <= s.snapshots[0.05].nbytes <= target
    s.freeze(0.05, rewind=True)
    assert emb.is_retraining
    assert torch.equal(emb.exact, start['exact'])  # Rewound with the tables.
    assert stored_nbytes(emb) == s.snapshots[0.05].nbytes
    # The exact rows are never pruned.
    assert int(emb.exact.count_nonzero()) == 5 * D


def test_any_base_and_pyg_lightgcn():
    from torch_geometric.nn import LightGCN
    base = QREmbedding(N - 5, D, 30)
    emb = HybridEmbedding(base, IDS, N)
    assert emb.num_nonzero() == base.num_nonzero() + 5 * D
    model = LightGCN(N, D, num_layers=2)
    model.embedding = emb
    edge_index = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])
    out = model.get_embedding(edge_index)
    assert out.shape == (N, D)
    out.sum().backward()
    assert emb.exact.grad is not None
