"""Errors of block-routed attention (glocal/checks/block_sparse.py and the shared checks it uses).

One test per message: the exception type, the values and the fix."""

from __future__ import annotations

import pytest
import torch
from conftest import raises
from conftest import zeros as t

import glocal

Q, KV = t(1, 8, 2, 4), t(1, 8, 2, 4)


def test_sequence_rank():
    with raises(ValueError, "moba_attention takes q of shape [B, T, H, D] (4-D)", "q.dim()=5", "(1, 2, 4, 2, 4)",
                "moba_attention_nd for grids"):
        glocal.moba_attention(t(1, 2, 4, 2, 4), KV, KV, 4, top_k=2)
    with raises(ValueError, "moba_selection takes k of shape [B, T, H, D]", "k.dim()=3"):
        glocal.moba_selection(Q, t(1, 8, 4), 4, top_k=2)


def test_not_a_tensor_or_not_float():
    with raises(TypeError, "v must be a torch.Tensor", "type list"):
        glocal.moba_attention(Q, KV, [1.0], 4, top_k=2)
    with raises(TypeError, "k must be a floating-point tensor", "k.dtype=torch.int64", "k.float()"):
        glocal.moba_selection(Q, KV.long(), 4, top_k=2)


def test_dtypes_differ():
    with raises(TypeError, "q.dtype=torch.float32, k.dtype=torch.float64"):
        glocal.moba_attention(Q, KV.double(), KV.double(), 4, top_k=2)


def test_sequence_lengths_differ():
    with raises(ValueError, "k and v must have the same sequence length", "k T=8, v T=9", "one value per key"):
        glocal.moba_attention(Q, KV, t(1, 9, 2, 4), 4, top_k=2)


def test_heads_not_a_multiple():
    with raises(ValueError, "multiple of the key/value heads", "H_q=3, H_kv=2"):
        glocal.moba_attention(t(1, 8, 3, 4), KV, KV, 4, top_k=2)


def test_more_queries_than_keys():
    with raises(ValueError, "last T_q key positions, so T_q <= T_kv", "T_q=9, T_kv=8", "KV cache includes"):
        glocal.moba_attention(t(1, 9, 2, 4), KV, KV, 4, top_k=2)


def test_block_size_type():
    with raises(TypeError, "block_size must be an int", "block_size=4.0 of type float", "block_size=512"):
        glocal.moba_attention(Q, KV, KV, 4.0, top_k=2)
    with raises(TypeError, "block_size=True of type bool"):
        glocal.moba_selection(Q, KV, True, top_k=2)


def test_block_size_value():
    with raises(ValueError, "block_size must be >= 1", "block_size=0"):
        glocal.moba_attention(Q, KV, KV, 0, top_k=2)


def test_exactly_one_routing_rule():
    with raises(ValueError, "exactly one of top_k and threshold", "top_k=None, threshold=None", "top_k=3 (MoBA)"):
        glocal.moba_attention(Q, KV, KV, 4)
    with raises(ValueError, "top_k=2, threshold=0.5", "not both"):
        glocal.moba_selection(Q, KV, 4, top_k=2, threshold=0.5)


def test_top_k_type():
    with raises(TypeError, "top_k must be an int", "top_k=2.0 of type float", "top_k=3"):
        glocal.moba_attention(Q, KV, KV, 4, top_k=2.0)


def test_top_k_value():
    with raises(ValueError, "top_k must be >= 1 (it counts the own block", "top_k=0", "top_k=1 for the own block only"):
        glocal.moba_attention(Q, KV, KV, 4, top_k=0)


def test_threshold_type():
    with raises(TypeError, "threshold must be a number in [0, 1]", "threshold='0.5' of type str", "threshold=0.25"):
        glocal.moba_attention(Q, KV, KV, 4, threshold="0.5")
    with raises(TypeError, "threshold=True of type bool"):
        glocal.moba_attention_nd(Q, KV, KV, 4, threshold=True)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan")])
def test_threshold_range(threshold):
    with raises(ValueError, "threshold must be in [0, 1] (0 keeps the own block only, 1 every eligible block)",
                f"threshold={threshold!r}"):
        glocal.moba_attention(Q, KV, KV, 4, threshold=threshold)


def test_causal_flag_and_scale():
    with raises(TypeError, "is_causal must be a bool", "is_causal=1 of type int"):
        glocal.moba_attention(Q, KV, KV, 4, top_k=2, is_causal=1)
    with raises(TypeError, "scale must be None (meaning D_qk ** -0.5) or a real number", "scale='x'"):
        glocal.moba_attention(Q, KV, KV, 4, top_k=2, scale="x")


def test_block_means_not_a_tensor_or_not_float():
    with raises(TypeError, "block_means must be a torch.Tensor", "type list"):
        glocal.moba_attention(Q, KV, KV, 4, top_k=2, block_means=[0.0])
    with raises(TypeError, "block_means must be a floating-point tensor", "block_means.dtype=torch.int64"):
        glocal.moba_selection(Q, KV, 4, top_k=2, block_means=torch.zeros(1, 2, 2, 4, dtype=torch.long))


def test_block_means_device():
    with raises(ValueError, "block_means must be on the keys' device", "block_means.device=meta", "k.device=cpu",
                ".to(k.device)"):
        glocal.moba_attention(Q, KV, KV, 4, top_k=2, block_means=t(1, 2, 2, 4).to("meta"))


def test_block_means_shape():
    with raises(ValueError, "block_means must have shape [B, n_blocks, H_kv, D] = [1, 2, 2, 4]",
                "n_blocks = ceil(T_kv / block_size)", "block_means.shape=(1, 3, 2, 4)", "glocal.masks.block_means"):
        glocal.moba_attention(Q, KV, KV, 4, top_k=2, block_means=t(1, 3, 2, 4))


def test_grid_rank():
    with raises(ValueError, "moba_attention_nd takes q of shape [B, *spatial, H, D] with 1 to 3 spatial axes",
                "q.dim()=3", "[B, T, X, Y, H, D]"):
        glocal.moba_attention_nd(t(1, 8, 4), t(1, 8, 4), t(1, 8, 4), 2, top_k=2)


def test_grid_shapes_differ():
    with raises(ValueError, "self attention on one grid", "q=(4, 4), k=(4, 5), v=(4, 5)", "same grid"):
        glocal.moba_attention_nd(t(1, 4, 4, 2, 4), t(1, 4, 5, 2, 4), t(1, 4, 5, 2, 4), 2, top_k=2)


def test_block_shape_entries():
    g = t(1, 4, 4, 2, 4)
    with raises(ValueError, "block_shape must be a single value or have one entry per spatial axis",
                "block_shape=(2, 2, 2) (3 entries) for a 2-D problem"):
        glocal.moba_attention_nd(g, g, g, (2, 2, 2), top_k=2)
    with raises(TypeError, "block_shape entries must be int", "an entry of type float"):
        glocal.moba_attention_nd(g, g, g, (2, 2.5), top_k=2)


def test_block_shape_value():
    g = t(1, 4, 4, 2, 4)
    with raises(ValueError, "block_shape must be >= 1 on every axis", "block_shape=(2, 0)", "(4, 8, 8)"):
        glocal.moba_attention_nd(g, g, g, (2, 0), top_k=2)
