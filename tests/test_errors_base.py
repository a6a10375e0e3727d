"""Errors of the shared checks (glocal/checks/base.py): per-axis values, tensor types, dtypes, devices, heads, scale, backend names.

One test per message: the exception type, the values and the fix."""

from __future__ import annotations

import torch
from conftest import raises
from conftest import zeros as t

import glocal

Q2 = t(1, 6, 6, 2, 4)


def test_tuple_of_the_wrong_length():
    with raises(ValueError, "kernel_size=(3, 3, 3) (3 entries) for a 2-D problem", "a tuple of 2"):
        glocal.na2d(Q2, Q2, Q2, kernel_size=(3, 3, 3))


def test_wrong_type_kernel_size():
    with raises(TypeError, "kernel_size entries must be int", "kernel_size=3.0", "type float", "Pass int"):
        glocal.na2d(Q2, Q2, Q2, kernel_size=3.0)


def test_bool_is_not_a_kernel_size():
    with raises(TypeError, "stride entries must be int", "stride=(1, True)", "type bool"):
        glocal.na2d(Q2, Q2, Q2, kernel_size=3, stride=(1, True))


def test_non_bool_causal_flag_neighborhood():
    with raises(TypeError, "is_causal entries must be bool", "is_causal=(True, 1)", "type int", "Pass bool"):
        glocal.na2d(Q2, Q2, Q2, kernel_size=3, is_causal=(True, 1))


def test_non_bool_causal_flag_attention():
    q = t(1, 4, 2, 8)
    with raises(TypeError, "is_causal must be a bool", "is_causal=1", "type int", "Pass True or False"):
        glocal.attention(q, q, q, is_causal=1)


def test_not_a_tensor():
    with raises(TypeError, "k must be a torch.Tensor", "type list", "Pass a tensor"):
        glocal.na2d(Q2, [[0.0]], Q2, kernel_size=3)


def test_integer_tensor():
    q = torch.zeros(1, 6, 2, 4, dtype=torch.int64)
    with raises(TypeError, "q must be a floating-point tensor", "q.dtype=torch.int64", "q.float()"):
        glocal.na1d(q, q, q, kernel_size=3)


def test_integer_tensor_attention():
    q = t(1, 4, 2, 8)
    with raises(TypeError, "v must be a floating-point tensor", "v.dtype=torch.int32", "v.float()"):
        glocal.attention(q, q, q.int())


def test_mixed_dtypes():
    with raises(TypeError, "all inputs must have one dtype", "q.dtype=torch.float32", "k.dtype=torch.float64",
                ".to(q.dtype)"):
        glocal.na2d(Q2, Q2.double(), Q2, kernel_size=3)


def test_mixed_devices():
    # A meta tensor is on another device without needing a GPU.
    with raises(ValueError, "all inputs must be on one device", "q.device=cpu", "v.device=meta", ".to(q.device)"):
        glocal.na2d(Q2, Q2, t(1, 6, 6, 2, 4, device="meta"), kernel_size=3)


def test_mismatched_kv_heads():
    with raises(ValueError, "k and v must have the same number of heads", "k heads=2, v heads=1", "layout of k"):
        glocal.na2d(Q2, Q2, t(1, 6, 6, 1, 4), kernel_size=3)


def test_query_heads_not_divisible_by_kv_heads():
    q, kv = t(1, 8, 3, 4), t(1, 8, 2, 4)
    with raises(ValueError, "multiple of the key/value heads", "H_q=3, H_kv=2", "H_kv dividing H_q"):
        glocal.na1d(q, kv, kv, kernel_size=3)


def test_query_heads_not_divisible_attention():
    q, kv = t(1, 8, 4, 4), t(1, 8, 3, 4)
    with raises(ValueError, "H_q=4, H_kv=3"):
        glocal.attention(q, kv, kv)


def test_mismatched_head_dims():
    with raises(ValueError, "q and k must have the same head dim", "q D=4, k D=5", "neighborhood attention",
                "one head dim"):
        glocal.na2d(Q2, t(1, 6, 6, 2, 5), t(1, 6, 6, 2, 5), kernel_size=3)


def test_mismatched_batch():
    with raises(ValueError, "same batch size", "q=1, k=2, v=1", "one batch"):
        glocal.na2d(Q2, t(2, 6, 6, 2, 4), Q2, kernel_size=3)


def test_mismatched_batch_attention():
    q = t(2, 4, 2, 8)
    with raises(ValueError, "same batch size", "q=2, k=2, v=3", "for attention"):
        glocal.attention(q, q, t(3, 4, 2, 8))


def test_bad_scale_type():
    with raises(TypeError, "scale must be None (meaning D_qk ** -0.5) or a real number", "scale='0.5'",
                "type str", "Pass a float"):
        glocal.na2d(Q2, Q2, Q2, kernel_size=3, scale="0.5")


def test_bool_scale_attention():
    q = t(1, 4, 2, 8)
    with raises(TypeError, "scale=True", "type bool"):
        glocal.attention(q, q, q, scale=True)


def test_unknown_backend_name():
    with raises(ValueError, "unknown backend 'nope'", "'reference'", "None to choose"):
        glocal.na2d(Q2, Q2, Q2, kernel_size=3, backend="nope")


def test_unknown_backend_in_use_backend():
    with raises(ValueError, "unknown backend 'fast'"):
        with glocal.use_backend("fast"):
            pass
