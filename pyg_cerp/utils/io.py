r"""Atomic checkpoint I/O."""
import os
import tempfile
from typing import Any, Union

import torch

PathLike = Union[str, os.PathLike]


def atomic_save(obj: Any, path: PathLike) -> None:
    r"""Saves :obj:`obj` with :func:`torch.save` atomically: it is written to a
    temporary file in the same folder, flushed to disk and renamed over
    :obj:`path`, so a crash never leaves a truncated file and an existing file
    is only replaced by a complete one.

    Args:
        obj (Any): What to save (plain tensors, numbers, strings, lists and
            dicts of these, so that :func:`load` works with
            :obj:`weights_only=True`).
        path (str or os.PathLike): The destination.
    """
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


def safe_load(path: PathLike, map_location: Any = 'cpu') -> Any:
    r"""Loads a file written by :func:`atomic_save` with
    :obj:`weights_only=True` (no arbitrary code is executed).

    Args:
        path (str or os.PathLike): The file.
        map_location (optional): See :func:`torch.load`. (default: :obj:`'cpu'`)
    """
    return torch.load(path, map_location=map_location, weights_only=True)
