r"""LightGCN propagation over a *symmetric* sparse adjacency matrix.

The normalised LightGCN adjacency :math:`\mathbf{\hat{A}} = \mathbf{D}^{-1/2}
\mathbf{A} \mathbf{D}^{-1/2}` of an undirected graph is symmetric, so the
gradient :math:`\mathbf{\hat{A}}^{\top} \mathbf{G}` of :math:`\mathbf{\hat{A}}
\mathbf{X}` is :math:`\mathbf{\hat{A}} \mathbf{G}`: the backward pass can
re-use the forward matrix instead of transposing it on every call, as
:func:`torch.sparse.mm` does. :func:`use_symmetric_propagation` applies this
to an unmodified PyG :class:`~torch_geometric.nn.models.LightGCN` by swapping
its layers (the adjacency stays a plain CSR tensor):

.. code-block:: python

    model = use_symmetric_propagation(LightGCN(N, 64, 3, normalize=False))
    out = model.get_embedding(adj)  # adj: the pre-normalised CSR matrix
"""
import types
import weakref
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import Tensor
from torch_geometric.nn.conv import LGConv
from torch_geometric.nn.models import LightGCN
from torch_geometric.typing import Adj, OptTensor
from torch_geometric.utils import is_torch_sparse_tensor

__all__ = ['SymmetricSpMM', 'symmetric_spmm', 'is_symmetric',
           'check_symmetric', 'SymmetricLGConv', 'RowGatherTensor',
           'use_symmetric_propagation', 'symmetric_lightgcn_propagation']


def _cached(cache: Dict[int, Tuple[Any, Any, Any]], tensor: Tensor,
            make: Callable[[], Any], version: Any = None) -> Any:
    # A value derived from `tensor`, cached by `id()` while the tensor lives
    # (a weak reference: a recycled id is never mistaken for the tensor).
    key = id(tensor)
    entry = cache.get(key)
    if entry is not None and entry[0]() is tensor and entry[1] == version:
        return entry[2]
    value = make()
    ref = weakref.ref(tensor, lambda _, key=key: cache.pop(key, None))
    cache[key] = (ref, version, value)
    return value


# Matrices that passed `check_symmetric`, int32 copies of CSR matrices and
# layer weights read from CUDA tensors (see `_cached`).
_VALIDATED: Dict[int, Tuple[Any, Any, Any]] = {}
_INT32_CSR: Dict[int, Tuple[Any, Any, Any]] = {}
_COEFFICIENTS: Dict[int, Tuple[Any, Any, Any]] = {}


def _check_sparse_matrix(adj: Any, name: str = 'adj') -> None:
    if not isinstance(adj, Tensor) or not is_torch_sparse_tensor(adj):
        layout = (f" with layout '{adj.layout}'"
                  if isinstance(adj, Tensor) else '')
        raise TypeError(f"'{name}' must be a 'torch.sparse.Tensor' (CSR, CSC "
                        f"or COO layout), got '{type(adj).__name__}'{layout}")
    if adj.dim() != 2 or adj.dense_dim() != 0:
        raise ValueError(f"'{name}' must be a two-dimensional sparse matrix "
                         f"with scalar values (got shape {tuple(adj.size())} "
                         f"with {adj.dense_dim()} dense dimension(s))")
    if adj.size(0) != adj.size(1):
        raise ValueError(f"'{name}' must be a square matrix to be symmetric "
                         f"(got shape {tuple(adj.size())})")


def _check_operands(adj: Any, x: Tensor, caller: str, hint: str = '') -> None:
    _check_sparse_matrix(adj)
    if adj.requires_grad:
        raise ValueError(f"'{caller}' does not compute gradients with "
                         f"respect to the sparse matrix, but 'adj' requires "
                         f"gradients{hint}")
    if x.dim() != 2 or x.size(0) != adj.size(1):
        raise ValueError(f"Expected 'x' of shape ({adj.size(1)}, F) to match "
                         f"'adj' of shape {tuple(adj.size())} (got "
                         f"{tuple(x.size())})")


def _asymmetry(adj: Tensor, rtol: float, atol: float) -> Tuple[Tensor, float]:
    # |a_ij - a_ji| of all entries (a missing a_ji counts as 0) and the
    # tolerance atol + rtol * max |a_ij|.
    _check_sparse_matrix(adj)
    coo = adj.detach().to_sparse_coo().coalesce()
    if coo._nnz() == 0:
        return coo.values().new_zeros(0), atol
    diff = (coo - coo.t()).coalesce().values().abs()
    return diff, atol + rtol * float(coo.values().abs().max())


def is_symmetric(adj: Tensor, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
    r"""Whether the square sparse matrix :obj:`adj` (CSR, CSC or COO)
    satisfies :math:`\max |a_{ij} - a_{ji}| \le \mathrm{atol} + \mathrm{rtol}
    \max |a_{ij}|` (an :math:`a_{ij}` without :math:`a_{ji}` differs by
    :math:`|a_{ij}|`). It sorts the non-zeros (0.5 s for Gowalla's 1.6M):
    check once per matrix.

    Args:
        adj (torch.Tensor): The sparse matrix.
        rtol (float, optional): Relative tolerance. (default: :obj:`1e-5`)
        atol (float, optional): Absolute tolerance. (default: :obj:`1e-8`)
    """
    diff, tol = _asymmetry(adj, rtol, atol)
    return diff.numel() == 0 or float(diff.max()) <= tol


def check_symmetric(adj: Tensor, rtol: float = 1e-5,
                    atol: float = 1e-8) -> Tensor:
    r"""Returns :obj:`adj` if it is a square, symmetric sparse matrix (see
    :func:`is_symmetric` for the arguments), raises a :class:`TypeError` or
    :class:`ValueError` otherwise."""
    diff, tol = _asymmetry(adj, rtol, atol)
    if diff.numel() > 0 and float(diff.max()) > tol:
        raise ValueError(
            f"The sparse adjacency matrix of shape {tuple(adj.size())} is not "
            f"symmetric: {int((diff > tol).sum())} entries differ from their "
            f"transposed counterpart (max |a_ij - a_ji| = "
            f"{float(diff.max()):.3g}, tolerance {tol:.3g}). The symmetric "
            f"propagation computes 'A @ grad' instead of 'A.t() @ grad', "
            f"which is only correct for symmetric matrices. Symmetrise the "
            f"graph first (e.g. with 'torch_geometric.utils.to_undirected'), "
            f"or use the stock 'LGConv'.")
    return adj


def _check_symmetric_once(adj: Tensor, rtol: float, atol: float,
                          name: str = 'adj') -> None:
    # In-place changes after the first check are not re-validated.
    _check_sparse_matrix(adj, name)
    _cached(_VALIDATED, adj, lambda: check_symmetric(adj, rtol, atol) is adj)


def _kernel_matrix(adj: Tensor) -> Tensor:
    # MKL takes 32-bit indices; `torch.sparse.mm` converts int64 CSR indices
    # on every call (5 ms of an 80 ms Gowalla step), so once per matrix here.
    if (adj.layout != torch.sparse_csr or adj.device.type != 'cpu'
            or adj.crow_indices().dtype == torch.int32
            or adj._nnz() >= 2**31 - 1):
        return adj
    # `.detach()`: the copy must not keep the original (and its entry) alive.
    return _cached(_INT32_CSR, adj, lambda: torch.sparse_csr_tensor(
        adj.crow_indices().int(), adj.col_indices().int(),
        adj.values().detach(), adj.size()))


def _spmm(adj: Tensor, x: Tensor) -> Tensor:
    # `torch.sparse.mm` (MKL, cuSPARSE) measured fastest: 7.0-7.4 ms on
    # Gowalla (d = 64, two cores), 9.2 ms for `torch.sparse.mm(.., 'sum')`.
    return torch.sparse.mm(_kernel_matrix(adj), x)


def _spmm_add(adj: Tensor, x: Tensor, y: Tensor, beta: float = 1.,
              alpha: float = 1.) -> Tensor:
    # beta * y + alpha * adj @ x in one kernel.
    return torch.addmm(y, _kernel_matrix(adj), x, beta=beta, alpha=alpha)


class SymmetricSpMM(torch.autograd.Function):
    r""":math:`\mathbf{Y} = \mathbf{A} \mathbf{X}` for a symmetric sparse
    :math:`\mathbf{A}`, with the backward pass :math:`\mathbf{A}^{\top}
    \mathbf{G} = \mathbf{A} \mathbf{G}` (no gradient for :math:`\mathbf{A}`;
    symmetry is not checked here, see :func:`symmetric_spmm`)."""
    @staticmethod
    def forward(ctx: Any, adj: Tensor, x: Tensor) -> Tensor:
        ctx.adj = adj
        return _spmm(adj, x)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tuple[None, OptTensor]:
        grad_x = None
        if ctx.needs_input_grad[1]:
            grad_x = _spmm(ctx.adj, grad_out.contiguous())
        return None, grad_x


def symmetric_spmm(adj: Tensor, x: Tensor, check: bool = False,
                   rtol: float = 1e-5, atol: float = 1e-8) -> Tensor:
    r""":math:`\mathbf{A} \mathbf{X}` for a symmetric sparse :math:`\mathbf{A}`
    (see :class:`SymmetricSpMM`).

    Args:
        adj (torch.Tensor): :math:`\mathbf{A}`, :math:`N \times N`, sparse
            (CSR is several times faster than COO or CSC), without gradient.
        x (torch.Tensor): :math:`\mathbf{X}`, :math:`N \times F`.
        check (bool, optional): Validate the symmetry of :obj:`adj` once.
            (default: :obj:`False`)
        rtol (float, optional): See :func:`is_symmetric`. (default: 1e-5)
        atol (float, optional): See :func:`is_symmetric`. (default: 1e-8)
    """
    _check_operands(adj, x, 'symmetric_spmm',
                    hint="; use 'torch.sparse.mm' instead")
    if check:
        _check_symmetric_once(adj, rtol=rtol, atol=atol)
    return SymmetricSpMM.apply(adj, x)


class SymmetricLGConv(LGConv):
    r"""The :class:`~torch_geometric.nn.conv.LGConv` operator, whose
    products with a :class:`torch.sparse.Tensor` adjacency (without gradient,
    sum aggregation) go through :class:`SymmetricSpMM`; every other input
    takes :class:`LGConv`'s path. Outputs and gradients equal
    :class:`LGConv`'s.

    Args:
        normalize (bool, optional): Normalise the adjacency (:obj:`False` for
            a pre-normalised one). (default: :obj:`True`)
        check_symmetric (bool, optional): Validate each new sparse adjacency
            once (a :class:`ValueError` if it is not symmetric); switch off
            only for known symmetric matrices, gradients are silently wrong
            otherwise. (default: :obj:`True`)
        rtol (float, optional): See :func:`is_symmetric`. (default: 1e-5)
        atol (float, optional): See :func:`is_symmetric`. (default: 1e-8)
        **kwargs (optional): Arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.
    """
    def __init__(self, normalize: bool = True, check_symmetric: bool = True,
                 rtol: float = 1e-5, atol: float = 1e-8, **kwargs):
        super().__init__(normalize=normalize, **kwargs)
        self.check_symmetric = check_symmetric
        self.rtol = rtol
        self.atol = atol

    def _use_symmetric(self, adj: Any) -> bool:
        return (isinstance(adj, Tensor) and is_torch_sparse_tensor(adj)
                and not adj.requires_grad and self.aggr in ('add', 'sum'))

    def _validate(self, adj: Tensor) -> None:
        # The user's matrix, before any (symmetry-preserving) normalisation.
        if self.check_symmetric:
            _check_symmetric_once(adj, self.rtol, self.atol, 'edge_index')

    def forward(self, x: Tensor, edge_index: Adj,
                edge_weight: OptTensor = None) -> Tensor:
        if self._use_symmetric(edge_index):
            self._validate(edge_index)
        return super().forward(x, edge_index, edge_weight)

    def message_and_aggregate(self, adj_t: Adj, x: Tensor) -> Tensor:
        if self._use_symmetric(adj_t):
            return SymmetricSpMM.apply(adj_t, x)
        return super().message_and_aggregate(adj_t, x)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}()'


class RowGatherTensor(Tensor):
    r"""The node embeddings of a fused :meth:`LightGCN.get_embedding` (see
    :func:`use_symmetric_propagation`): a plain :class:`torch.Tensor`, except
    that :obj:`out[index]` with an integer tensor (as in
    :meth:`LightGCN.forward` and :meth:`recommend`) runs
    :func:`torch.index_select`, whose :obj:`index_add_` backward is 7x
    faster on CPU than the :obj:`index_put_` of advanced indexing. Ids must
    lie in :math:`[0, N)`."""
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is Tensor.__getitem__ and len(args) == 2:
            self, index = args
            if (isinstance(index, Tensor) and index.dim() >= 1
                    and index.dtype in (torch.long, torch.int)
                    and self.dim() == 2):
                with torch._C.DisableTorchFunctionSubclass():
                    out = torch.index_select(self, 0, index.reshape(-1))
                    return out.view(*index.shape, self.size(1))
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


def _fused_get_embedding(self: LightGCN, edge_index: Adj,
                         edge_weight: OptTensor = None) -> Tensor:
    # `LightGCN.get_embedding` as one autograd node for a pre-normalised
    # sparse adjacency; everything else goes through PyG's method.
    if not (edge_weight is None and isinstance(edge_index, Tensor)
            and is_torch_sparse_tensor(edge_index)
            and not edge_index.requires_grad
            and all(isinstance(conv, SymmetricLGConv) and not conv.normalize
                    and conv.aggr in ('add', 'sum') for conv in self.convs)):
        return LightGCN.get_embedding(self, edge_index, edge_weight)
    if len(self.convs) > 0:
        self.convs[0]._validate(edge_index)
    out = symmetric_lightgcn_propagation(edge_index, self.embedding.weight,
                                         self.alpha)
    return out.as_subclass(RowGatherTensor)


def use_symmetric_propagation(model: LightGCN, check_symmetric: bool = True,
                              rtol: float = 1e-5, atol: float = 1e-8,
                              fused: bool = True) -> LightGCN:
    r"""Makes PyG's :class:`~torch_geometric.nn.models.LightGCN` propagate at
    the speed of its sparse products, in place, and returns it:

    1. every :class:`~torch_geometric.nn.conv.LGConv` becomes an equivalent
       :class:`SymmetricLGConv` (parameter-free: optimizers stay valid);
    2. with :obj:`fused=True`, :meth:`get_embedding` of this instance computes
       :math:`\sum_{l=0}^{L} \alpha_l \mathbf{\hat{A}}^l \mathbf{X}` as one
       autograd node (:func:`symmetric_lightgcn_propagation`) for a sparse
       adjacency, :obj:`normalize=False` layers and no :obj:`edge_weight`,
       and returns a :class:`RowGatherTensor` (:obj:`del
       model.get_embedding` undoes it).

    The class, :meth:`forward`, :meth:`recommend` and the outputs and
    gradients (up to float rounding) stay PyG's.

    Args:
        model (torch_geometric.nn.models.LightGCN): The model.
        check_symmetric (bool, optional): Validate the symmetry of each new
            sparse adjacency once. (default: :obj:`True`)
        rtol (float, optional): See :func:`is_symmetric`. (default: 1e-5)
        atol (float, optional): See :func:`is_symmetric`. (default: 1e-8)
        fused (bool, optional): Step 2. (default: :obj:`True`)
    """
    if not isinstance(model, LightGCN):
        raise TypeError(f"'use_symmetric_propagation' expects a "
                        f"'torch_geometric.nn.models.LightGCN' (got "
                        f"'{type(model).__name__}')")
    for i, conv in enumerate(model.convs):
        if isinstance(conv, SymmetricLGConv):
            continue
        if not isinstance(conv, LGConv):
            raise TypeError(f"Expected 'model.convs[{i}]' to be an 'LGConv' "
                            f"(got '{type(conv).__name__}')")
        new_conv = SymmetricLGConv(
            normalize=conv.normalize, check_symmetric=check_symmetric,
            rtol=rtol, atol=atol, aggr=conv.aggr, flow=conv.flow,
            node_dim=conv.node_dim, decomposed_layers=conv.decomposed_layers)
        new_conv.train(conv.training)
        model.convs[i] = new_conv
    if fused:
        model.get_embedding = types.MethodType(_fused_get_embedding, model)
    elif 'get_embedding' in vars(model):
        del model.get_embedding
    return model


def _layer_coefficients(alpha: Tensor) -> List[float]:
    # The layer weights as floats. Reading a CUDA tensor synchronises, so
    # there a tensor without gradient (PyG's buffer) is read once per
    # in-place version (writes through `.data` bypass the counter).
    def read() -> List[float]:
        return [float(a) for a in alpha.detach().cpu()]

    if alpha.device.type == 'cpu' or alpha.requires_grad:
        return read()
    return _cached(_COEFFICIENTS, alpha, read, alpha._version)


def _horner(adj: Tensor, x: Tensor, coeffs: List[float]) -> Tensor:
    # sum_l c_l A^l X = c_0 X + A(c_1 X + A(... + A(c_{L-1} X + c_L A X))):
    # L fused product-and-add kernels.
    if len(coeffs) == 1:
        return x * coeffs[0]
    out = _spmm_add(adj, x, x, beta=coeffs[-2], alpha=coeffs[-1])
    for coeff in reversed(coeffs[:-2]):
        out = _spmm_add(adj, out, x, beta=coeff)
    return out


class _SymmetricLightGCNPropagation(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, adj: Tensor, x: Tensor, alpha: Tensor) -> Tensor:
        coeffs = _layer_coefficients(alpha)
        ctx.adj, ctx.coeffs = adj, coeffs
        if not ctx.needs_input_grad[2]:
            return _horner(adj, x, coeffs)
        xs = [x]  # A trainable alpha needs every layer for its gradient.
        out = x * coeffs[0]
        for coeff in coeffs[1:]:
            x = _spmm(adj, x)
            out.add_(x, alpha=coeff)
            xs.append(x)
        ctx.save_for_backward(*xs)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor):
        grad_out = grad_out.contiguous()
        grad_x = grad_alpha = None
        if ctx.needs_input_grad[1]:  # A is its own transpose.
            grad_x = _horner(ctx.adj, grad_out, ctx.coeffs)
        if ctx.needs_input_grad[2]:
            grad_alpha = torch.stack([(grad_out * x).sum()
                                      for x in ctx.saved_tensors])
        return None, grad_x, grad_alpha


def symmetric_lightgcn_propagation(adj: Tensor, x: Tensor, alpha: Tensor,
                                   check: bool = False, rtol: float = 1e-5,
                                   atol: float = 1e-8) -> Tensor:
    r"""The LightGCN propagation and layer combination as one autograd node,
    for a symmetric sparse :math:`\mathbf{A}`:

    .. math::
        \mathbf{X}^{\prime} = \sum_{l=0}^{L} \alpha_l \mathbf{A}^l \mathbf{X},
        \qquad
        \frac{\partial \mathcal{L}}{\partial \mathbf{X}} =
        \sum_{l=0}^{L} \alpha_l \mathbf{A}^l \mathbf{G}
        \quad \text{(Horner scheme, } L \text{ sparse products)}.

    It equals :meth:`LightGCN.get_embedding` with :obj:`x =
    model.embedding.weight`, :obj:`alpha = model.alpha`, without keeping the
    layers for the backward pass (unless :obj:`alpha` requires gradients).
    No second-order gradients.

    Args:
        adj (torch.Tensor): :math:`\mathbf{A}`, :math:`N \times N`, sparse
            (preferably CSR), without gradient.
        x (torch.Tensor): :math:`\mathbf{X}`, :math:`N \times F`.
        alpha (torch.Tensor): The :math:`L + 1` layer weights.
        check (bool, optional): As in :func:`symmetric_spmm`.
            (default: :obj:`False`)
        rtol (float, optional): See :func:`is_symmetric`. (default: 1e-5)
        atol (float, optional): See :func:`is_symmetric`. (default: 1e-8)
    """
    _check_operands(adj, x, 'symmetric_lightgcn_propagation')
    if alpha.dim() != 1 or alpha.numel() < 1:
        raise ValueError(f"Expected 'alpha' to be a non-empty vector of the "
                         f"L + 1 layer weights (got shape "
                         f"{tuple(alpha.size())})")
    if check:
        _check_symmetric_once(adj, rtol=rtol, atol=atol)
    return _SymmetricLightGCNPropagation.apply(adj, x, alpha)
