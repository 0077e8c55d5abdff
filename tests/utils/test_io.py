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


def _flip_tensor_byte(path, tensor):
    # Flips one byte inside the stored bytes of `tensor` (torch.load does not
    # notice: the zip container has no check over record data).
    raw = bytearray(open(path, 'rb').read())
    pos = raw.find(tensor.numpy().tobytes())
    assert pos > 0
    raw[pos + 5] ^= 0xFF
    open(path, 'wb').write(bytes(raw))


def test_checksum_detects_flipped_tensor_byte(tmp_path):
    from pyg_cerp.utils.io import CheckpointError
    path = tmp_path / 'ckpt.pt'
    weight = torch.arange(1000, dtype=torch.float32)
    atomic_save({'w': weight, 'step': 3}, path, checksum=True)
    assert torch.equal(safe_load(path, require_checksum=True)['w'], weight)
    _flip_tensor_byte(path, weight)
    assert 'content' in torch.load(path, weights_only=True)  # unnoticed
    with pytest.raises(CheckpointError, match="ckpt.pt' is corrupted.*"
                       "SHA-256.*Delete it"):
        safe_load(path)


@pytest.mark.parametrize('content', ['truncated', 'random', 'empty'])
def test_unreadable_file_names_file_and_remedy(tmp_path, content):
    from pyg_cerp.utils.io import CheckpointError
    path = tmp_path / 'ckpt.pt'
    atomic_save({'w': torch.arange(100)}, path, checksum=True)
    raw = open(path, 'rb').read()
    data = {'truncated': raw[:len(raw) // 2], 'empty': b'',
            'random': os.urandom(300)}[content]
    open(path, 'wb').write(data)
    with pytest.raises(CheckpointError) as info:
        safe_load(path)
    msg = str(info.value)
    assert str(path) in msg and 'truncated, corrupted' in msg
    assert 'without resuming' in msg


def test_require_checksum_refuses_plain_file(tmp_path):
    from pyg_cerp.utils.io import CheckpointError
    path = tmp_path / 'old.pt'
    atomic_save({'v': 1}, path)
    assert safe_load(path) == {'v': 1}
    with pytest.raises(CheckpointError, match='has no checksum'):
        safe_load(path, require_checksum=True)
    with pytest.raises(FileNotFoundError, match='No checkpoint file'):
        safe_load(tmp_path / 'missing.pt')


def test_folder_lock(tmp_path):
    import subprocess

    from pyg_cerp.utils.io import FolderLock
    out = tmp_path / 'out'
    with FolderLock(out) as lock:
        assert open(lock.path).read().split()[1] == str(os.getpid())
        with FolderLock(out):  # re-entrant within a process
            pass
        assert os.path.exists(lock.path)
    assert not os.path.exists(lock.path)
    # Held by another live process: refused, naming it.
    proc = subprocess.Popen(['sleep', '30'])
    try:
        import socket
        with open(out / '.lock', 'w') as f:
            f.write(f'{socket.gethostname()} {proc.pid}\n')
        with pytest.raises(RuntimeError, match=f'in use by another run '
                           f'\\(pid {proc.pid}'):
            FolderLock(out).acquire()
    finally:
        proc.kill()
        proc.wait()
    # Its process is gone (kill -9): the stale lock is taken over.
    with FolderLock(out):
        assert open(out / '.lock').read().split()[1] == str(os.getpid())
