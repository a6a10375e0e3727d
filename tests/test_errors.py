"""One test per error message of glocal.checks: the exception type, the values and the fix."""

from __future__ import annotations

import re

import pytest
import torch

import glocal


def t(*shape, dtype=torch.float32, device="cpu"):
    return torch.zeros(*shape, dtype=dtype, device=device)


def raises(exc, *parts):
    """pytest.raises matching every literal ``part`` of the message, in order."""
    return pytest.raises(exc, match=".*".join(re.escape(p) for p in parts))


Q2 = t(1, 6, 6, 2, 4)


# --- per-axis arguments -----------------------------------------------------------------

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


# --- the rules of DESIGN.md §1 -------------------------------------------------------------

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


# --- tensors -------------------------------------------------------------------------------

def test_not_a_tensor():
    with raises(TypeError, "k must be a torch.Tensor", "type list", "Pass a tensor"):
        glocal.na2d(Q2, [[0.0]], Q2, kernel_size=3)


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


def test_wrong_rank_attention():
    q = t(1, 4, 2)
    with raises(ValueError, "attention takes q of shape [B, T, H, D]", "q.dim()=3", "(1, 4, 2)", "Flatten grids"):
        glocal.attention(q, q, q)


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


def test_mismatched_spatial_sizes():
    with raises(ValueError, "same spatial shape", "q=(6, 6), k=(6, 5), v=(6, 6)"):
        glocal.na2d(Q2, t(1, 6, 5, 2, 4), Q2, kernel_size=3)


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


def test_mismatched_sequence_length():
    q = t(1, 4, 2, 8)
    with raises(ValueError, "k and v must have the same sequence length", "k T=4, v T=5", "one value per key"):
        glocal.attention(q, q, t(1, 5, 2, 8))


# --- extra keys/values -----------------------------------------------------------------------

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


# --- scale and backend ------------------------------------------------------------------------

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


# --- merge_attentions ------------------------------------------------------------------------------

O, L = t(1, 4, 2, 8), t(1, 4, 2)


def test_merge_not_lists():
    with raises(TypeError, "a list of outputs and a list of lses", "got Tensor and list", "merge_attentions([out_a"):
        glocal.merge_attentions(O, [L])


def test_merge_count_mismatch():
    with raises(ValueError, "one lse per output", "got 2 outputs and 1 lses", "matching lists"):
        glocal.merge_attentions([O, O], [L])


def test_merge_empty():
    with raises(ValueError, "at least one of each", "got 0 outputs and 0 lses"):
        glocal.merge_attentions([], [])


def test_merge_lse_shape():
    with raises(ValueError, "output's shape without its last", "outputs[1].shape=(1, 4, 2, 8)",
                "lses[1].shape=(1, 4)", "return_lse=True"):
        glocal.merge_attentions([O, O], [L, t(1, 4)])


def test_merge_output_shapes_differ():
    with raises(ValueError, "all outputs must have one shape", "outputs[0].shape=(1, 4, 2, 8)",
                "outputs[1].shape=(1, 5, 2, 8)", "same queries"):
        glocal.merge_attentions([O, t(1, 5, 2, 8)], [L, t(1, 5, 2)])


def test_merge_dtypes_differ():
    with raises(TypeError, "outputs[0].dtype=torch.float32", "outputs[1].dtype=torch.float64"):
        glocal.merge_attentions([O, O.double()], [L, L])


def test_merge_not_a_tensor():
    with raises(TypeError, "lses[0] must be a torch.Tensor", "type float"):
        glocal.merge_attentions([O], [0.0])


def test_merge_lse_wrong_device_or_dtype():
    with raises(ValueError, "floating-point tensor on its output's device", "lses[0].device=meta",
                "outputs[0].device=cpu"):
        glocal.merge_attentions([O], [L.to("meta")])
    with raises(ValueError, "lses[0].dtype=torch.int64"):
        glocal.merge_attentions([O], [L.long()])
