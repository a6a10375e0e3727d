"""Checks of linear attention, its decoding step, InLine and L2ViT arguments.

Every message states the rule, the values that broke it and the fix (see glocal.checks)."""

from __future__ import annotations

import numbers

import torch

from .base import causal_flag, float_dtype, heads_and_dims, is_tensor, same_dtype_device
from .base import scale as scale_check
from .dense import sequence_tensors


def feature_map(feature_map, names: tuple) -> None:
    if callable(feature_map):
        return
    if not isinstance(feature_map, str):
        raise TypeError(
            f"feature_map must be a name or a callable; got feature_map={feature_map!r} of type "
            f"{type(feature_map).__name__}. Pass one of {list(names)} or a function of a tensor."
        )
    if feature_map not in names:
        raise ValueError(
            f"unknown feature_map {feature_map!r}; the feature maps are {list(names)} or a callable. "
            f"Pass one of them."
        )


def chunk_size(chunk_size) -> None:
    if not isinstance(chunk_size, numbers.Integral) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(
            f"chunk_size must be an int >= 1; got chunk_size={chunk_size!r}. Pass e.g. chunk_size=64."
        )


def linear_state(name: str, state, q, k, v) -> None:
    """A linear-attention state ``(kv [B, H_kv, D_k, D_v], ksum [B, H_kv, D_k])`` or None."""
    if state is None:
        return
    want_kv = (k.shape[0], k.shape[-2], k.shape[-1], v.shape[-1])
    want_ksum = want_kv[:3]
    ok = (isinstance(state, (tuple, list)) and len(state) == 2
          and all(isinstance(s, torch.Tensor) for s in state)
          and tuple(state[0].shape) == want_kv and tuple(state[1].shape) == want_ksum)
    if not ok:
        got = (tuple(tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__ for s in state)
               if isinstance(state, (tuple, list)) else type(state).__name__)
        raise ValueError(
            f"{name} must be a pair (kv [B, H_kv, D_k, D_v], ksum [B, H_kv, D_k]) = "
            f"({list(want_kv)}, {list(want_ksum)}); got {name}={got}. Pass the state returned by "
            f"linear_attention(..., return_state=True) or linear_attention_step for the same shapes."
        )


def linear_inputs(q, k, v, is_causal, feature_map_value, names: tuple, scale, chunk_size_value, initial_state) -> None:
    """Every argument of ``linear_attention`` (q, k, v as sequences; the state of an earlier call)."""
    sequence_tensors(q, k, v)
    causal_flag(is_causal)
    feature_map(feature_map_value, names)
    scale_check(scale, "1")
    chunk_size(chunk_size_value)
    linear_state("initial_state", initial_state, q, k, v)


def step_tensors(q_t, k_t, v_t) -> None:
    """One decoding step: ``q_t: [B, H_q, D_k]``, ``k_t: [B, H_kv, D_k]``, ``v_t: [B, H_kv, D_v]``."""
    for name, x in (("q_t", q_t), ("k_t", k_t), ("v_t", v_t)):
        is_tensor(name, x)
        if x.dim() != 3:
            raise ValueError(
                f"linear_attention_step takes {name} of shape [B, H, D] (3-D, one token); got "
                f"{name}.dim()={x.dim()} (shape {tuple(x.shape)}). Index the token, e.g. x[:, t]."
            )
        float_dtype(name, x)
    same_dtype_device({"q_t": q_t, "k_t": k_t, "v_t": v_t})
    heads_and_dims(q_t, k_t, v_t, "linear_attention_step")


def l2vit_args(q, temperature, denominator_min) -> None:
    if temperature is not None and isinstance(temperature, torch.Tensor):
        if tuple(temperature.shape) != (q.shape[-2],):
            raise ValueError(
                f"temperature must be a float or a tensor of shape [H_q] = [{q.shape[-2]}]; got "
                f"temperature.shape={tuple(temperature.shape)}. Pass one temperature per query head."
            )
    elif temperature is not None and (not isinstance(temperature, numbers.Real) or isinstance(temperature, bool)):
        raise TypeError(
            f"temperature must be None, a float or a [H_q] tensor; got temperature={temperature!r}. Pass a float."
        )
    if not isinstance(denominator_min, numbers.Real) or isinstance(denominator_min, bool) or denominator_min <= 0:
        raise ValueError(
            f"denominator_min must be a number > 0 (the clamp keeps the division finite); got "
            f"denominator_min={denominator_min!r}. Pass e.g. 1.0 or L2ViT's 100.0."
        )


def nonempty_keys(what: str, k) -> None:
    n = 1
    for length in k.shape[1:-2]:
        n *= length
    if n == 0:
        raise ValueError(
            f"{what} needs at least one key (it averages over the keys); got k.shape={tuple(k.shape)}. "
            f"Pass a non-empty key sequence."
        )
