r"""Atomic, checksummed checkpoint I/O and a lock for output folders."""
import errno
import hashlib
import os
import pickle
import socket
import tempfile
import zipfile
from typing import Any, Dict, Optional, Union

import torch
from torch import Tensor

PathLike = Union[str, os.PathLike]

#: The :obj:`'format'` entry of a checksummed checkpoint file.
CHECKPOINT_FORMAT = 'pyg_cerp.checkpoint'
CHECKPOINT_VERSION = 1

#: What :func:`torch.load` raises on a truncated, corrupted or foreign file.
LOAD_ERRORS = (OSError, RuntimeError, pickle.UnpicklingError, EOFError,
               zipfile.BadZipFile, ValueError, KeyError, IndexError,
               TypeError, AttributeError, UnicodeDecodeError, OverflowError,
               MemoryError)


class CheckpointError(ValueError):
    r"""Raised when a checkpoint file is truncated, corrupted (its content
    does not match its SHA-256 checksum) or not a checkpoint at all."""


def content_digest(obj: Any, h: Optional['hashlib._Hash'] = None) -> str:
    r"""A SHA-256 over a nested structure of dicts, lists, tensors and python
    scalars (dict keys in sorted order; tensors by dtype, shape and raw
    bytes), independent of how :func:`torch.save` lays the file out.

    Args:
        obj (Any): The object.
        h (hashlib._Hash, optional): A hash to update instead of a new one.
    """
    h = hashlib.sha256() if h is None else h
    if isinstance(obj, dict):
        h.update(b'{')
        for key in sorted(obj, key=str):
            h.update(repr(key).encode() + b':')
            content_digest(obj[key], h)
        h.update(b'}')
    elif isinstance(obj, (list, tuple)):
        h.update(b'[')
        for item in obj:
            content_digest(item, h)
        h.update(b']')
    elif isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f'T{t.dtype}{tuple(t.shape)}'.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        h.update(f'{type(obj).__name__}{obj!r};'.encode())
    return h.hexdigest()


def atomic_save(obj: Any, path: PathLike, checksum: bool = False) -> None:
    r"""Saves :obj:`obj` with :func:`torch.save` atomically: it is written to a
    temporary file in the same folder, flushed to disk and renamed over
    :obj:`path`, so a crash never leaves a truncated file and an existing file
    is only replaced by a complete one.

    Args:
        obj (Any): What to save (plain tensors, numbers, strings, lists and
            dicts of these, so that :func:`load` works with
            :obj:`weights_only=True`).
        path (str or os.PathLike): The destination.
        checksum (bool, optional): Wrap :obj:`obj` with a SHA-256 checksum of
            its content (:func:`content_digest`), verified by
            :func:`safe_load`: :func:`torch.load` does not detect a flipped
            byte inside tensor data. (default: :obj:`False`)
    """
    if checksum:
        obj = dict(format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION,
                   sha256=content_digest(obj), content=obj)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path),
                               suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get('format') == CHECKPOINT_FORMAT


def safe_load(path: PathLike, map_location: Any = 'cpu',
              require_checksum: bool = False) -> Any:
    r"""Loads a file written by :func:`atomic_save` with
    :obj:`weights_only=True` (no arbitrary code is executed). A file written
    with :obj:`checksum=True` is verified against its SHA-256 and unwrapped.

    Args:
        path (str or os.PathLike): The file.
        map_location (optional): See :func:`torch.load`. (default: :obj:`'cpu'`)
        require_checksum (bool, optional): Refuse a file without a checksum.
            (default: :obj:`False`)

    Raises:
        FileNotFoundError: If there is no file at :obj:`path`.
        CheckpointError: (a :class:`ValueError`) If the file is truncated,
            corrupted, not a :func:`torch.save` file, holds objects that
            :obj:`weights_only=True` refuses, or fails its checksum; the
            message names the file and what to do.
    """
    path = os.fspath(path)
    todo = ("Delete it (or pass another output folder) and start again "
            "without resuming, or restore an intact copy.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at '{path}'")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise
    except LOAD_ERRORS as e:
        first = str(e).splitlines()[0] if str(e) else ''
        raise CheckpointError(
            f"Cannot read '{path}': the file is truncated, corrupted or not "
            f"a pyg_cerp checkpoint ({type(e).__name__}: {first}). "
            f"{todo}") from e
    if not _is_checkpoint(obj):
        if require_checksum:
            raise CheckpointError(
                f"'{path}' has no checksum (it was not written by this "
                f"version of pyg_cerp), so its content cannot be verified. "
                f"{todo}")
        return obj
    version = obj.get('version')
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"'{path}' has checkpoint version {version!r}, but this pyg_cerp "
            f"reads version {CHECKPOINT_VERSION} only.")
    stored, content = obj.get('sha256'), obj.get('content')
    if not isinstance(stored, str) or content_digest(content) != stored:
        raise CheckpointError(
            f"'{path}' is corrupted: its content does not match the SHA-256 "
            f"checksum stored with it. {todo}")
    return content


# Output-folder locks ########################################################

_HELD: Dict[str, int] = {}  # lock path -> re-entrant count in this process


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class FolderLock:
    r"""An exclusive lock on an output folder, so that two runs cannot write
    the same results and checkpoints at once: :obj:`{folder}/.lock` is
    created with :obj:`O_CREAT | O_EXCL` and holds the owner's host and pid.
    A lock left by a process that no longer runs (*e.g.*, after
    :obj:`kill -9`) on the same host is taken over. Re-entrant within one
    process. Use as a context manager.

    Args:
        folder (str or os.PathLike): The folder (created if missing).
    """
    NAME = '.lock'

    def __init__(self, folder: PathLike) -> None:
        self.folder = os.fspath(folder)
        self.path = os.path.abspath(os.path.join(self.folder, self.NAME))

    def _owner(self) -> Optional[Dict[str, str]]:
        try:
            with open(self.path) as f:
                host, _, pid = f.read().strip().partition(' ')
            return dict(host=host, pid=pid)
        except OSError:
            return None

    def acquire(self) -> 'FolderLock':
        r"""Takes the lock, or raises a :class:`RuntimeError` naming the
        process that holds it."""
        if _HELD.get(self.path, 0) > 0:
            _HELD[self.path] += 1
            return self
        os.makedirs(self.folder, exist_ok=True)
        me = f'{socket.gethostname()} {os.getpid()}'
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                             0o644)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
                owner = self._owner()
                if owner is None:  # removed meanwhile: retry
                    continue
                pid = int(owner['pid']) if owner['pid'].isdigit() else -1
                if owner['host'] == socket.gethostname() and \
                        not _pid_alive(pid):
                    try:  # stale: its process is gone
                        os.remove(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                raise RuntimeError(
                    f"Output folder '{self.folder}' is in use by another run "
                    f"(pid {owner['pid']} on host '{owner['host']}', lock "
                    f"file '{self.path}'). Wait for it to finish or use "
                    f"another output folder; if no such run exists, delete "
                    f"the lock file.") from None
            with os.fdopen(fd, 'w') as f:
                f.write(me + '\n')
            _HELD[self.path] = 1
            return self
        raise RuntimeError(f"Could not lock '{self.folder}' (lock file "
                           f"'{self.path}' keeps changing)")

    def release(self) -> None:
        r"""Releases the lock (removes the file when the outermost holder
        releases it)."""
        count = _HELD.get(self.path, 0)
        if count > 1:
            _HELD[self.path] = count - 1
            return
        _HELD.pop(self.path, None)
        if count == 1:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> 'FolderLock':
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
