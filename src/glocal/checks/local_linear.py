"""Checks of Parallax and Local Linear Attention (glocal.parallax_attention, glocal.local_linear_attention).

Every message states the rule, the values that broke it and the fix (see glocal.checks)."""

from __future__ import annotations

import math
import numbers

import torch

from .base import is_tensor, same_dtype_device
from .dense import sequence_tensors


def local_linear_tensors(what: str, q, k, v, r=None, with_probe: bool = False) -> None:
    """``q, r: [B, T, H_q, D]``, ``k: [B, T, H_kv, D]``, ``v: [B, T, H_kv, D_v]``: self attention only."""
    sequence_tensors(q, k, v)
    if with_probe:
        is_tensor("r", r)
        if tuple(r.shape) != tuple(q.shape):
            raise ValueError(
                f"{what} takes a probe r shaped like q (one probe vector per query and head); got "
                f"r.shape={tuple(r.shape)}, q.shape={tuple(q.shape)}. Project r like q, to [B, T, H_q, D]."
            )
        same_dtype_device({"q": q, "r": r})
    if q.shape[1] != k.shape[1]:
        raise ValueError(
            f"{what} is self attention: the queries and the keys are the same tokens (windows are "
            f"defined on one sequence); got q T={q.shape[1]}, k T={k.shape[1]}. Pass q, k and v of one "
            f"sequence, or use glocal.attention for cross attention."
        )


def window_size(window_size) -> None:
    """``window_size`` is None (every key) or an int >= 1."""
    if window_size is None:
        return
    if not isinstance(window_size, numbers.Integral) or isinstance(window_size, bool):
        raise TypeError(
            f"window_size must be None (every key) or an int; got window_size={window_size!r} of type "
            f"{type(window_size).__name__}. Pass e.g. window_size=512."
        )
    if window_size < 1:
        raise ValueError(
            f"window_size must be >= 1 (a query attends at least itself); got window_size={window_size}. "
            f"Pass a positive int, or None for every key."
        )


def ridge(ridge) -> None:
    """The LLA ridge is a finite real number > 0 (it keeps each query's covariance solve well posed)."""
    if not isinstance(ridge, numbers.Real) or isinstance(ridge, bool):
        raise TypeError(
            f"ridge must be a real number; got ridge={ridge!r} of type {type(ridge).__name__}. "
            f"Pass a float, e.g. ridge=1e-2."
        )
    if not math.isfinite(ridge) or ridge <= 0:
        raise ValueError(
            f"ridge must be finite and > 0 (it regularises the key covariance the op inverts per query); "
            f"got ridge={ridge!r}. Pass e.g. ridge=1e-2; a large ridge tends to softmax attention."
        )


def rope_head_dim(head_dim: int) -> None:
    """RoPE rotates pairs of channels, so a module with RoPE needs an even head dim."""
    if head_dim % 2 != 0:
        raise ValueError(
            f"RoPE rotates pairs of channels, so the head dim must be even; got head_dim={head_dim} "
            f"(dim // num_heads). Choose dim and num_heads with an even dim // num_heads."
        )


def rope_theta(theta) -> None:
    if not isinstance(theta, numbers.Real) or isinstance(theta, bool) or not theta > 0:
        raise ValueError(
            f"rope_theta must be a number > 0 (the RoPE base); got rope_theta={theta!r}. Pass e.g. 10000.0."
        )


def module_positions(positions, length: int) -> None:
    """Token positions given to a module: None (0 .. T-1) or a tensor ``[T]`` or ``[B, T]``."""
    if positions is None:
        return
    is_tensor("positions", positions)
    if positions.dim() not in (1, 2) or positions.shape[-1] != length:
        raise ValueError(
            f"positions must have shape [T] or [B, T] with T={length} (one position per token); got "
            f"positions.shape={tuple(positions.shape)}. Pass e.g. torch.arange(T)."
        )
    if positions.dtype == torch.bool or positions.is_complex():
        raise TypeError(
            f"positions must be integer or real numbers; got positions.dtype={positions.dtype}. "
            f"Pass e.g. torch.arange(T)."
        )
