r"""The value precisions of the stored form, as one quantiser: what
:class:`~pyg_cerp.nn.compact.CompressedTable` stores and what training
simulates (*fake quantisation*), so that a model trained at a precision
scores what its export scores.

:obj:`'float16'` rounds to the nearest half-precision value;
:obj:`'int8'` stores, per row :math:`r` (the last dimension), one symmetric
absmax scale and integers

.. math::
    s_r = \max_j |v_{rj}| / 127, \qquad
    q_{rj} = \mathrm{clamp}(\mathrm{round}(v_{rj} / s_r), -127, 127),
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

from pyg_cerp.memory import DTYPES, dtype_name

__all__ = ['PRECISIONS', 'check_precision', 'int8_scale', 'quantize',
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


def int8_scale(value: Tensor) -> Tensor:
    r"""The per-row absmax scales :math:`s_r = \max_j |v_{rj}| / 127` over
    the last dimension (zero for an all-zero row)."""
    return value.abs().amax(-1) / 127.


def quantize(dense: Tensor, precision: Union[str, torch.dtype],
             mask: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
    r"""The stored values of the entries :obj:`dense[mask]` (row-major) in
    :obj:`precision`, and for :obj:`'int8'` the :obj:`float32` per-row scales
    :math:`s` of all rows (else :obj:`None`); the stored form of
    :class:`~pyg_cerp.nn.compact.CompressedTable`.

    Args:
        dense (torch.Tensor): The 2-D :obj:`float32` table.
        precision (str or torch.dtype): :obj:`float32`, :obj:`float16` or
            :obj:`int8`.
        mask (torch.Tensor, optional): The boolean entries to store
            (:obj:`None`: the non-zeros). Every row holding a stored entry
            must hold a non-zero. (default: :obj:`None`)
    """
    name = check_precision(precision)
    mask = dense != 0 if mask is None else mask
    values = dense[mask]
    if name != 'int8':
        return values.to(DTYPES[name]), None
    scale = int8_scale(dense)
    values = (values / scale.unsqueeze(1).expand_as(dense)[mask]).round()
    return values.clamp(-127, 127).to(torch.int8), scale


def _fake_quantize(value: Tensor, name: str) -> Tensor:
    if name == 'float16':
        return value.to(torch.float16).to(value.dtype)
    scale = int8_scale(value).unsqueeze(-1)
    # All-zero rows: 0 / 1 * 0 = 0 instead of 0 / 0.
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (value / safe).round().clamp(-127, 127).mul(scale)


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
    storing it in :obj:`precision` (int8: per row of the last dimension), with
    the straight-through gradient; :obj:`value` itself for :obj:`'float32'`.
    For a :obj:`float32` table it equals, bit for bit, the
    :meth:`~pyg_cerp.nn.compact.CompressedTable.to_dense` of its
    :meth:`~pyg_cerp.nn.compact.CompressedTable.from_dense` export.

    Args:
        value (torch.Tensor): The values, of any shape (rows along the last
            dimension).
        precision (str or torch.dtype): :obj:`float32`, :obj:`float16` or
            :obj:`int8`.
    """
    name = check_precision(precision)
    if name == 'float32':
        return value
    return _FakeQuantize.apply(value, name)
