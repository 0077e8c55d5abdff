import math

import pytest
import torch

from pyg_cerp.utils.validation import (check_edge_ids, check_finite_loss,
                                       check_float, check_index,
                                       check_index_dtype, check_int)


@pytest.mark.parametrize('dtype', [torch.uint8, torch.int16, torch.int8,
                                   torch.bool, torch.float32])
def test_index_dtype_rejected(dtype):
    with pytest.raises(TypeError, match="'ids' must hold integer ids of "
                       "dtype torch.long or torch.int"):
        check_index_dtype(torch.zeros(3, dtype=dtype), 'ids')
    with pytest.raises(TypeError):
        check_index(torch.zeros(3, dtype=dtype), 10)


def test_index_dtype_accepted():
    for dtype in (torch.int64, torch.int32):
        check_index(torch.arange(3, dtype=dtype), 3)


@pytest.mark.parametrize('value', [math.nan, math.inf, -math.inf])
def test_check_float_non_finite(value):
    with pytest.raises(ValueError, match="'lr' must be a finite number"):
        check_float('lr', value, 0.)


def test_check_float_range_and_type():
    check_float('x', 0.5, 0., 1., low_open=True, high_open=True)
    with pytest.raises(ValueError, match=r"'t' must be in \(0, 1\) "):
        check_float('t', 1.0, 0., 1., low_open=True, high_open=True)
    with pytest.raises(ValueError, match=r"'g' must be in \[0, inf\)"):
        check_float('g', -1., 0.)
    with pytest.raises(TypeError, match="'g' must be a number"):
        check_float('g', '1')


def test_check_int():
    check_int('n', 3)
    with pytest.raises(TypeError, match="'n' must be an int"):
        check_int('n', 2.0)
    with pytest.raises(ValueError, match="'n' must be positive"):
        check_int('n', 0)
    check_int('seed', -5, minimum=None)


def test_check_finite_loss():
    check_finite_loss(torch.tensor(0.5), 'x')
    with pytest.raises(FloatingPointError, match="diverged in stage 'p'.*"
                       "loss is nan"):
        check_finite_loss(torch.tensor(float('nan')), "stage 'p'")


def test_edge_ids_float_rejected():
    with pytest.raises(TypeError, match='float ids would be truncated'):
        check_edge_ids(torch.tensor([[0.5], [1.0]]), 2, 2)
