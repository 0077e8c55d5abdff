r"""Input checks shared by the embedding modules."""
import torch
from torch import Tensor


def check_index(index: Tensor, num_embeddings: int, name: str = 'index') -> None:
    r"""Raises a clear error unless :obj:`index` holds integer ids in
    :math:`[0, N)`.

    Args:
        index (torch.Tensor): The ids to check.
        num_embeddings (int): The number of entities :math:`N`.
        name (str, optional): The argument name used in error messages.
            (default: :obj:`'index'`)
    """
    if not isinstance(index, Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor "
                        f"(got {type(index).__name__})")
    if index.dtype.is_floating_point or index.dtype.is_complex or \
            index.dtype == torch.bool:
        raise TypeError(f"'{name}' must hold integer ids (got dtype "
                        f"{index.dtype}); cast with '.long()' if intended")
    if index.numel() == 0:
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
        minimum (int, optional): The smallest allowed value.
            (default: :obj:`1`)
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"'{name}' must be an int (got "
                        f"{type(value).__name__} {value!r})")
    if value < minimum:
        raise ValueError(f"'{name}' must be at least {minimum} (got {value})")


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
