"""Fast channel attention in plain PyTorch (any device): a D x D softmax per head, O(N * D^2).

Shapes: q, k, v [B, *spatial, H, D] (H_q a multiple of H_kv) -> (out [B, *spatial, H_q, D],)

Example:
    >>> import torch
    >>> from glocal.backends.cpu import channel
    >>> from glocal.spec import ChannelSpec
    >>> x = torch.randn(1, 14, 14, 4, 32)
    >>> channel.run(ChannelSpec(), {"q": x, "k": x, "v": x}, 196 ** -0.5)[0].shape
    torch.Size([1, 14, 14, 4, 32])
"""

from __future__ import annotations

import torch

from ...numerics import compute_dtype
from ...spec import ChannelSpec

NAME = "cpu"


def can_run(spec, tensors: dict) -> list[str]:
    if not isinstance(spec, ChannelSpec):
        return [f"cpu does not implement {type(spec).__name__} as channel attention"]
    return []


def run(spec, tensors: dict, scale: float):
    q, k, v = tensors["q"], tensors["k"], tensors["v"]
    compute = compute_dtype(q)
    hkv = k.shape[-2]
    qf = q.flatten(1, -3).to(compute).unflatten(2, (hkv, -1))  # [B, N, H_kv, G, D]
    kf, vf = k.flatten(1, -3).to(compute), v.flatten(1, -3).to(compute)
    probs = (torch.einsum("bnhgi,bnhj->bhgij", qf, kf) * scale).softmax(-1)
    out = torch.einsum("bhgij,bnhj->bnhgi", probs, vf).flatten(2, 3)
    return (out.reshape(q.shape).to(q.dtype),)
