import pytest
import torch

from pyg_cerp.memory import (best_layout, layout_nbytes, memory_report,
                             stored_nbytes, table_nbytes)
from pyg_cerp.nn.baselines import (FullEmbedding, HashEmbedding,
                                   PEPEmbedding, QREmbedding)
from pyg_cerp.nn.compositional import CompositionalEmbedding


def test_format_formulas_by_hand():
    assert layout_nbytes(10, 64, 640, 'dense') == 2560
    # 100 non-zeros, d = 64: uint8 column indices, 11 int32 row pointers.
    assert layout_nbytes(10, 64, 100, 'csr') == 100 * 5 + 11 * 4
    # d = 300 needs int16 column indices.
    assert layout_nbytes(10, 300, 100, 'csr') == 100 * 6 + 11 * 4
    assert layout_nbytes(10, 64, 100, 'bitmap') == 10 * 8 + 400
    assert layout_nbytes(10, 65, 100, 'bitmap') == 10 * 9 + 400
    # Reduced precision: 2 bytes per value; int8 adds a float32 scale a row.
    assert layout_nbytes(10, 64, 100, 'bitmap', 'float16') == 10 * 8 + 200
    assert layout_nbytes(10, 64, 100, 'csr', torch.int8) == \
        100 * 2 + 11 * 4 + 10 * 4
    assert layout_nbytes(10, 64, 0, 'dense', 'int8') == 640 + 40
    # The crossover at d = 64 (uint8 column ids): 8 B/row vs 1 B/nnz + ptr.
    assert best_layout(10, 64, 35) == 'csr'
    assert best_layout(10, 64, 36) == 'bitmap'  # a tie
    with pytest.raises(ValueError, match='layout'):
        layout_nbytes(10, 64, 1, 'coo')
    with pytest.raises(ValueError, match='dtype'):
        layout_nbytes(10, 64, 1, 'csr', torch.bfloat16)


def test_table_picks_the_smallest_format():
    dense = torch.randn(10, 64)
    # A fully dense pruned table is stored as a bitmap, as in
    # pyg_cerp.nn.compact (3% above the dense size for d = 64).
    assert table_nbytes(dense).format == 'bitmap'
    assert table_nbytes(dense).nbytes == 2560 + 80
    assert table_nbytes(dense, pruned=False).format == 'dense'
    sparse = torch.zeros(10, 64)
    sparse[0, :3] = 1.
    info = table_nbytes(sparse)
    assert info.format == 'csr' and info.nonzero == 3
    assert info.nbytes == 3 * 5 + 11 * 4
    half = torch.randn(10, 64) * (torch.rand(10, 64) < 0.5)
    info = table_nbytes(half)
    assert info.format == 'bitmap'
    assert info.nbytes == 80 + 4 * info.nonzero
    # Never more than dense; unpruned tables are always dense.
    assert table_nbytes(sparse, pruned=False).nbytes == 2560
    with pytest.raises(ValueError, match='2-D'):
        table_nbytes(torch.zeros(3))


def test_module_bytes():
    n, d = 1000, 16
    assert stored_nbytes(torch.nn.Embedding(n, d)) == n * d * 4
    assert stored_nbytes(FullEmbedding(n, d)) == n * d * 4
    qr = QREmbedding.for_budget(n, d, 0.1)
    assert stored_nbytes(qr) == 4 * d * (qr.num_remainder + qr.num_quotient)
    hs = HashEmbedding.for_budget(n, d, 0.1)
    assert stored_nbytes(hs) == 4 * d * 100
    cerp = CompositionalEmbedding(n, d, 100, threshold_init=-100.)
    report = memory_report(cerp)
    # Unpruned: both tables as bitmaps (16 values + 2 bitmap bytes per row).
    assert report.nbytes == 2 * 100 * (d * 4 + 2) and report.nonzero == 3200
    assert report.formats() == 'P:bitmap,Q:bitmap'
    # Only the used rows of Q are stored: N = 1000, b = 300 uses
    # ceil(1000 / ceil(1000/300)) = 250 rows of Q.
    cerp = CompositionalEmbedding(n, d, 300, threshold_init=-100.)
    report = memory_report(cerp)
    assert report.tables['Q'].rows == 250 and report.tables['P'].rows == 300
    cerp = CompositionalEmbedding(n, d, 100, threshold_init=-100.)
    with torch.no_grad():
        cerp.threshold_P.fill_(100.)  # prune all of P
    report = memory_report(cerp)
    # Empty: CSR needs 101 row pointers (404 B), the bitmap 100 * 2 B.
    assert report.tables['P'].format == 'bitmap'
    assert report.tables['P'].nbytes == 200
    pep = PEPEmbedding(n, d, threshold_init=100.)
    assert stored_nbytes(pep) == min((n + 1) * 4, n * 2)
    with pytest.raises(TypeError, match='Linear'):
        stored_nbytes(torch.nn.Linear(2, 2))


@pytest.mark.parametrize('dtype', ['float32', 'float16', 'int8'])
def test_agrees_with_compact_export(dtype):
    cerp = CompositionalEmbedding(1000, 16, 300, threshold_init=-3.)
    compact = cerp.to_compact(dtype)
    report = memory_report(cerp, dtype)
    assert report.nbytes == compact.nbytes == stored_nbytes(cerp, dtype)
    assert report.formats() == f'P:{compact.P.layout},Q:{compact.Q.layout}'


def test_best_nbytes_and_tables_nbytes():
    from pyg_cerp.memory import best_nbytes, tables_nbytes
    assert best_nbytes(10, 64, 35) == 35 * 5 + 11 * 4  # CSR below the tie.
    assert best_nbytes(10, 64, 100, 'int8') == 100 + 40 + 80  # Bitmap.
    shapes = [(10, 64, True), (5, 8, False)]
    assert tables_nbytes(shapes, [100, 0], 'float16') == \
        best_nbytes(10, 64, 100, 'float16') + 5 * 8 * 2


@pytest.mark.parametrize('dtype', ['float32', 'float16', 'int8'])
def test_density_for_nbytes_inverts_the_count(dtype):
    from pyg_cerp.memory import density_for_nbytes, tables_nbytes
    shapes = [(500, 32, True), (400, 32, True)]

    def count(density):
        return tables_nbytes(shapes, [int(density * r * c)
                                      for r, c, _ in shapes], dtype)

    for budget in (8000, 12800, 30000):
        density = density_for_nbytes(shapes, budget, dtype)
        assert count(density) <= budget < count(density + 1e-4)
    # int8 bitmap: z + 900 * (4 + 4) bytes for z values.
    if dtype == 'int8':
        assert density_for_nbytes(shapes, 7200 + 2880, dtype) == \
            pytest.approx(0.1, abs=1e-4)
    assert density_for_nbytes(shapes, 1e9, dtype) == 1.
    assert density_for_nbytes(shapes, count(0.) - 1, dtype) is None


def test_modules_are_counted_at_their_precision():
    from pyg_cerp.memory import module_precision
    cerp = CompositionalEmbedding(1000, 16, 300, threshold_init=-3.,
                                  precision='float16')
    assert module_precision(cerp) == 'float16'
    assert module_precision(torch.nn.Embedding(3, 2)) == 'float32'
    assert stored_nbytes(cerp) == stored_nbytes(cerp, 'float16') == \
        cerp.to_compact().nbytes < stored_nbytes(cerp, 'float32')
    qr = QREmbedding(1000, 16, 40, precision='int8')
    rows = 40 + 25
    assert stored_nbytes(qr) == rows * 16 + 4 * rows == qr.nbytes()
