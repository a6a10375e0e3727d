"""Reference of channel attention: every (channel i, channel j) product over the tokens materialised.

Shapes: q, k, v [B, *spatial, H, D] (H_q a multiple of H_kv, v with k's head dim) -> out [B, *spatial, H_q, D]

Example:
    >>> import torch
    >>> from glocal.backends.reference.channel import channel_attention_reference
    >>> x = torch.randn(1, 20, 2, 8)
    >>> channel_attention_reference(x, x, x).shape
    torch.Size([1, 20, 2, 8])
"""

from __future__ import annotations

from ...numerics import compute_dtype, repeat_kv
from ...spec import ChannelSpec

NAME = "reference"


def can_run(spec, tensors: dict) -> list[str]:
    if not isinstance(spec, ChannelSpec):
        return [f"reference does not implement {type(spec).__name__} as channel attention"]
    return []


def run(spec, tensors: dict, scale: float):
    """``(out,)``: A_ij = softmax_j(scale * sum_n q[n, i] k[n, j]) per head, out[n, i] = sum_j A_ij v[n, j]."""
    q, k, v = tensors["q"], tensors["k"], tensors["v"]
    compute = compute_dtype(q)
    hq = q.shape[-2]
    qf = q.flatten(1, -3).to(compute)
    kf = repeat_kv(k.flatten(1, -3).to(compute), hq)
    vf = repeat_kv(v.flatten(1, -3).to(compute), hq)
    products = qf[..., :, None] * kf[..., None, :]  # [B, N, H, D_i, D_j]
    probs = (products.sum(1) * scale).softmax(-1)  # [B, H, D_i, D_j]
    out = (probs[:, None] * vf[..., None, :]).sum(-1)  # [B, N, H, D_i]
    return (out.reshape(q.shape).to(q.dtype),)


def channel_attention_reference(q, k, v, scale=None):
    """Naive reference of :func:`glocal.channel_attention` (``scale=None`` means N ** -0.5, N tokens).

    Example:
        >>> import torch
        >>> x = torch.randn(1, 20, 2, 8)
        >>> channel_attention_reference(x, x, x).shape
        torch.Size([1, 20, 2, 8])
    """
    n = q.flatten(1, -3).shape[1]
    return run(ChannelSpec(), {"q": q, "k": k, "v": v}, n ** -0.5 if scale is None else float(scale))[0]
