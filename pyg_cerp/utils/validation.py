r"""Input checks shared by the embedding modules, the sampler, the metrics
and the training configuration."""
import math
import numbers
from typing import Any, Optional

import torch
from torch import Tensor

#: The id dtypes that index tensors correctly (:obj:`torch.uint8` ids would
#: be taken as a boolean mask, :obj:`torch.int16` / :obj:`torch.int8` ids
#: fail deep inside PyTorch).
INDEX_DTYPES = (torch.int64, torch.int32)


def check_index_dtype(index: Tensor, name: str = 'index') -> None:
    r"""Raises a clear :class:`TypeError` unless :obj:`index` is a tensor of
    dtype :obj:`torch.long` or :obj:`torch.int` (no device synchronisation).

    Args:
        index (torch.Tensor): The ids to check.
        name (str, optional): The argument name used in error messages.
            (default: :obj:`'index'`)
    """
    if not isinstance(index, Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor "
                        f"(got {type(index).__name__})")
    if index.dtype not in INDEX_DTYPES:
        hint = (' (uint8 and bool tensors would be used as a boolean mask)'
                if index.dtype in (torch.uint8, torch.bool) else '')
        raise TypeError(f"'{name}' must hold integer ids of dtype torch.long "
                        f"or torch.int (got dtype {index.dtype}){hint}; cast "
                        f"with '.long()' if intended")


def check_index(index: Tensor, num_embeddings: int, name: str = 'index') -> None:
    r"""Raises a clear error unless :obj:`index` holds integer ids in
    :math:`[0, N)`.

    On CPU the range is read at once (an :class:`IndexError` naming the bad
    id). On an accelerator, reading it would synchronise the device on every
    call, so the check is an asynchronous device assertion
    (:func:`torch._assert_async`): a bad id fails the next synchronising
    call with a device-side assertion instead of silently hashing to a valid
    row.

    Args:
        index (torch.Tensor): The ids to check.
        num_embeddings (int): The number of entities :math:`N`.
        name (str, optional): The argument name used in error messages.
            (default: :obj:`'index'`)
    """
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


def check_int(name: str, value, minimum: int = 1) -> None:
    r"""Raises a clear error unless :obj:`value` is an :obj:`int` (not a
    :obj:`bool`) of at least :obj:`minimum`.

    Args:
        name (str): The argument name used in error messages.
        value (Any): The value to check.
        minimum (int, optional): The smallest allowed value (:obj:`None`:
            no bound). (default: :obj:`1`)
    """
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
    r"""Raises a clear error unless :obj:`value` is a finite real number
    (not :obj:`nan` or :obj:`inf`) in the given range.

    Args:
        name (str): The argument name used in error messages.
        value (Any): The value to check.
        low (float, optional): The lower bound. (default: :obj:`None`)
        high (float, optional): The upper bound. (default: :obj:`None`)
        low_open (bool, optional): Exclude :obj:`low` itself.
            (default: :obj:`False`)
        high_open (bool, optional): Exclude :obj:`high` itself.
            (default: :obj:`False`)
    """
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
        lo = '(-inf' if low is None else ('(' if low_open else '[') + f'{low:g}'
        hi = 'inf)' if high is None else f'{high:g}' + (')' if high_open else
                                                        ']')
        raise ValueError(f"'{name}' must be in {lo}, {hi} (got {value:g})")


def check_finite_loss(value: Any, where: str) -> None:
    r"""Raises a :class:`FloatingPointError` if a (summed or mean) training
    loss is :obj:`nan` or :obj:`inf`: the model diverged and every later
    number would be meaningless.

    Args:
        value (float or torch.Tensor): The loss (one device synchronisation if
            a tensor; call it once per epoch, not per step).
        where (str): What was trained, for the message (*e.g.*, the stage and
            epoch).
    """
    value = float(value)
    if not math.isfinite(value):
        raise FloatingPointError(
            f"Training diverged in {where}: the loss is {value}. Every "
            f"later result would be meaningless; lower the learning rates "
            f"('lr', 'threshold_lr') or 'gamma_init', and check the inputs "
            f"for nan/inf.")


def check_edge_ids(edge_index: Tensor, num_users: int, num_items: int,
                   name: str = 'edge_index') -> None:
    r"""Raises a clear :class:`ValueError` unless the (user, item) pairs in
    :obj:`edge_index` (shape :obj:`[2, E]`) have user ids in
    :math:`[0, N_U)` and item ids in :math:`[0, N_I)`.

    Args:
        edge_index (torch.Tensor): The pairs.
        num_users (int): :math:`N_U`.
        num_items (int): :math:`N_I`.
        name (str, optional): The argument name used in error messages.
            (default: :obj:`'edge_index'`)
    """
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor "
                        f"(got {type(edge_index).__name__})")
    if edge_index.dtype.is_floating_point or edge_index.dtype.is_complex or \
            edge_index.dtype == torch.bool:
        raise TypeError(f"'{name}' must hold integer ids (got dtype "
                        f"{edge_index.dtype}); float ids would be truncated")
    if edge_index.numel() == 0:
        return
    if int(edge_index.min()) < 0:
        raise ValueError(f"'{name}' has a negative id "
                         f"{int(edge_index.min())}")
    if int(edge_index[0].max()) >= num_users:
        raise ValueError(f"'{name}' has user id "
                         f"{int(edge_index[0].max())} >= num_users "
                         f"({num_users})")
    if int(edge_index[1].max()) >= num_items:
        raise ValueError(f"'{name}' has item id "
                         f"{int(edge_index[1].max())} >= num_items "
                         f"({num_items})")
