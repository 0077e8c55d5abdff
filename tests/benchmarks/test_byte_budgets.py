import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..',
                                'benchmarks'))

import byte_budgets  # noqa: E402


def test_byte_budgets_table(capsys):
    byte_budgets.budgets(1000, 16, 100, [0.2, 0.01])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith('| 20.00%')]
    assert [line.split(' | ')[1] for line in lines] == ['float32', 'float16',
                                                        'int8', 'int4']
    kept = [float(line.split(' | ')[2].rstrip('%')) for line in lines]
    assert kept[0] < kept[1] <= kept[2] <= kept[3]
    assert '| 1.00% | int8 | unreachable' in out  # Scales + bitmap: 1.9%.
    byte_budgets.step_time(200, 8, 20, repeats=1)
    assert '| int8 |' in capsys.readouterr().out
