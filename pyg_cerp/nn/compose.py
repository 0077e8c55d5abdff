r"""The composition kernel of compositional embeddings: row :math:`k` of
:math:`N` is :math:`\mathbf{P}_{k \bmod b} \circ \mathbf{Q}_{\lfloor k/m
\rfloor}`, shared by :class:`~pyg_cerp.nn.CompositionalEmbedding`,
:class:`~pyg_cerp.nn.QREmbedding` and :class:`~pyg_cerp.nn.CompactEmbedding`."""
from typing import Callable, Union

import torch
from torch import Tensor

_OPS = {'add': Tensor.add_, 'mul': Tensor.mul_}


def check_operation(operation: str) -> str:
    r"""Returns :obj:`operation` if it is a composition of :func:`compose`
    (:obj:`'add'` or :obj:`'mul'`); raises a :class:`ValueError` naming it
    otherwise."""
    if operation not in _OPS:
        raise ValueError(f"'operation' must be 'add' or 'mul' "
                         f"(got {operation!r})")
    return operation


def _tile_(out: Tensor, p: Tensor, op: Callable) -> None:
    # out[k] op= p[k % b], with one broadcast op over the complete tiles.
    n, (b, d) = out.size(0), p.shape
    full = n // b * b
    op(out[:full].view(full // b, b, d), p.unsqueeze(0))
    op(out[full:], p[:n - full])


def _repeat_(out: Tensor, q: Tensor, m: int, op: Callable) -> None:
    # out[k] op= q[k // m].
    n, d = out.shape
    full = n // m
    op(out[:full * m].view(full, m, d), q[:full].unsqueeze(1))
    if n > full * m:
        op(out[full * m:], q[full])


def _tile_sum(grad: Tensor, b: int, pad: bool = False) -> Tensor:
    # The gradient of `_tile_`: out[i] = sum of grad[k] with k % b == i.
    n, d = grad.shape
    if pad and n % b:  # Over zero-padded complete tiles (another order).
        grad = torch.cat([grad, grad.new_zeros(b - n % b, d)])
        n = grad.size(0)
    full = n // b * b
    out = grad[:full].view(full // b, b, d).sum(0)
    out[:n - full] += grad[full:]
    return out


def _repeat_sum(grad: Tensor, m: int, num_rows: int) -> Tensor:
    # The gradient of `_repeat_`: out[j] = sum of grad[k] with k // m == j.
    n, d = grad.shape
    full = n // m
    out = grad.new_zeros(num_rows, d)
    out[:full] = grad[:full * m].view(full, m, d).sum(1)
    if n > full * m:
        out[full] = grad[full * m:].sum(0)
    return out


class _ComposeAll(torch.autograd.Function):
    # All rows: a broadcast copy and in-place op forward, strided sums
    # backward (2-3x faster than an `expand`/`reshape`/slice chain).
    @staticmethod
    def forward(ctx, P: Tensor, Q: Tensor, num_rows: int, rows_per_q: int,
                op: str, pad_grad: bool) -> Tensor:
        out = P.new_empty(num_rows, P.size(1))
        _tile_(out, P, Tensor.copy_)
        _repeat_(out, Q, rows_per_q, _OPS[op])
        ctx.rows_per_q, ctx.op, ctx.pad_grad = rows_per_q, op, pad_grad
        ctx.sizes = (P.size(0), Q.size(0))
        if op == 'mul':
            ctx.save_for_backward(P, Q)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        grad, m, (b, q) = grad.contiguous(), ctx.rows_per_q, ctx.sizes
        gp = gq = grad
        if ctx.op == 'mul':  # grad[k] * Q[k // m] and grad[k] * P[k % b].
            P, Q = ctx.saved_tensors
            gp, gq = grad.clone(), grad.clone()
            _repeat_(gp, Q, m, Tensor.mul_)
            _tile_(gq, P, Tensor.mul_)
        grad_p = _tile_sum(gp, b, ctx.pad_grad) if ctx.needs_input_grad[0] \
            else None
        grad_q = _repeat_sum(gq, m, q) if ctx.needs_input_grad[1] else None
        return grad_p, grad_q, None, None, None, None


def compose(P: Tensor, Q: Tensor, index: Union[Tensor, int], rows_per_q: int,
            op: str = 'add', pad_grad: bool = False) -> Tensor:
    r"""The compositional embeddings

    .. math::
        \mathbf{e}_k = \mathbf{P}_{k \bmod b} \circ
        \mathbf{Q}_{\lfloor k / m \rfloor},
        \qquad \circ \in \{+, \odot\},

    of the ids :obj:`index` (not checked), :math:`b` the rows of :obj:`P`,
    :math:`m` = :obj:`rows_per_q` (CERP: :math:`\lceil N/b \rceil`, the
    quotient-remainder trick: :math:`b`). For an integer :math:`N`, all rows
    as one autograd node without index tensors; otherwise two row gathers
    (whose :obj:`index_add_` backward is several times faster on CPU than the
    :obj:`index_put_` of advanced indexing).

    Args:
        P (torch.Tensor): The :math:`b \times d` table.
        Q (torch.Tensor): The table of at least :math:`\lceil N/m \rceil`
            rows.
        index (torch.Tensor or int): Ids of any shape, or :math:`N`.
        rows_per_q (int): :math:`m`.
        op (str, optional): :obj:`'add'` or :obj:`'mul'`.
            (default: :obj:`'add'`)
        pad_grad (bool, optional): For an integer :obj:`index`, sums the
            gradient of :obj:`P` over zero-padded tiles (the float summation
            order that :class:`~pyg_cerp.nn.QREmbedding` keeps, bit for bit).
            (default: :obj:`False`)

    Returns:
        A tensor of shape :obj:`[*index.shape, d]` (:obj:`[N, d]`).
    """
    if not isinstance(index, Tensor):
        return _ComposeAll.apply(P, Q, int(index), rows_per_q, op, pad_grad)
    flat = index.reshape(-1)
    p_rows = P.index_select(0, flat % P.size(0))
    q_rows = Q.index_select(0, flat // rows_per_q)
    out = p_rows.add_(q_rows) if op == 'add' else p_rows * q_rows
    return out.view(*index.shape, P.size(1))
