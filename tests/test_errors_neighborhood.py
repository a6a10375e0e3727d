"""Errors of the neighborhood checks (glocal/checks/neighborhood.py): the rules of DESIGN.md §1, grid tensors, extra keys/values.

One test per message: the exception type, the values and the fix."""

from __future__ import annotations

import torch
from conftest import raises
from conftest import zeros as t

import glocal

Q2 = t(1, 6, 6, 2, 4)


def test_kernel_size_below_one():
    with raises(ValueError, "kernel_size must be >= 1", "kernel_size=(3, 0)", "axis 1: 0", "at least 1"):
        glocal.na2d(Q2, Q2, Q2, kernel_size=(3, 0))


def test_dilation_below_one():
    with raises(ValueError, "dilation must be >= 1", "dilation=(0, 1)", "axis 0: 0", "dilation=1"):
        glocal.na2d(Q2, Q2, Q2, kernel_size=3, dilation=(0, 1))


def test_stride_below_one():
    with raises(ValueError, "stride must be >= 1", "stride=(1, 0)", "axis 1: 0", "stride=1"):
        glocal.na2d(Q2, Q2, Q2, kernel_size=3, stride=(1, 0))


def test_stride_above_kernel_size():
    with raises(ValueError, "stride must not exceed kernel_size", "stride=(4, 1)", "kernel_size=(3, 3)",
                "s=4 > K=3", "at most 3"):
        glocal.na2d(Q2, Q2, Q2, kernel_size=3, stride=(4, 1))


def test_kernel_times_dilation_above_length():
    with raises(ValueError, "kernel_size * dilation must not exceed the input length", "dilation=(1, 3)",
                "spatial shape=(6, 6)", "3 * 3 = 9 > 6", "kernel_size <= 2 at dilation 3"):
        glocal.na2d(Q2, Q2, Q2, kernel_size=3, dilation=(1, 3))


def test_kernel_above_length():
    q = t(1, 5, 2, 4)
    with raises(ValueError, "kernel_size=(7,)", "7 * 1 = 7 > 5", "kernel_size <= 5"):
        glocal.na1d(q, q, q, kernel_size=7)


def test_wrong_rank_any_dimension():
    q = t(6, 2, 4)
    with raises(ValueError, "1 to 3 spatial axes", "q.dim()=3", "(6, 2, 4)", "heads-last"):
        glocal.neighborhood_attention(q, q, q, kernel_size=3)


def test_wrong_rank_named_dimension():
    q = t(1, 6, 2, 4)
    with raises(ValueError, "2-D neighborhood attention takes q", "(5-D)", "q.dim()=4", "[B, X, Y, H, D]"):
        glocal.na2d(q, q, q, kernel_size=3)


def test_wrong_rank_of_v():
    with raises(ValueError, "takes v of shape", "v.dim()=4", "Reshape to heads-last"):
        glocal.na2d(Q2, Q2, t(1, 6, 2, 4), kernel_size=3)


def test_mismatched_spatial_sizes():
    with raises(ValueError, "same spatial shape", "q=(6, 6), k=(6, 5), v=(6, 6)"):
        glocal.na2d(Q2, t(1, 6, 5, 2, 4), Q2, kernel_size=3)


def test_additional_keys_without_values():
    with raises(ValueError, "given together", "got only additional_keys", "Pass both"):
        glocal.na2d(Q2, Q2, Q2, kernel_size=3, additional_keys=t(1, 2, 2, 4))


def test_additional_values_without_keys():
    with raises(ValueError, "given together", "got only additional_values"):
        glocal.na2d(Q2, Q2, Q2, kernel_size=3, additional_values=t(1, 2, 2, 4))


def test_additional_keys_wrong_shape():
    with raises(ValueError, "additional_keys must have shape [B, S, H_kv, D_qk] = [1, 2, 2, 4]",
                "additional_keys.shape=(1, 2, 1, 4)", "k's batch, heads and head dim"):
        glocal.na2d(Q2, Q2, Q2, kernel_size=3, additional_keys=t(1, 2, 1, 4), additional_values=t(1, 2, 2, 4))


def test_additional_keys_wrong_rank():
    with raises(ValueError, "additional_keys must have shape", "additional_keys.shape=(2, 2, 4)"):
        glocal.na2d(Q2, Q2, Q2, kernel_size=3, additional_keys=t(2, 2, 4), additional_values=t(1, 2, 2, 4))


def test_additional_values_wrong_shape():
    v = t(1, 6, 6, 2, 3)  # D_v = 3
    with raises(ValueError, "additional_values must have shape [B, S, H_kv, D_v] = [1, 2, 2, 3]",
                "additional_values.shape=(1, 3, 2, 3)", "v's batch, heads and head dim"):
        glocal.na2d(Q2, Q2, v, kernel_size=3, additional_keys=t(1, 2, 2, 4), additional_values=t(1, 3, 2, 3))


def test_additional_keys_wrong_dtype():
    with raises(TypeError, "q.dtype=torch.float32", "additional_keys.dtype=torch.float16"):
        glocal.na2d(Q2, Q2, Q2, kernel_size=3, additional_keys=t(1, 2, 2, 4, dtype=torch.float16),
                    additional_values=t(1, 2, 2, 4))


def test_additional_values_integer():
    with raises(TypeError, "additional_values must be a floating-point tensor", "torch.int64"):
        glocal.na2d(Q2, Q2, Q2, kernel_size=3, additional_keys=t(1, 2, 2, 4),
                    additional_values=torch.zeros(1, 2, 2, 4, dtype=torch.int64))
