"""Reference of linear attention: the quadratic form, every score a_t . b_s materialised, plain autograd.

Definitions (phi the feature map, ``scale`` multiplying phi(q)):
    a_t = scale * phi(q_t),  b_s = phi(k_s)
    num_t = sum_s (a_t . b_s) v_s + a_t . kv0,   den_t = sum_s (a_t . b_s) + a_t . ksum0
    out_t = num_t / den_t if normalize (0 where den_t == 0; or num_t / max(den_t, denominator_min)),
            else num_t
over the keys query t sees: all, or s <= t + (T_kv - T_q) when causal (bottom-right aligned).

Shapes:
    q: [B, T_q, H_q, D_k]  k: [B, T_kv, H_kv, D_k]  v: [B, T_kv, H_kv, D_v]
    initial_state / returned state: (kv [B, H_kv, D_k, D_v], ksum [B, H_kv, D_k])
    returns (out [B, T_q, H_q, D_v], state)

Example:
    >>> import torch
    >>> from glocal.backends.reference.linear import linear_attention_reference
    >>> q = k = v = torch.randn(1, 10, 2, 8)
    >>> linear_attention_reference(q, k, v, is_causal=True).shape
    torch.Size([1, 10, 2, 8])
"""

from __future__ import annotations

import torch

from ...numerics import compute_dtype, safe_divide
from ...numerics import feature_map as feature_map_fn
from ...spec import LinearSpec

NAME = "reference"


def can_run(spec, tensors: dict) -> list[str]:
    if not isinstance(spec, LinearSpec):
        return [f"reference does not implement {type(spec).__name__} as linear attention"]
    return []


def run(spec: LinearSpec, tensors: dict, scale: float):
    """``(out, state)`` of the quadratic form; see the module docstring."""
    return _quadratic(tensors["q"], tensors["k"], tensors["v"], spec.feature_map, spec.is_causal, spec.normalize,
                      scale, tensors.get("initial_state"), spec.denominator_min)


def _quadratic(q, k, v, feature_map, is_causal, normalize, scale, initial_state, denominator_min=None):
    phi = feature_map_fn(feature_map)
    compute = compute_dtype(q)
    batch, tq, hq, dk = q.shape
    tkv, hkv, dv = k.shape[1], k.shape[2], v.shape[-1]
    a = phi(q.to(compute)).unflatten(2, (hkv, hq // hkv)) * scale
    b, vv = phi(k.to(compute)), v.to(compute)
    if initial_state is None:
        kv0 = torch.zeros(batch, hkv, dk, dv, dtype=compute, device=q.device)
        ksum0 = torch.zeros(batch, hkv, dk, dtype=compute, device=q.device)
    else:
        kv0, ksum0 = initial_state[0].to(compute), initial_state[1].to(compute)
    scores = torch.einsum("bthgd,bshd->bhgts", a, b)
    if is_causal:
        i = torch.arange(tq, device=q.device)[:, None]
        j = torch.arange(tkv, device=q.device)[None, :]
        scores = scores * (j <= i + (tkv - tq)).to(compute)
    num = torch.einsum("bhgts,bshe->bthge", scores, vv) + torch.einsum("bthgd,bhde->bthge", a, kv0)
    out = num
    if normalize:
        den = scores.sum(-1).permute(0, 3, 1, 2) + torch.einsum("bthgd,bhd->bthg", a, ksum0)
        if denominator_min is None:
            out = safe_divide(num, den[..., None])
        else:
            out = num / den.clamp(min=denominator_min)[..., None]
    state = (kv0 + torch.einsum("bshd,bshe->bhde", b, vv), ksum0 + b.sum(1))
    return out.flatten(2, 3).to(q.dtype), state


def linear_attention_reference(q, k, v, feature_map="elu1", is_causal=False, normalize=True, scale=None,
                               initial_state=None, return_state=False):
    """Quadratic reference of :func:`glocal.linear_attention` (``scale=None`` means 1), same arguments.

    Shapes: as :func:`glocal.linear_attention`. Memory O(T_q * T_kv) per batch and head.

    Example:
        >>> import torch
        >>> q = k = v = torch.randn(1, 10, 2, 8)
        >>> linear_attention_reference(q, k, v, is_causal=True).shape
        torch.Size([1, 10, 2, 8])
    """
    out, state = _quadratic(q, k, v, feature_map, is_causal, normalize, 1.0 if scale is None else float(scale),
                            initial_state)
    return (out, state) if return_state else out
