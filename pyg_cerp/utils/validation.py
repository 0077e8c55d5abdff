r"""Argument checks, for the boundaries where users pass values in:
constructors, the sampler, the metrics and the training configuration."""
import math
import numbers
import operator
from typing import Any, List, Optional, Sequence, Union

import torch
from torch import Tensor

#: The id dtypes that index correctly (:obj:`torch.uint8` ids would be taken
#: as a boolean mask, :obj:`torch.int16` ids fail deep inside PyTorch).
INDEX_DTYPES = (torch.int64, torch.int32)


def check_index_dtype(index: Tensor, name: str = 'index') -> None:
    r"""Raises a :class:`TypeError` unless :obj:`index` is a
    :obj:`torch.long` or :obj:`torch.int` tensor (no device sync);
    :obj:`name` is the argument's name in errors."""
    if not isinstance(index, Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor "
                        f"(got {type(index).__name__})")
    if index.dtype not in INDEX_DTYPES:
        hint = (' (uint8 and bool tensors would be used as a boolean mask)'
                if index.dtype in (torch.uint8, torch.bool) else '')
        raise TypeError(f"'{name}' must hold integer ids of dtype torch.long "
                        f"or torch.int (got dtype {index.dtype}){hint}; cast "
                        f"with '.long()' if intended")


def check_index(index: Tensor, num_embeddings: int,
                name: str = 'index') -> None:
    r"""Raises unless :obj:`index` holds integer ids in
    :math:`[0, \textrm{num\_embeddings})` (:obj:`name` is the argument's
    name in errors).  On CPU a bad id raises an :class:`IndexError` at
    once; on an accelerator the check is an asynchronous device assertion
    (:func:`torch._assert_async`, no sync per call) that fails the next
    synchronising call instead of silently hashing to a valid row."""
    check_index_dtype(index, name)
    if index.numel() == 0:
        return
    if index.device.type != 'cpu':
        torch._assert_async(
            (index.min() >= 0) & (index.max() < num_embeddings),
            f"'{name}' holds an id outside [0, {num_embeddings})")
        return
    lo, hi = int(index.min()), int(index.max())
    if lo < 0:
        raise IndexError(f"'{name}' holds a negative id ({lo}); ids must be "
                         f"in [0, {num_embeddings})")
    if hi >= num_embeddings:
        raise IndexError(f"'{name}' holds id {hi}, out of range for "
                         f"{num_embeddings} embeddings (ids must be in "
                         f"[0, {num_embeddings}))")


def check_edge_ids(edge_index: Tensor, num_users: int, num_items: int,
                   name: str = 'edge_index') -> None:
    r"""Raises unless :obj:`edge_index` is a :obj:`[2, E]` integer tensor of
    (user, item) pairs in :math:`[0, \textrm{num\_users}) \times
    [0, \textrm{num\_items})` (:obj:`name` is its name in errors)."""
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor "
                        f"(got {type(edge_index).__name__})")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"'{name}' must have shape [2, num_edges] "
                         f"(got {list(edge_index.size())})")
    if edge_index.dtype.is_floating_point or edge_index.dtype.is_complex or \
            edge_index.dtype == torch.bool:
        raise TypeError(f"'{name}' must hold integer ids (got dtype "
                        f"{edge_index.dtype}); float ids would be truncated")
    if edge_index.numel() == 0:
        return
    if int(edge_index.min()) < 0:
        raise ValueError(f"'{name}' has a negative id "
                         f"{int(edge_index.min())}")
    for row, kind, num in ((0, 'user', num_users), (1, 'item', num_items)):
        top = int(edge_index[row].max())
        if top >= num:
            raise ValueError(f"'{name}' has {kind} id {top} >= num_{kind}s "
                             f"({num}), outside [0, {num})")


def check_int(name: str, value: Any, minimum: Optional[int] = 1) -> None:
    r"""Raises unless the argument :obj:`name`'s :obj:`value` is an
    :obj:`int` (not a :obj:`bool`) of at least :obj:`minimum` (:obj:`None`:
    no bound)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"'{name}' must be an int (got "
                        f"{type(value).__name__} {value!r})")
    if minimum is not None and value < minimum:
        what = 'positive, i.e. at least 1' if minimum == 1 else \
            f'at least {minimum}'
        raise ValueError(f"'{name}' must be {what} (got {value})")


def check_float(name: str, value: Any, low: Optional[float] = None,
                high: Optional[float] = None, low_open: bool = False,
                high_open: bool = False) -> None:
    r"""Raises unless the argument :obj:`name`'s :obj:`value` is a finite
    real number from :obj:`low` to :obj:`high` (:obj:`None`: unbounded;
    each bound inclusive unless :obj:`low_open` / :obj:`high_open`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"'{name}' must be a number (got "
                        f"{type(value).__name__} {value!r})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"'{name}' must be a finite number (got {value})")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else
                                     value > high)
    if too_low or too_high:
        lo = '(-inf' if low is None else \
            ('(' if low_open else '[') + f'{low:g}'
        hi = 'inf)' if high is None else \
            f'{high:g}' + (')' if high_open else ']')
        raise ValueError(f"'{name}' must be in {lo}, {hi} (got {value:g})")


def check_ks(ks: Union[int, Sequence[int]]) -> List[int]:
    r"""Returns the sorted, unique cut-offs :obj:`ks` (one or several) of a
    top-:math:`k` metric; raises unless they are positive integers
    (:obj:`2.5` is an error, not :obj:`2`)."""
    if isinstance(ks, (int, float)) or (isinstance(ks, Tensor)
                                        and ks.dim() == 0):
        ks = (ks, )
    out = []
    for k in ks:
        try:
            if isinstance(k, bool):
                raise TypeError
            out.append(operator.index(k))
        except TypeError:
            raise TypeError(f"'ks' must be positive integers (got "
                            f"{type(k).__name__} {k!r} in {list(ks)})") \
                from None
    out = sorted(set(out))
    if len(out) == 0 or out[0] <= 0:
        raise ValueError(f"'ks' must be positive integers (got {out})")
    return out


def check_finite_loss(value: Any, where: str) -> None:
    r"""Raises a :class:`FloatingPointError` if a training loss
    :obj:`value` is :obj:`nan` or :obj:`inf` (the model diverged in
    :obj:`where`, *e.g.* a stage and epoch).  A tensor costs one device
    sync: call it once per epoch, not per step."""
    value = float(value)
    if not math.isfinite(value):
        raise FloatingPointError(
            f"Training diverged in {where}: the loss is {value}. Every "
            f"later result would be meaningless; lower the learning rates "
            f"('lr', 'threshold_lr') or 'gamma_init', and check the inputs "
            f"for nan/inf.")
