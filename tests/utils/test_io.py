import os

import pytest
import torch

from pyg_cerp.utils import atomic_save, safe_load


def test_atomic_save_round_trip(tmp_path):
    path = tmp_path / 'sub' / 'ckpt.pt'
    obj = {'a': torch.arange(3), 'b': [1, 2.5, 'x']}
    atomic_save(obj, path)
    out = safe_load(path)
    assert torch.equal(out['a'], obj['a']) and out['b'] == obj['b']
    assert os.listdir(path.parent) == ['ckpt.pt']


def test_failed_save_keeps_old_file(tmp_path):
    path = tmp_path / 'ckpt.pt'
    atomic_save({'v': 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError('boom')

    with pytest.raises(RuntimeError, match='boom'):
        atomic_save({'v': Unpicklable()}, path)
    assert safe_load(path) == {'v': 1}
    assert os.listdir(tmp_path) == ['ckpt.pt']


def test_safe_load_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / 'evil.pt'
    torch.save({'x': os.getcwd}, path)
    with pytest.raises(Exception, match='[Ww]eights'):
        safe_load(path)
