"""RAT attention layer: projections, a sigmoid forget gate, RoPE over the chunk index, an output gate, decoding.

Shapes: x [B, T, dim] -> [B, T, dim]; step: x_t [B, dim] -> y_t [B, dim] (a glocal.decoding.RATCache advances).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import checks
from ..checks.decoding import cache_kind, cache_prefill
from ..decoding import RATCache
from ..numerics import compute_dtype
from ..ops import rat_attention
from .attention import _QKVModule
from .rope import rope


class RATAttention(_QKVModule):
    """RAT self-attention layer (glocal.rat_attention), causal, with token-by-token decoding.

    Shapes: x: [B, T, dim] -> [B, T, dim];  step: x_t: [B, dim] -> y_t [B, dim] (the cache advances).

    As RAT (Wei et al. 2025): q, k, v projections; a forget gate g = sigmoid(W_g x + b_g) applied
    to both the keys and the values inside chunks of ``chunk_size`` positions, with b_g
    initialised to log(u), u ~ Uniform(1, chunk_size - 1), so g starts between 1/2 and
    (chunk_size - 1) / chunk_size (RAT's code; b_g = 0 for chunk_size <= 2); attention across the
    chunk states; an output gate sigmoid(W_z x) multiplying the result before the output
    projection. Inter-chunk RoPE (``rope_theta``, None for none): a query in chunk c and the
    state of chunk j are rotated by c and j, so their score depends on c - j; the own running
    state is rotated by its own chunk index, like every state of that chunk in RAT's code, so it
    sits at distance 0 from its query. RAT rotates k~ after the recurrence; here k is rotated by
    its chunk index before it, which is the same when the gate is equal on the two channels of
    each rotated pair (i, i + head_dim / 2), so with RoPE the gate has head_dim / 2 channels
    per head, each used for a pair (RAT's has head_dim). The RMSNorm and residual around RAT's
    layer belong to the block, not here; RAT also shares q and k across groups of heads, here
    every head has its own.

    Example:
        >>> import torch
        >>> from glocal.nn import RATAttention
        >>> layer = RATAttention(dim=64, num_heads=4, chunk_size=16)
        >>> layer(torch.randn(2, 50, 64)).shape
        torch.Size([2, 50, 64])
        >>> cache = layer.new_cache(2)
        >>> y = layer.step(torch.randn(2, 64), cache)
        >>> y.shape, cache.length
        (torch.Size([2, 64]), 1)
    """

    def __init__(self, dim, num_heads, chunk_size, rope_theta=10000.0, qkv_bias=True, proj_drop=0.0):
        super().__init__(dim, num_heads, qkv_bias, proj_drop)
        checks.chunk_size(chunk_size)
        checks.rat_module_args(self.head_dim, rope_theta)
        self.chunk_size = int(chunk_size)
        self.rope_theta = None if rope_theta is None else float(rope_theta)
        gate_channels = self.head_dim // 2 if self.rope_theta is not None else self.head_dim
        self.forget_gate = nn.Linear(dim, num_heads * gate_channels)
        self.output_gate = nn.Linear(dim, dim)
        with torch.no_grad():
            self.forget_gate.bias.uniform_(1.0, float(max(self.chunk_size - 1, 1))).log_()

    def _forget(self, x):
        """The forget gate [..., H, head_dim], in x's dtype (the sigmoid in float32 at least, as RAT)."""
        logits = self.forget_gate(x).unflatten(-1, (self.num_heads, -1))
        gate = torch.sigmoid(logits.to(compute_dtype(logits))).to(x.dtype)
        return torch.cat([gate, gate], -1) if self.rope_theta is not None else gate

    def _rotate(self, x, chunk_index):
        """x [B, T, H, head_dim] rotated by each position's chunk index (no-op without RoPE)."""
        return x if self.rope_theta is None else rope(x, chunk_index, self.rope_theta)

    def _output(self, x, out):
        """The output gate and projection: out [..., H, head_dim] -> [..., dim]."""
        return self.proj_drop(self.proj(torch.sigmoid(self.output_gate(x)) * out.flatten(-2).to(x.dtype)))

    def forward(self, x, cache: RATCache | None = None):
        """``x -> y``; with ``cache`` (empty, from ``new_cache``) the chunk states are also kept: a prefill."""
        checks.module_input(x, self.dim, 1)
        if cache is not None:
            cache_kind(cache, RATCache, "RATAttention.forward")
            cache_prefill(cache.length, "RATAttention.forward")
        q, k, v = self._qkv(x)
        chunk_index = torch.arange(x.shape[1], device=x.device) // self.chunk_size
        gate = self._forget(x)
        k = self._rotate(k, chunk_index)
        out = rat_attention(self._rotate(q, chunk_index), k, v, gate, gate, self.chunk_size)
        if cache is not None:
            cache.extend(k, v, gate, gate)
        return self._output(x, out)

    def new_cache(self, batch: int | None = None) -> RATCache:
        """An empty decoding cache (glocal.decoding.RATCache): O(T / chunk_size) states, not O(T)."""
        return RATCache(self.chunk_size)

    def step(self, x_t, cache: RATCache):
        """One decoding step: ``x_t [B, dim] -> y_t [B, dim]``; ``cache`` (from ``new_cache``) advances by a token.

        Fed token by token it equals the forward over the whole sequence. Per token: the
        running states advance, the query attends the completed chunks' states and its own
        running state; when a chunk completes its states stay in the cache.
        """
        checks.module_input(x_t, self.dim, 0)
        cache_kind(cache, RATCache, "RATAttention.step")
        chunk_index = torch.tensor([cache.length // self.chunk_size], device=x_t.device)
        q, k, v = (t[:, None] for t in self._qkv(x_t))  # [B, 1, H, head_dim]
        q, k = self._rotate(q, chunk_index)[:, 0], self._rotate(k, chunk_index)[:, 0]
        gate = self._forget(x_t)
        out = cache.step(q, k, v[:, 0], gate, gate, self.head_dim ** -0.5)
        return self._output(x_t, out)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunk_size={self.chunk_size}, rope_theta={self.rope_theta}"
