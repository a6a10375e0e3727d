"""Modules for the global end of the spectrum: a qkv projection, one global op, an output projection.

Inputs are channels-last, ``[B, T, dim]`` for sequences and ``[B, *spatial, dim]`` for grids;
``dim`` is split into ``num_heads`` heads. Arguments are validated in ``__init__`` and the
input at the top of ``forward``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..checks.decoding import cache_decodable
from ..decoding import LinearAttentionState
from ..numerics import FEATURE_MAPS
from ..ops import (
    attention,
    channel_attention,
    compressed_attention,
    global_token_attention,
    inline_attention,
    linear_attention,
    local_concentration_attention,
)
from .attention import _QKVModule


class LinearAttention(_QKVModule):
    """Linear self-attention layer (glocal.linear_attention), with a decoding step.

    Shapes: x: [B, T, dim] -> [B, T, dim];  step: x_t: [B, dim] -> [B, dim] (the cache advances);
    state: (kv [B, num_heads, head_dim, head_dim], ksum [B, num_heads, head_dim]).

    Example:
        >>> import torch
        >>> from glocal.nn.global_modules import LinearAttention
        >>> layer = LinearAttention(dim=64, num_heads=4, is_causal=True)
        >>> y, state = layer(torch.randn(2, 50, 64), return_state=True)
        >>> cache = layer.new_cache(2)
        >>> y_next = layer.step(torch.randn(2, 64), cache)
        >>> y.shape, y_next.shape, cache.length
        (torch.Size([2, 50, 64]), torch.Size([2, 64]), 1)
    """

    def __init__(self, dim, num_heads, feature_map="elu1", is_causal=False, chunk_size=64, qkv_bias=True,
                 proj_drop=0.0):
        super().__init__(dim, num_heads, qkv_bias, proj_drop)
        checks.feature_map(feature_map, FEATURE_MAPS)
        checks.causal_flag(is_causal)
        checks.chunk_size(chunk_size)
        self.feature_map, self.is_causal, self.chunk_size = feature_map, is_causal, chunk_size

    def forward(self, x, state=None, return_state=False, cache: LinearAttentionState | None = None):
        """``x -> y`` (and the state after x with ``return_state``); with ``cache`` (empty, from ``new_cache``)
        the state is also kept in it: a prefill."""
        checks.module_input(x, self.dim, 1)
        if cache is not None:
            self._check_prefill(cache)
        q, k, v = self._qkv(x)
        if cache is not None:
            cache.extend(k, v)
        res = linear_attention(q, k, v, self.feature_map, self.is_causal, chunk_size=self.chunk_size,
                               initial_state=state, return_state=return_state)
        if return_state:
            return self._out(res[0]), res[1]
        return self._out(res)

    cache_type = LinearAttentionState

    def new_cache(self, batch: int | None = None) -> LinearAttentionState:
        """The decoding state of a causal layer (glocal.decoding.LinearAttentionState): O(1) in the stream."""
        cache_decodable(self.is_causal, type(self).__name__, "is_causal=False")
        return LinearAttentionState(self.feature_map)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, feature_map={self.feature_map!r}, is_causal={self.is_causal}"


class InLineAttention(_QKVModule):
    """InLine (injective linear) self-attention layer over a 1-, 2- or 3-D grid (glocal.inline_attention).

    Shapes: x: [B, *spatial, dim] -> [B, *spatial, dim]. Identity feature map and scale
    head_dim ** -0.5 / N, as the published InLine models use.

    Example:
        >>> import torch
        >>> from glocal.nn.global_modules import InLineAttention
        >>> InLineAttention(dim=64, num_heads=4)(torch.randn(2, 14, 14, 64)).shape
        torch.Size([2, 14, 14, 64])
    """

    def forward(self, x):
        checks.module_input(x, self.dim, None)
        q, k, v = self._qkv(x)
        n = x[0, ..., 0].numel()
        return self._out(inline_attention(q, k, v, "identity", scale=self.head_dim ** -0.5 / n))


class LocalConcentrationAttention(_QKVModule):
    """L2ViT-style layer: ReLU linear global attention with a learned temperature plus a neighborhood branch.

    Shapes: x: [B, *spatial, dim] -> [B, *spatial, dim] (glocal.local_concentration_attention).
    The temperature is one learned value per head, initialised to head_dim ** -0.5 as in L2ViT.

    Example:
        >>> import torch
        >>> from glocal.nn.global_modules import LocalConcentrationAttention
        >>> LocalConcentrationAttention(64, 4, kernel_size=7)(torch.randn(2, 14, 14, 64)).shape
        torch.Size([2, 14, 14, 64])
    """

    def __init__(self, dim, num_heads, kernel_size, dilation=1, denominator_min=100.0, qkv_bias=True,
                 proj_drop=0.0):
        super().__init__(dim, num_heads, qkv_bias, proj_drop)
        checks.l2vit_args(torch.empty(1, num_heads, 1), None, denominator_min)
        self.kernel_size, self.dilation, self.denominator_min = kernel_size, dilation, float(denominator_min)
        self.temperature = nn.Parameter(torch.full((num_heads,), self.head_dim ** -0.5))

    def forward(self, x):
        checks.module_input(x, self.dim, None)
        q, k, v = self._qkv(x)
        out = local_concentration_attention(q, k, v, self.kernel_size, self.dilation, self.temperature,
                                            self.denominator_min)
        return self._out(out)


class GlobalTokenAttention(_QKVModule):
    """Neighborhood self-attention plus global tokens (glocal.global_token_attention).

    Shapes: x: [B, *spatial, dim] -> [B, *spatial, dim] (and the global tokens' outputs
    [B, G, dim] with return_global=True). The global tokens are ``num_global_tokens`` learned
    embeddings projected by the layer's own qkv, or, with ``pool``, the input average-pooled by
    that factor per axis (GC ViT).

    Example:
        >>> import torch
        >>> from glocal.nn.global_modules import GlobalTokenAttention
        >>> layer = GlobalTokenAttention(64, 4, kernel_size=5, num_global_tokens=8)
        >>> layer(torch.randn(2, 16, 16, 64)).shape
        torch.Size([2, 16, 16, 64])
    """

    def __init__(self, dim, num_heads, kernel_size, num_global_tokens=None, pool=None, dilation=1,
                 is_causal=False, qkv_bias=True, proj_drop=0.0):
        super().__init__(dim, num_heads, qkv_bias, proj_drop)
        checks.causal_flag(is_causal)
        checks.module_global_tokens(num_global_tokens, pool)
        self.kernel_size, self.dilation, self.is_causal, self.pool = kernel_size, dilation, is_causal, pool
        self.global_tokens = None
        if num_global_tokens is not None:
            self.global_tokens = nn.Parameter(torch.randn(num_global_tokens, dim) * 0.02)

    def forward(self, x, return_global=False):
        checks.module_input(x, self.dim, None)
        q, k, v = self._qkv(x)
        gq = gk = gv = None
        if self.global_tokens is not None:
            gq, gk, gv = (t.expand(x.shape[0], -1, -1, -1) for t in self._qkv(self.global_tokens[None]))
        res = global_token_attention(q, k, v, self.kernel_size, gk, gv, gq, pool=self.pool, dilation=self.dilation,
                                     is_causal=self.is_causal, return_global=return_global)
        if return_global:
            return self._out(res[0]), self._out(res[1])
        return self._out(res)


class CompressedAttention(_QKVModule):
    """Spatial-reduction attention (PVT): full attention over keys/values reduced by a factor per axis.

    Shapes: x: [B, *spatial, dim] -> [B, *spatial, dim], ``ndim`` spatial axes.
    mode="pool": k, v average-pooled (glocal.compressed_attention). mode="conv": as PVT, the
    input is reduced by a strided convolution (kernel = stride = reduction, the grid zero-padded
    to a multiple of it) and a LayerNorm before the key/value projection.

    Example:
        >>> import torch
        >>> from glocal.nn.global_modules import CompressedAttention
        >>> CompressedAttention(64, 4, reduction=4, ndim=2, mode="conv")(torch.randn(2, 16, 16, 64)).shape
        torch.Size([2, 16, 16, 64])
    """

    def __init__(self, dim, num_heads, reduction, ndim=2, mode="pool", qkv_bias=True, proj_drop=0.0):
        super().__init__(dim, num_heads, qkv_bias, proj_drop)
        checks.choice("mode", mode, ("pool", "conv"))
        checks.choice("ndim", ndim, (1, 2, 3))
        self.reduction, self.ndim, self.mode = checks.reduction(reduction, ndim), ndim, mode
        if mode == "conv":
            conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[ndim - 1]
            self.sr = conv(dim, dim, kernel_size=self.reduction, stride=self.reduction)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        checks.module_input(x, self.dim, self.ndim)
        if self.mode == "pool":
            q, k, v = self._qkv(x)
            return self._out(compressed_attention(q, k, v, self.reduction))
        pad = []
        for length, r in zip(reversed(x.shape[1:-1]), reversed(self.reduction)):
            pad += [0, (-length) % r]
        reduced = self.sr(F.pad(x.movedim(-1, 1), pad)).movedim(1, -1)
        reduced = self.norm(reduced.reshape(x.shape[0], -1, self.dim))
        w_q, w_k, w_v = self.qkv.weight.chunk(3)
        b_q, b_k, b_v = self.qkv.bias.chunk(3) if self.qkv.bias is not None else (None, None, None)
        heads = (self.num_heads, self.head_dim)
        q = F.linear(x, w_q, b_q).unflatten(-1, heads)
        k = F.linear(reduced, w_k, b_k).unflatten(-1, heads)
        v = F.linear(reduced, w_v, b_v).unflatten(-1, heads)
        out = attention(q.reshape(x.shape[0], -1, *heads), k, v)
        return self._out(out.reshape(q.shape))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reduction={self.reduction}, mode={self.mode!r}"


class ChannelAttention(_QKVModule):
    """Cross-covariance (channel) attention layer, XCiT style (glocal.channel_attention).

    Shapes: x: [B, *spatial, dim] -> [B, *spatial, dim]. q and k are L2-normalised along the
    tokens and the logits scaled by a learned per-head temperature (initialised to 1).

    Example:
        >>> import torch
        >>> from glocal.nn.global_modules import ChannelAttention
        >>> ChannelAttention(64, 4)(torch.randn(2, 196, 64)).shape
        torch.Size([2, 196, 64])
    """

    def __init__(self, dim, num_heads, qkv_bias=True, proj_drop=0.0):
        super().__init__(dim, num_heads, qkv_bias, proj_drop)
        self.temperature = nn.Parameter(torch.ones(num_heads))

    def forward(self, x):
        checks.module_input(x, self.dim, None)
        q, k, v = self._qkv(x)
        tokens = tuple(range(1, x.dim() - 1))
        q = F.normalize(q, dim=tokens) * self.temperature[:, None]
        k = F.normalize(k, dim=tokens)
        return self._out(channel_attention(q, k, v, scale=1.0))
