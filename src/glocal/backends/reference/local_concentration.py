"""Oracle of L2ViT local-concentration attention, computed from dense score matrices.

The linear branch's weights relu(q_t) . relu(k_s) are materialised for every pair and divided by
their row sum clamped from below; the local branch is a softmax over the dense neighborhood
mask. Nothing is shared with the op's fast path (the linear family plus the neighborhood family).

Shapes: q [B, *spatial, H_q, D_k], k [B, *spatial, H_kv, D_k], v [B, *spatial, H_kv, D_v],
temperature None, a float or [H_q] -> out [B, *spatial, H_q, D_v]

Example:
    >>> import torch
    >>> from glocal.backends.reference.local_concentration import local_concentration_attention_reference
    >>> x = torch.randn(1, 16, 2, 8)
    >>> local_concentration_attention_reference(x, x, x, kernel_size=3).shape
    torch.Size([1, 16, 2, 8])
"""

from __future__ import annotations

import torch

from ...masks import dense_mask
from ...numerics import compute_dtype, repeat_kv
from ...spec import make_neighborhood_spec


def local_concentration_attention_reference(q, k, v, kernel_size, dilation=1, temperature=None,
                                            denominator_min=100.0, scale=None):
    """Dense reference of :func:`glocal.local_concentration_attention` (same arguments, non-causal self)."""
    compute = compute_dtype(q)
    hq = q.shape[-2]
    qf = q.flatten(1, -3).to(compute)
    kf = repeat_kv(k.flatten(1, -3).to(compute), hq)
    vf = repeat_kv(v.flatten(1, -3).to(compute), hq)
    # Linear branch: weights relu(q) . relu(k) over every key, divided by max(row sum, denominator_min).
    weights = torch.einsum("bthd,bshd->bhts", torch.relu(qf), torch.relu(kf))
    rows = torch.maximum(weights.sum(-1, keepdim=True), torch.tensor(float(denominator_min), dtype=compute))
    linear = torch.einsum("bhts,bshe->bthe", weights / rows, vf)
    if temperature is not None:
        per_head = torch.as_tensor(temperature, dtype=compute, device=q.device).reshape(-1)
        linear = linear * per_head.expand(hq)[:, None]
    # Local branch: softmax over the K-neighborhood.
    spec = make_neighborhood_spec(tuple(q.shape[1:-2]), kernel_size, 1, dilation, False)
    scores = torch.einsum("bthd,bshd->bhts", qf, kf) * (q.shape[-1] ** -0.5 if scale is None else float(scale))
    probs = scores.masked_fill(~dense_mask(spec, device=q.device), -float("inf")).softmax(-1)
    local = torch.einsum("bhts,bshe->bthe", probs, vf)
    return (linear + local).reshape(*q.shape[:-1], v.shape[-1]).to(q.dtype)
