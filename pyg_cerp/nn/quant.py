r"""The value precisions of the stored form, as one quantiser: what
:class:`~pyg_cerp.nn.compact.CompressedTable` stores and what training
simulates (*fake quantisation*), so that a model trained at a precision
scores what its export scores.

:obj:`'float16'` rounds to the nearest half-precision value; the integer
precisions :obj:`'int8'` and :obj:`'int4'` (:math:`L` = 127 and 7,
:data:`pyg_cerp.memory.INT_LEVELS`) store, per row :math:`r` (the last
dimension), one symmetric absmax scale and integers

.. math::
    s_r = \max_j |v_{rj}| / L, \qquad
    q_{rj} = \mathrm{clamp}(\mathrm{round}(v_{rj} / s_r), -L, L),
    \qquad \tilde{v}_{rj} = q_{rj} s_r,

off by at most :math:`s_r / 2`; :obj:`'float32'` is the identity. Fake
quantisation returns :math:`\tilde{v}` in :obj:`float32` with the
straight-through gradient :math:`\partial \tilde{v} / \partial v = 1`.
Per-row scales make the quantiser row-local: quantising gathered rows equals
gathering quantised rows, bit for bit.
"""
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from pyg_cerp.memory import DTYPES, INT_LEVELS, dtype_name

__all__ = ['PRECISIONS', 'check_precision', 'row_scale', 'quantize',
           'fake_quantize']

#: The value precisions, from the widest.
PRECISIONS = tuple(DTYPES)


def check_precision(precision: Union[str, torch.dtype],
                    name: str = 'precision') -> str:
    r"""The name in :obj:`PRECISIONS` of :obj:`precision` (a name or a
    :class:`torch.dtype`), or a :class:`ValueError` naming the argument
    :obj:`name`."""
    try:
        return dtype_name(precision)
    except ValueError:
        raise ValueError(f"'{name}' must be one of {list(PRECISIONS)} or the "
                         f"matching torch.dtype (got {precision!r})") from None


def row_scale(value: Tensor, precision: str = 'int8') -> Tensor:
    r"""The per-row absmax scales :math:`s_r = \max_j |v_{rj}| / L` over
    the last dimension (zero for an all-zero row) of an integer
    :obj:`precision` (:obj:`'int8'`: :math:`L = 127`, :obj:`'int4'`:
    :math:`L = 7`)."""
    return value.abs().amax(-1) / float(INT_LEVELS[precision])


def quantize(dense: Tensor, precision: Union[str, torch.dtype],
             mask: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
    r"""The stored values of the entries :obj:`dense[mask]` (row-major) in
    :obj:`precision`, and for the integer precisions the :obj:`float32`
    per-row scales :math:`s` of all rows (else :obj:`None`); the values of
    :class:`~pyg_cerp.nn.compact.CompressedTable`, which packs the
    :obj:`int4` levels (returned as :obj:`torch.int8` in :math:`[-7, 7]`)
    two a byte.

    Args:
        dense (torch.Tensor): The 2-D :obj:`float32` table.
        precision (str or torch.dtype): :obj:`float32`, :obj:`float16`,
            :obj:`int8` or :obj:`int4`.
        mask (torch.Tensor, optional): The boolean entries to store
            (:obj:`None`: the non-zeros). Every row holding a stored entry
            must hold a non-zero. (default: :obj:`None`)
    """
    name = check_precision(precision)
    mask = dense != 0 if mask is None else mask
    values = dense[mask]
    if name not in INT_LEVELS:
        return values.to(DTYPES[name]), None
    level, scale = INT_LEVELS[name], row_scale(dense, name)
    values = (values / scale.unsqueeze(1).expand_as(dense)[mask]).round()
    return values.clamp(-level, level).to(torch.int8), scale


def _fake_quantize(value: Tensor, name: str) -> Tensor:
    if name == 'float16':
        return value.to(torch.float16).to(value.dtype)
    level, scale = INT_LEVELS[name], row_scale(value, name).unsqueeze(-1)
    # All-zero rows: 0 / 1 * 0 = 0 instead of 0 / 0.
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (value / safe).round().clamp(-level, level).mul(scale)


class _FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value: Tensor, name: str) -> Tensor:
        return _fake_quantize(value, name)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        return grad, None


def fake_quantize(value: Tensor,
                  precision: Union[str, torch.dtype]) -> Tensor:
    r"""The values :math:`\tilde{v}` that :obj:`value` decodes to after
    storing it in :obj:`precision` (int8, int4: per row of the last
    dimension), with
    the straight-through gradient; :obj:`value` itself for :obj:`'float32'`.
    For a :obj:`float32` table it equals, bit for bit, the
    :meth:`~pyg_cerp.nn.compact.CompressedTable.to_dense` of its
    :meth:`~pyg_cerp.nn.compact.CompressedTable.from_dense` export.

    Args:
        value (torch.Tensor): The values, of any shape (rows along the last
            dimension).
        precision (str or torch.dtype): :obj:`float32`, :obj:`float16`,
            :obj:`int8` or :obj:`int4`.
    """
    name = check_precision(precision)
    if name == 'float32':
        return value
    return _FakeQuantize.apply(value, name)
