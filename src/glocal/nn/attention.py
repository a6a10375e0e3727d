"""Attention modules: a qkv projection, one of glocal's ops, an output projection.

Validation happens in ``__init__`` (arguments) and at the top of ``forward``
(input shape); the op itself is called through ``glocal.ops``.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import checks
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        checks.module_input(x, self.dim, self.ndim)
        q, k, v = self._qkv(x)
        out = neighborhood_attention(q, k, v, self.kernel_size, self.stride, self.dilation, self.is_causal,
                                     scale=self.scale)
        return self._out(out)

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        checks.module_input(x, self.dim, 1)
        q, k, v = self._qkv(x)
        return self._out(attention(q, k, v, is_causal=self.is_causal, scale=self.scale))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, is_causal={self.is_causal}"
