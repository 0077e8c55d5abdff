"""Writes ../cerp_regulariser_slice.md from report.md.in with the tables of summarize.py."""
import contextlib
import io
import os
import sys

import summarize

HERE = os.path.dirname(os.path.abspath(__file__))


def table(argv, keep=None):
    old = sys.argv
    sys.argv = ['summarize.py'] + argv
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        summarize.main('--test' in argv)
    sys.argv = old
    lines = buf.getvalue().strip().split('\n')
    if keep is not None:
        lines = lines[:2] + [l for l in lines[2:]
                             if any(l.startswith(f'| {k} | {b} |')
                                    for k, b in keep)]
    return '\n'.join(lines)


text = open(os.path.join(HERE, 'report.md.in')).read()
text = text.replace('{AGG}', table(['--agg']))
text = text.replace('{RUNS}', table([]))
text = text.replace('{TEST}', table(['--agg', '--test'], keep=[
    ('Ps0.3', '0.05'), ('Pnoregs', '0.05'), ('Pg0.3', '0.05'),
    ('Pnoreg', '0.05'), ('Pg0.3', '0.01'), ('Pnoreg', '0.01'),
    ('Pnoregs', '0.01')]))
open(os.path.join(HERE, '..', 'cerp_regulariser_slice.md'), 'w').write(text)
