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
