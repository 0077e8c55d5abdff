r"""Atomic, checksummed file I/O (checkpoints, compact embeddings, served
models) and a lock for output folders."""
import errno
import hashlib
import os
import pickle
import socket
import tempfile
import zipfile
from contextlib import contextmanager, suppress
from typing import Any, Dict, Iterator, Optional, Union

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None

import torch
from torch import Tensor
from torch.nn import Module

PathLike = Union[str, os.PathLike]

#: The :obj:`'format'` entry of a checksummed checkpoint file.
CHECKPOINT_FORMAT = 'pyg_cerp.checkpoint'
CHECKPOINT_VERSION = 1

#: What :func:`torch.load` raises on a truncated, corrupted or foreign file.
LOAD_ERRORS = (OSError, RuntimeError, pickle.UnpicklingError, EOFError,
               zipfile.BadZipFile, ValueError, KeyError, IndexError,
               TypeError, AttributeError, UnicodeDecodeError, OverflowError,
               MemoryError)

_RESUME_HINT = ("Delete it (or pass another output folder) and start again "
                "without resuming, or restore an intact copy.")


class FormatError(ValueError):
    r"""Raised when a file is truncated, corrupted (its content does not
    match its SHA-256 checksum), of another format or version, or fails
    validation. The message names the file."""


class CheckpointError(FormatError):
    r"""A :class:`FormatError` of a training checkpoint."""


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


def atomic_save(obj: Any, path: PathLike, checksum: bool = False,
                format: str = CHECKPOINT_FORMAT,
                version: int = CHECKPOINT_VERSION) -> None:
    r"""Saves :obj:`obj` with :func:`torch.save` atomically: it is written to a
    temporary file in the same folder, flushed to disk and renamed over
    :obj:`path`, so a crash never leaves a truncated file.

    Args:
        obj (Any): Plain tensors, numbers, strings and lists/dicts of these
            (loadable with :obj:`weights_only=True`).
        path (str or os.PathLike): The destination.
        checksum (bool, optional): Store
            :obj:`dict(format, version, sha256, content=obj)` with the
            SHA-256 of :obj:`obj` (:func:`content_digest`), verified by
            :func:`safe_load`: :func:`torch.load` does not detect a flipped
            byte inside tensor data. (default: :obj:`False`)
        format (str, optional): The file's format name (with
            :obj:`checksum`). (default: :obj:`'pyg_cerp.checkpoint'`)
        version (int, optional): The format version (with :obj:`checksum`).
            (default: :obj:`1`)
    """
    if checksum:
        obj = dict(format=format, version=version,
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


def safe_load(path: PathLike, map_location: Any = 'cpu',
              require_checksum: bool = False,
              format: str = CHECKPOINT_FORMAT,
              version: int = CHECKPOINT_VERSION) -> Any:
    r"""Loads a file written by :func:`atomic_save` with
    :obj:`weights_only=True` (no code is executed). A checksummed file must
    have :obj:`format` and :obj:`version`, is verified against its SHA-256
    and unwrapped.

    Args:
        path (str or os.PathLike): The file.
        map_location (optional): See :func:`torch.load`. (default: :obj:`'cpu'`)
        require_checksum (bool, optional): Refuse a file without a checksum.
            (default: :obj:`False`)
        format (str, optional): The expected format name.
            (default: :obj:`'pyg_cerp.checkpoint'`)
        version (int, optional): The readable version. (default: :obj:`1`)

    Raises:
        FileNotFoundError: If there is no file at :obj:`path`.
        FormatError: (:class:`CheckpointError` for checkpoints) If the file
            is truncated, corrupted, not a :func:`torch.save` file, holds
            objects that :obj:`weights_only=True` refuses, is of another
            format or version, or fails its checksum.
    """
    path = os.fspath(path)
    is_ckpt = format == CHECKPOINT_FORMAT
    error = CheckpointError if is_ckpt else FormatError
    kind = 'pyg_cerp checkpoint' if is_ckpt else format
    hint = _RESUME_HINT if is_ckpt else 'Save it again or restore a copy.'
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No {kind.split()[-1]} file at '{path}'")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise
    except LOAD_ERRORS as e:
        first = str(e).splitlines()[0] if str(e) else ''
        raise error(f"Cannot read '{path}': the file is truncated, corrupted "
                    f"or not a {kind} file ({type(e).__name__}: "
                    f"{first}). {hint}") from e
    if not (isinstance(obj, dict) and
            {'format', 'version', 'sha256', 'content'} <= set(obj)):
        if require_checksum:
            raise error(f"'{path}' is not a {kind} file: it has no "
                        f"checksum (it was not written by this version of "
                        f"pyg_cerp), so its content cannot be verified. "
                        f"{hint}")
        return obj
    if obj['format'] != format:
        raise error(f"'{path}' holds format {obj['format']!r}, expected "
                    f"{format!r}")
    found = obj['version']
    if found != version:
        newer = (' (written by a newer pyg_cerp: upgrade to read it)'
                 if isinstance(found, int) and found > version else '')
        raise error(f"'{path}' has {format} format version {found!r}, but "
                    f"this pyg_cerp reads version {version} only{newer}.")
    if content_digest(obj['content']) != obj['sha256']:
        raise error(f"'{path}' is corrupted: its content does not match the "
                    f"SHA-256 checksum stored with it. {hint}")
    return obj['content']


def save_module(module: Module, path: PathLike, version: int = 1) -> None:
    r"""Writes :obj:`module.state_dict()` atomically with a SHA-256
    (format :obj:`'pyg_cerp.<class name>'`); read it with
    :func:`load_module`."""
    atomic_save(dict(module.state_dict()), path, checksum=True,
                format=f'pyg_cerp.{type(module).__name__}', version=version)


def load_module(module: Module, path: PathLike, version: int = 1) -> Module:
    r"""Loads a file of :func:`save_module` into :obj:`module` (of the same
    class) with :obj:`weights_only=True` and returns it.

    Raises:
        FileNotFoundError: If the file does not exist.
        FormatError: If it is unreadable, corrupted, of another class or
            version, or does not fit :obj:`module`.
    """
    state = safe_load(path, require_checksum=True, version=version,
                      format=f'pyg_cerp.{type(module).__name__}')
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError) as e:
        raise FormatError(f"Cannot load '{os.fspath(path)}' into "
                          f"{type(module).__name__}: {e}") from e
    return module


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
        pass
    return True


@contextmanager
def file_lock(path: PathLike) -> Iterator[None]:
    r"""Holds an exclusive advisory lock on :obj:`path` (created if missing)
    for the duration of the block (:func:`fcntl.flock`): other processes
    taking it wait, so that work done under it (*e.g.*, building a dataset's
    processed cache) happens once and is never read half-written. Released
    when the block ends or the process dies. Not re-entrant; without
    :mod:`fcntl` (Windows) it does nothing.

    Args:
        path (str or os.PathLike): The lock file.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


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
                    with suppress(FileNotFoundError):  # stale: process gone
                        os.remove(self.path)
                    continue
                raise RuntimeError(
                    f"Output folder '{self.folder}' is in use by another run "
                    f"(pid {owner['pid']} on host '{owner['host']}', lock "
                    f"file '{self.path}'). Wait for it to finish or use "
                    f"another output folder; if no such run exists, delete "
                    f"the lock file.") from None
            with os.fdopen(fd, 'w') as f:
                f.write(f'{socket.gethostname()} {os.getpid()}\n')
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
            with suppress(FileNotFoundError):
                os.remove(self.path)

    def __enter__(self) -> 'FolderLock':
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
