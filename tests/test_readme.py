r"""The README's first Python block runs as written (issue 13)."""
import os
import re

README = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'README.md')


def test_readme_python_block_runs():
    with open(README) as f:
        text = f.read()
    blocks = re.findall(r'```python\n(.*?)```', text, flags=re.S)
    assert blocks, 'README has no python block'
    scope: dict = {}
    exec(compile(blocks[0], 'README.md', 'exec'), scope)
    scheduler = scope['scheduler']
    assert scheduler.num_steps > 0 and scheduler.epoch == 3
    assert 0.1 in scheduler.snapshots
    emb = scope['model'].embedding
    assert emb.is_retraining
    assert 0 < emb.num_nonzero() <= 0.1 * emb.num_full_params
