"""Parallax attention layer: q, r (the learned probe), k, v projections, RoPE, glocal.parallax_attention, a projection.

Inputs are channels-last sequences ``[B, T, dim]``; ``dim`` is split into ``num_heads`` heads.
Arguments are validated in ``__init__``, the input at the top of ``forward``.

Example:
    >>> import torch
    >>> from glocal.nn import ParallaxAttention
    >>> ParallaxAttention(64, 4, window_size=16)(torch.randn(2, 50, 64)).shape
    torch.Size([2, 50, 64])
"""

from __future__ import annotations

import torch
from torch import nn

from .. import checks
from ..ops import parallax_attention
from .rope import rope


class ParallaxAttention(nn.Module):
    """Parallax self-attention layer (glocal.parallax_attention) with rotary position embeddings.

    Shapes: x: [B, T, dim] -> [B, T, dim]; positions: None (0 .. T-1), [T] or [B, T].

    Four projections of the input, q, r, k and v (r is Parallax's learned probe, a second
    query-like projection); RoPE rotates q, r and k by the token positions, so q.k and r.k, and
    with them the output, depend on position differences only; then the op (a causal or centred
    window of ``window_size`` keys, None: every key / every earlier key) and an output projection.
    Every projection has PyTorch's default initialisation; zeroing ``r_proj`` gives softmax attention.

    Example:
        >>> import torch
        >>> from glocal.nn import ParallaxAttention
        >>> layer = ParallaxAttention(dim=64, num_heads=4, window_size=32, is_causal=True)
        >>> layer(torch.randn(2, 100, 64)).shape
        torch.Size([2, 100, 64])
    """

    def __init__(self, dim, num_heads, window_size=None, is_causal=True, qkv_bias=True, rope_theta=10000.0,
                 qk_scale=None, proj_drop=0.0):
        super().__init__()
        checks.module_dims(dim, num_heads)
        checks.rope_head_dim(dim // num_heads)
        checks.window_size(window_size)
        checks.causal_flag(is_causal)
        checks.rope_theta(rope_theta)
        checks.scale(qk_scale)
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.window_size, self.is_causal = window_size, is_causal
        self.rope_theta, self.scale = float(rope_theta), qk_scale
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.r_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        checks.module_input(x, self.dim, 1)
        checks.module_positions(positions, x.shape[1])
        if positions is None:
            positions = torch.arange(x.shape[1], device=x.device)
        heads = (self.num_heads, self.head_dim)
        q, r, k = (rope(p(x).unflatten(-1, heads), positions, self.rope_theta)
                   for p in (self.q_proj, self.r_proj, self.k_proj))
        v = self.v_proj(x).unflatten(-1, heads)
        out = parallax_attention(q, r, k, v, self.window_size, self.is_causal, self.scale)
        return self.proj_drop(self.proj(out.flatten(-2)))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, "
                f"is_causal={self.is_causal}")
