"""Reference of InLine attention: the N_q x N_kv weight matrix s_ts - mean_s' s_ts' + 1/N, materialised.

Shapes: q [B, *spatial_q, H_q, D_k], k [B, *spatial_kv, H_kv, D_k], v [B, *spatial_kv, H_kv, D_v]
-> out [B, *spatial_q, H_q, D_v]

Example:
    >>> import torch
    >>> from glocal.backends.reference.inline import inline_attention_reference
    >>> x = torch.randn(1, 4, 4, 2, 8)
    >>> inline_attention_reference(x, x, x).shape
    torch.Size([1, 4, 4, 2, 8])
"""

from __future__ import annotations

import torch

from ...numerics import compute_dtype, repeat_kv
from ...numerics import feature_map as feature_map_fn
from ...spec import InlineSpec

NAME = "reference"


def can_run(spec, tensors: dict) -> list[str]:
    if not isinstance(spec, InlineSpec):
        return [f"reference does not implement {type(spec).__name__} as InLine attention"]
    return []


def run(spec: InlineSpec, tensors: dict, scale: float):
    """``(out,)``: the weights of every query over every key, then their product with the values."""
    q, k, v = tensors["q"], tensors["k"], tensors["v"]
    phi = feature_map_fn(spec.feature_map)
    compute = compute_dtype(q)
    hq = q.shape[-2]
    qf, kf, vf = (x.flatten(1, -3).to(compute) for x in (q, k, v))
    scores = torch.einsum("bthd,bshd->bhts", phi(qf) * scale, repeat_kv(phi(kf), hq))
    weights = scores - scores.mean(-1, keepdim=True) + 1.0 / kf.shape[1]
    out = torch.einsum("bhts,bshe->bthe", weights, repeat_kv(vf, hq))
    return (out.reshape(*q.shape[:-1], v.shape[-1]).to(q.dtype),)


def inline_attention_reference(q, k, v, feature_map="identity", scale=None):
    """Quadratic reference of :func:`glocal.inline_attention` (``scale=None`` means 1).

    Example:
        >>> import torch
        >>> x = torch.randn(1, 4, 4, 2, 8)
        >>> inline_attention_reference(x, x, x).shape
        torch.Size([1, 4, 4, 2, 8])
    """
    return run(InlineSpec(feature_map), {"q": q, "k": k, "v": v}, 1.0 if scale is None else float(scale))[0]
