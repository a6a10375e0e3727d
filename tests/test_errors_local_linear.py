"""Errors of the local_linear checks (glocal/checks/local_linear.py): Parallax, LLA and nn.ParallaxAttention.

One test per message: the exception type, the values and the fix."""

from __future__ import annotations

import pytest
import torch
from conftest import raises
from conftest import zeros as t

import glocal
from glocal.backends.cpu import local_linear
from glocal.spec import LinearSpec

Q, K, V = t(1, 6, 2, 8), t(1, 6, 1, 8), t(1, 6, 1, 4)


def test_probe_shape():
    with raises(ValueError, "parallax_attention takes a probe r shaped like q", "r.shape=(1, 6, 2, 4)",
                "q.shape=(1, 6, 2, 8)", "Project r like q"):
        glocal.parallax_attention(Q, t(1, 6, 2, 4), K, V)


def test_probe_not_a_tensor():
    with raises(TypeError, "r must be a torch.Tensor", "type float"):
        glocal.parallax_attention(Q, 0.0, K, V)


def test_probe_dtype():
    with raises(TypeError, "all inputs must have one dtype", "q.dtype=torch.float32", "r.dtype=torch.float64"):
        glocal.parallax_attention(Q, Q.double(), K, V)


@pytest.mark.parametrize("op", ["parallax", "lla"])
def test_self_attention_only(op):
    k, v = t(1, 9, 1, 8), t(1, 9, 1, 4)
    name = "parallax_attention" if op == "parallax" else "local_linear_attention"
    with raises(ValueError, f"{name} is self attention", "q T=6, k T=9", "glocal.attention for cross attention"):
        if op == "parallax":
            glocal.parallax_attention(Q, Q, k, v)
        else:
            glocal.local_linear_attention(Q, k, v)


def test_sequence_shape_is_checked_first():
    with raises(ValueError, "attention takes q of shape [B, T, H, D]", "q.dim()=3"):
        glocal.local_linear_attention(t(6, 2, 8), K, V)


@pytest.mark.parametrize("window_size", [2.0, "8", True])
def test_window_size_type(window_size):
    with raises(TypeError, "window_size must be None (every key) or an int", f"window_size={window_size!r}",
                "window_size=512"):
        glocal.parallax_attention(Q, Q, K, V, window_size=window_size)


@pytest.mark.parametrize("window_size", [0, -3])
def test_window_size_value(window_size):
    with raises(ValueError, "window_size must be >= 1", f"window_size={window_size}", "or None for every key"):
        glocal.local_linear_attention(Q, K, V, window_size=window_size)


def test_causal_flag():
    with raises(TypeError, "is_causal must be a bool", "is_causal=1"):
        glocal.parallax_attention(Q, Q, K, V, is_causal=1)


@pytest.mark.parametrize("ridge", ["1e-2", None, False])
def test_ridge_type(ridge):
    with raises(TypeError, "ridge must be a real number", f"ridge={ridge!r}", "ridge=1e-2"):
        glocal.local_linear_attention(Q, K, V, ridge=ridge)


@pytest.mark.parametrize("ridge", [0.0, -1.0, float("inf"), float("nan")])
def test_ridge_value(ridge):
    with raises(ValueError, "ridge must be finite and > 0", f"ridge={ridge!r}", "a large ridge tends to softmax"):
        glocal.local_linear_attention(Q, K, V, ridge=ridge)


def test_scale_type():
    with raises(TypeError, "scale must be None (meaning D_qk ** -0.5) or a real number", "scale='x'"):
        glocal.local_linear_attention(Q, K, V, scale="x")


def test_named_backend_refuses_other_specs():
    assert local_linear.can_run(LinearSpec(), {}) == ["cpu does not implement LinearSpec as local linear attention"]


def test_module_odd_head_dim():
    with raises(ValueError, "RoPE rotates pairs of channels", "head_dim=3", "dim // num_heads"):
        glocal.nn.ParallaxAttention(12, 4)


@pytest.mark.parametrize("theta", [0.0, -5, "big", True])
def test_module_rope_theta(theta):
    with raises(ValueError, "rope_theta must be a number > 0", f"rope_theta={theta!r}", "10000.0"):
        glocal.nn.ParallaxAttention(16, 2, rope_theta=theta)


def test_module_arguments_go_through_the_op_checks():
    with raises(ValueError, "window_size must be >= 1", "window_size=0"):
        glocal.nn.ParallaxAttention(16, 2, window_size=0)
    with raises(ValueError, "dim must be divisible by num_heads", "dim=16, num_heads=3"):
        glocal.nn.ParallaxAttention(16, 3)


def test_module_positions_shape():
    layer = glocal.nn.ParallaxAttention(16, 2)
    with raises(ValueError, "positions must have shape [T] or [B, T] with T=5", "positions.shape=(4,)",
                "torch.arange(T)"):
        layer(t(1, 5, 16), positions=torch.arange(4))


def test_module_positions_dtype():
    layer = glocal.nn.ParallaxAttention(16, 2)
    with raises(TypeError, "positions must be integer or real numbers", "positions.dtype=torch.bool"):
        layer(t(1, 5, 16), positions=torch.ones(5, dtype=torch.bool))


def test_module_input_shape():
    layer = glocal.nn.ParallaxAttention(16, 2)
    with raises(ValueError, "this module takes x of shape [B, T, dim] (3-D)", "x.dim()=4"):
        layer(t(1, 5, 5, 16))
