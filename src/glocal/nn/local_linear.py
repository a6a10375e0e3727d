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
from ..checks.decoding import cache_decodable, cache_kind, cache_prefill
from ..decoding import KVCache, SlidingWindowCache
from ..numerics import compute_dtype
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

    def _project(self, x, positions):
        heads = (self.num_heads, self.head_dim)
        q, r, k = (rope(p(x).unflatten(-1, heads), positions, self.rope_theta)
                   for p in (self.q_proj, self.r_proj, self.k_proj))
        return q, r, k, self.v_proj(x).unflatten(-1, heads)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        """``x -> y``; with ``cache`` (empty, from ``new_cache``) the keys and values are also kept: a prefill."""
        checks.module_input(x, self.dim, 1)
        checks.module_positions(positions, x.shape[1])
        if cache is not None:
            cache_kind(cache, self._cache_type(), "ParallaxAttention.forward")
            cache_prefill(cache.length, "ParallaxAttention.forward")
            positions = None  # decoding positions are the stream's: 0 .. T - 1
        if positions is None:
            positions = torch.arange(x.shape[1], device=x.device)
        q, r, k, v = self._project(x, positions)
        if cache is not None:
            cache.extend(k, v)
        out = parallax_attention(q, r, k, v, self.window_size, self.is_causal, self.scale)
        return self.proj_drop(self.proj(out.flatten(-2)))

    def _cache_type(self):
        return KVCache if self.window_size is None else SlidingWindowCache

    def new_cache(self, batch: int | None = None):
        """The decoding cache of a causal layer: the last ``window_size`` keys and values (a SlidingWindowCache),
        or all of them (a KVCache) for ``window_size=None``; keys rotated by their stream positions."""
        cache_decodable(self.is_causal, "ParallaxAttention", "is_causal=False")
        return KVCache() if self.window_size is None else SlidingWindowCache(self.window_size)

    def step(self, x_t: torch.Tensor, cache) -> torch.Tensor:
        """One decoding step: ``x_t [B, dim] -> y_t [B, dim]`` at stream position ``cache.length``.

        The newest query reads the cached keys with the op's formula, out = o (1 + r . mu) -
        sum_j s_j (r . k_j) v_j (o = sum_j s_j v_j, mu = sum_j s_j k_j, s the softmax); token by
        token it equals the causal forward."""
        checks.module_input(x_t, self.dim, 0)
        cache_kind(cache, self._cache_type(), "ParallaxAttention.step")
        q, r, k, v = (t[:, 0] for t in self._project(x_t[:, None], torch.tensor([cache.length], device=x_t.device)))
        cache.append(k, v)
        keys, values = cache.kept()  # [B, n, H, D]
        compute = compute_dtype(q)
        q, r, keys, values = (t.to(compute) for t in (q, r, keys, values))
        scale = self.head_dim ** -0.5 if self.scale is None else self.scale
        s = torch.softmax(torch.einsum("bhd,bnhd->bhn", q, keys) * scale, -1)
        mu = torch.einsum("bhn,bnhd->bhd", s, keys)
        o = torch.einsum("bhn,bnhd->bhd", s, values)
        rk = torch.einsum("bhd,bnhd->bhn", r, keys)
        out = o * (1 + (r * mu).sum(-1, keepdim=True)) - torch.einsum("bhn,bnhd->bhd", s * rk, values)
        return self.proj_drop(self.proj(out.to(x_t.dtype).flatten(-2)))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, "
                f"is_causal={self.is_causal}")
