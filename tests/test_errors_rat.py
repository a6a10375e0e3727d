"""Errors of RAT attention and its layer (glocal/checks/rat.py, and the shared checks it calls).

One test per message: the exception type, the values and the fix."""

from __future__ import annotations

import torch
from conftest import raises
from conftest import zeros as t

import glocal
from glocal.nn import RATAttention

Q, G = t(1, 8, 2, 4), t(1, 8, 2, 1)


def test_queries_and_keys_differ_in_length():
    k = t(1, 9, 2, 4)
    with raises(ValueError, "q and k must have the same length", "q T=8, k T=9", "same positions"):
        glocal.rat_attention(Q, k, k, t(1, 9, 2, 1), t(1, 9, 2, 1), 4)


def test_gate_does_not_broadcast():
    with raises(ValueError, "key_gate must have the shape of k or broadcast to it", "key_gate.shape=(1, 8, 3, 1)",
                "k.shape=(1, 8, 2, 4)", "[B, T, H_kv, 1]"):
        glocal.rat_attention(Q, Q, Q, t(1, 8, 3, 1), G, 4)


def test_gate_with_more_dims_than_its_tensor():
    with raises(ValueError, "value_gate must have the shape of v or broadcast to it",
                "value_gate.shape=(1, 1, 8, 2, 1)", "v.shape=(1, 8, 2, 4)"):
        glocal.rat_attention(Q, Q, Q, G, t(1, 1, 8, 2, 1), 4)


def test_gate_outside_zero_one():
    with raises(ValueError, "key_gate must lie in [0, 1]", "min=-0.5, max=-0.5", "torch.sigmoid(logits)"):
        glocal.rat_attention(Q, Q, Q, G - 0.5, G, 4)
    with raises(ValueError, "value_gate must lie in [0, 1]", "min=0, max=1.5"):
        glocal.rat_attention(Q, Q, Q, G, G.clone().index_fill_(1, torch.tensor([3]), 1.5), 4)


def test_gate_not_a_tensor():
    with raises(TypeError, "key_gate must be a torch.Tensor", "type float", "Pass a tensor"):
        glocal.rat_attention(Q, Q, Q, 0.5, G, 4)


def test_gate_not_floating_point():
    with raises(TypeError, "value_gate must be a floating-point tensor", "value_gate.dtype=torch.int64"):
        glocal.rat_attention(Q, Q, Q, G, torch.zeros(1, 8, 2, 1, dtype=torch.long), 4)


def test_gate_dtype_differs_from_q():
    with raises(TypeError, "all inputs must have one dtype", "q.dtype=torch.float32", "key_gate.dtype=torch.float64"):
        glocal.rat_attention(Q, Q, Q, G.double(), G, 4)


def test_chunk_size_not_positive():
    with raises(ValueError, "chunk_size must be an int >= 1", "chunk_size=0", "chunk_size=64"):
        glocal.rat_attention(Q, Q, Q, G, G, 0)


def test_chunk_size_not_an_int():
    with raises(ValueError, "chunk_size must be an int >= 1", "chunk_size=2.5"):
        glocal.rat_attention(Q, Q, Q, G, G, 2.5)


def test_scale_not_a_number():
    with raises(TypeError, "scale must be None (meaning D_qk ** -0.5) or a real number", "scale='big'"):
        glocal.rat_attention(Q, Q, Q, G, G, 4, scale="big")


def test_wrong_rank():
    with raises(ValueError, "attention takes q of shape [B, T, H, D]", "q.dim()=3"):
        glocal.rat_attention(t(1, 8, 4), Q, Q, G, G, 4)


# --- the layer ---------------------------------------------------------------------------------------


def test_layer_rope_theta_not_positive():
    with raises(ValueError, "rope_theta must be a number > 0", "rope_theta=0.0", "rope_theta=10000.0"):
        RATAttention(16, 2, 4, rope_theta=0.0)


def test_layer_odd_head_dim_with_rope():
    with raises(ValueError, "the head dim must be even", "head_dim=3", "rope_theta=None"):
        RATAttention(6, 2, 4)


def test_layer_chunk_size():
    with raises(ValueError, "chunk_size must be an int >= 1", "chunk_size=-1"):
        RATAttention(16, 2, -1)


def test_layer_dim_not_divisible_by_heads():
    with raises(ValueError, "dim must be divisible by num_heads", "dim=10, num_heads=4"):
        RATAttention(10, 4, 4)


def test_layer_input_shape():
    layer = RATAttention(16, 2, 4)
    with raises(ValueError, "this module takes x of shape [B, T, dim] (3-D)", "x.dim()=2"):
        layer(t(2, 16))
    with raises(ValueError, "the last axis of x must have the module's dim channels", "x.shape[-1]=8, dim=16"):
        layer.step(t(2, 8), layer.new_cache(2))
