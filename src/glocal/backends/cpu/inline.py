"""Fast InLine attention in plain PyTorch (any device): a_t . (KV - ksum vmean^T) + vmean, O(N * D_k * D_v).

Shapes: q [B, *spatial_q, H_q, D_k], k [B, *spatial_kv, H_kv, D_k], v [B, *spatial_kv, H_kv, D_v]
-> (out [B, *spatial_q, H_q, D_v],)

Example:
    >>> import torch
    >>> from glocal.backends.cpu import inline
    >>> from glocal.spec import InlineSpec
    >>> x = torch.randn(1, 8, 8, 2, 16)
    >>> inline.run(InlineSpec(), {"q": x, "k": x, "v": x}, 1.0)[0].shape
    torch.Size([1, 8, 8, 2, 16])
"""

from __future__ import annotations

import torch

from ...numerics import compute_dtype
from ...numerics import feature_map as feature_map_fn
from ...spec import InlineSpec

NAME = "cpu"


def can_run(spec, tensors: dict) -> list[str]:
    if not isinstance(spec, InlineSpec):
        return [f"cpu does not implement {type(spec).__name__} as InLine attention"]
    return []


def run(spec: InlineSpec, tensors: dict, scale: float):
    q, k, v = tensors["q"], tensors["k"], tensors["v"]
    phi = feature_map_fn(spec.feature_map)
    compute = compute_dtype(q)
    qf, kf, vf = (x.flatten(1, -3).to(compute) for x in (q, k, v))
    hkv = kf.shape[2]
    a = phi(qf).unflatten(2, (hkv, -1)) * scale
    b = phi(kf)
    vmean = vf.mean(1)  # [B, H_kv, D_v]
    # sum_s (s_ts - mean s + 1/N) v_s = a . (sum_s b_s v_s^T - (sum_s b_s) vmean^T) + vmean
    kv = torch.einsum("bshd,bshe->bhde", b, vf) - b.sum(1)[..., None] * vmean[:, :, None, :]
    out = torch.einsum("bthgd,bhde->bthge", a, kv) + vmean[:, None, :, None, :]
    return (out.flatten(2, 3).reshape(*q.shape[:-1], v.shape[-1]).to(q.dtype),)
