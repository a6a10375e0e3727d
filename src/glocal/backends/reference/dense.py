"""Reference of full attention (and of any softmax family with a dense mask): masked scores, one softmax.

Shapes:
    q: [B, *grid_q, H_q, D]  k: [B, *grid_kv, H_kv, D]  v: [B, *grid_kv, H_kv, D_v]  (sequences: one axis)
    additional_keys / additional_values: [B, S, H_kv, D] / [B, S, H_kv, D_v], attended by every query
    returns (out [B, *grid_q, H_q, D_v], lse [B, *grid_q, H_q])

Example:
    >>> import torch
    >>> from glocal.backends.reference import dense
    >>> from glocal.spec import AttentionSpec
    >>> q = k = v = torch.randn(1, 5, 2, 8)
    >>> out, lse = dense.run(AttentionSpec(5, 5, True), {"q": q, "k": k, "v": v}, 8 ** -0.5)
    >>> out.shape, lse.shape
    (torch.Size([1, 5, 2, 8]), torch.Size([1, 5, 2]))
"""

from __future__ import annotations

import torch

from ...masks import dense_mask
from ...numerics import dense_attention
from ...spec import AttentionSpec

NAME = "reference"


def can_run(spec, tensors: dict) -> list[str]:
    if not isinstance(spec, AttentionSpec):
        return [f"reference does not implement {type(spec).__name__} as dense attention"]
    return []


def run(spec, tensors: dict, scale: float):
    """``(out, lse)`` of one softmax over the keys ``dense_mask(spec)`` allows, plus the extra tokens."""
    q, k, v = tensors["q"], tensors["k"], tensors["v"]
    extra_k, extra_v = tensors.get("additional_keys"), tensors.get("additional_values")
    # flatten, not reshape(batch, -1, ...): the token count must stay known when the batch is empty.
    qf, kf, vf = q.flatten(1, -3), k.flatten(1, -3), v.flatten(1, -3)
    mask = dense_mask(spec, device=q.device)
    if extra_k is not None:
        kf = torch.cat([kf, extra_k.to(kf.dtype)], dim=1)
        vf = torch.cat([vf, extra_v.to(vf.dtype)], dim=1)
        mask = torch.cat([mask, torch.ones(mask.shape[0], extra_k.shape[1], dtype=torch.bool, device=q.device)], 1)
    out, lse = dense_attention(qf, kf, vf, scale, allowed=mask)
    return out.reshape(*q.shape[:-1], v.shape[-1]), lse.reshape(q.shape[:-1])
