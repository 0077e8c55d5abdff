r"""benchmarks/valid_curves.py: validation curves from the benchmark logs."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..',
                                'benchmarks'))
import valid_curves  # noqa: E402

LOG = """\
# ---- device run, tag a (CPU)
# python benchmarks/memory_vs_ndcg.py ... --tag a
# commit 0123456789ab
[prune] epoch 1/8 loss 0.6916 (bpr 0.6916, reg 0) gamma 0 mem 18.2% of full
cerp@0.05 int8 b=10 epoch 2: loss 0.5000 valid ndcg@20 0.0100
cerp@0.05 int8 b=10 epoch 4: loss 0.4000 valid ndcg@20 0.0300
cerp@0.05 int8 b=10 epoch 6: loss 0.3000 valid ndcg@20 0.0200
# ---- tag b
qr-mul@0.05 int8 epoch 2: loss 0.5000 valid ndcg@20 0.0400
# ---- tag a
cerp@0.05 int8 b=10 epoch 2: loss 0.5000 valid ndcg@20 0.0500
"""


def test_curves_per_tag_and_model(tmp_path, capsys):
    curves = valid_curves.read_curves(LOG.splitlines(True))
    # The second section of tag 'a' (a rerun) replaces the first.
    assert curves == {('b', 'qr-mul@0.05 int8'): [(2, 0.04)],
                      ('a', 'cerp@0.05 int8 b=10'): [(2, 0.05)]}
    first = valid_curves.read_curves(LOG.splitlines(True)[:8], tags=['a'])
    assert first == {('a', 'cerp@0.05 int8 b=10'): [(2, 0.01), (4, 0.03),
                                                    (6, 0.02)]}
    (line, ) = valid_curves.summary(first)
    assert 'last epoch    6' in line and 'best 0.0300 at    4' in line
    path = tmp_path / 'x.log'
    path.write_text(LOG)
    out = tmp_path / 'x.png'
    assert valid_curves.main([str(path), '--tags', 'b', '--out', str(out)])
    assert out.stat().st_size > 0 and 'qr-mul' in capsys.readouterr().out
    kept = valid_curves.main([str(path), '--exclude', 'a:cerp@0.05 int8 b=10'])
    assert list(kept) == [('b', 'qr-mul@0.05 int8')]
    with pytest.raises(SystemExit):
        valid_curves.main([str(path), '--tags', 'nope'])
