"""Attention modules: a qkv projection, one of glocal's ops, an output projection.

Validation happens in ``__init__`` (arguments) and at the top of ``forward``
(input shape); the op itself is called through ``glocal.ops``.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import checks
from ..checks.decoding import cache_decodable, cache_kind, cache_prefill
from ..decoding import KVCache, SlidingWindowCache
from ..ops import attention, neighborhood_attention


class _QKVModule(nn.Module):
    """Shared shell of every attention layer: ``x → qkv → op → proj → dropout``."""

    def __init__(self, dim, num_heads, qkv_bias=True, proj_drop=0.0):
        super().__init__()
        checks.module_dims(dim, num_heads)
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv(self, x):
        """``[B, *, dim]`` → three ``[B, *, H, head_dim]``."""
        return self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(-3)

    def _out(self, out):
        """``[B, *, H, head_dim]`` → ``[B, *, dim]``."""
        return self.proj_drop(self.proj(out.flatten(-2)))

    # Decoding, for the layers whose cache reads q, k, v as they come out of the projection.
    cache_type: type | None = None

    def _check_prefill(self, cache) -> None:
        cache_kind(cache, self.cache_type, f"{type(self).__name__}.forward")
        cache_prefill(cache.length, f"{type(self).__name__}.forward")

    def step(self, x_t: torch.Tensor, cache) -> torch.Tensor:
        """One decoding step: ``x_t [B, dim] -> y_t [B, dim]``; ``cache`` (from ``new_cache``) advances by a token.

        Token by token (after ``new_cache``, or a prefill ``layer(x, cache=cache)``) it equals the causal
        forward over the whole stream."""
        checks.module_input(x_t, self.dim, 0)
        cache_kind(cache, self.cache_type, f"{type(self).__name__}.step")
        q, k, v = self._qkv(x_t)
        scale = getattr(self, "scale", None)
        return self._out(cache.step(q, k, v) if scale is None else cache.step(q, k, v, scale))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"


class _NeighborhoodAttention(_QKVModule):
    ndim: int = 0

    def __init__(self, dim, num_heads, kernel_size, stride=1, dilation=1, is_causal=False,
                 qkv_bias=True, qk_scale=None, proj_drop=0.0):
        super().__init__(dim, num_heads, qkv_bias, proj_drop)
        checks.scale(qk_scale)
        self.kernel_size = checks.per_axis("kernel_size", kernel_size, self.ndim, int)
        self.stride = checks.per_axis("stride", stride, self.ndim, int)
        self.dilation = checks.per_axis("dilation", dilation, self.ndim, int)
        self.is_causal = checks.per_axis("is_causal", is_causal, self.ndim, bool)
        checks.window_args(self.kernel_size, self.stride, self.dilation)
        self.scale = qk_scale

    def forward(self, x: torch.Tensor, cache: SlidingWindowCache | None = None) -> torch.Tensor:
        """``x -> y``; with ``cache`` (empty, from ``new_cache``; causal 1-D) the window is also kept: a prefill."""
        checks.module_input(x, self.dim, self.ndim)
        if cache is not None:
            self._check_prefill(cache)
        q, k, v = self._qkv(x)
        out = neighborhood_attention(q, k, v, self.kernel_size, self.stride, self.dilation, self.is_causal,
                                     scale=self.scale)
        if cache is not None:
            cache.extend(k, v)
        return self._out(out)

    cache_type = SlidingWindowCache

    def new_cache(self, batch: int | None = None, sinks: int = 0) -> SlidingWindowCache:
        """The decoding cache of a causal 1-D layer with stride 1: the last ``(kernel_size - 1) * dilation + 1``
        tokens (and ``sinks`` first tokens: StreamingLLM's attention sinks, which the forward does not have)."""
        cache_decodable(self.ndim == 1 and self.is_causal == (True,) and self.stride == (1,), type(self).__name__,
                        f"ndim={self.ndim}, is_causal={self.is_causal}, stride={self.stride} (decoding needs "
                        f"stride 1)")
        return SlidingWindowCache(self.kernel_size[0], sinks=sinks, dilation=self.dilation[0])

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, dilation={self.dilation}, is_causal={self.is_causal}")


class NeighborhoodAttention1D(_NeighborhoodAttention):
    """1-D neighborhood (sliding-window) self-attention layer.

    Shapes: x: [B, L, dim] → [B, L, dim]; dim is split into num_heads heads.

    Example:
        >>> import torch, glocal.nn
        >>> layer = glocal.nn.NeighborhoodAttention1D(dim=64, num_heads=4, kernel_size=7)
        >>> layer(torch.randn(2, 100, 64)).shape
        torch.Size([2, 100, 64])
    """

    ndim = 1


class NeighborhoodAttention2D(_NeighborhoodAttention):
    """2-D neighborhood self-attention layer.

    Shapes: x: [B, X, Y, dim] → [B, X, Y, dim]; dim is split into num_heads heads.

    Example:
        >>> import torch, glocal.nn
        >>> layer = glocal.nn.NeighborhoodAttention2D(dim=64, num_heads=4, kernel_size=7, dilation=2)
        >>> layer(torch.randn(2, 16, 16, 64)).shape
        torch.Size([2, 16, 16, 64])
    """

    ndim = 2


class NeighborhoodAttention3D(_NeighborhoodAttention):
    """3-D neighborhood self-attention layer.

    Shapes: x: [B, X, Y, Z, dim] → [B, X, Y, Z, dim]; dim is split into num_heads heads.

    Example:
        >>> import torch, glocal.nn
        >>> layer = glocal.nn.NeighborhoodAttention3D(dim=32, num_heads=2, kernel_size=(3, 5, 5))
        >>> layer(torch.randn(1, 4, 8, 8, 32)).shape
        torch.Size([1, 4, 8, 8, 32])
    """

    ndim = 3


class Attention(_QKVModule):
    """Full self-attention layer over sequences (causal optional).

    Shapes: x: [B, T, dim] → [B, T, dim]; dim is split into num_heads heads.

    Example:
        >>> import torch, glocal.nn
        >>> layer = glocal.nn.Attention(dim=64, num_heads=4, is_causal=True)
        >>> layer(torch.randn(2, 50, 64)).shape
        torch.Size([2, 50, 64])
    """

    def __init__(self, dim, num_heads, is_causal=False, qkv_bias=True, qk_scale=None, proj_drop=0.0):
        super().__init__(dim, num_heads, qkv_bias, proj_drop)
        checks.causal_flag(is_causal)
        checks.scale(qk_scale)
        self.is_causal, self.scale = is_causal, qk_scale

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """``x -> y``; with ``cache`` (empty, from ``new_cache``; causal) the keys and values are kept: a prefill."""
        checks.module_input(x, self.dim, 1)
        if cache is not None:
            self._check_prefill(cache)
        q, k, v = self._qkv(x)
        if cache is not None:
            cache.extend(k, v)
        return self._out(attention(q, k, v, is_causal=self.is_causal, scale=self.scale))

    cache_type = KVCache

    def new_cache(self, batch: int | None = None) -> KVCache:
        """The decoding cache of a causal layer: every key and value (glocal.decoding.KVCache)."""
        cache_decodable(self.is_causal, type(self).__name__, "is_causal=False")
        return KVCache()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, is_causal={self.is_causal}"
