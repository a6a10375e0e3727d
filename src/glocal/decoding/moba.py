"""Routed decoding for MoBA: every key and value, block means kept incrementally, one query routed per token.

Shapes: k_t [B, H_kv, D], v_t [B, H_kv, D_v], q_t [B, H_q, D] -> out_t [B, H_q, D_v]; chunks [B, T, H, D];
block means [B, n_blocks, H_kv, D] (float32; float64 for float64 keys).

Example:
    >>> import torch, glocal
    >>> from glocal.decoding import MoBACache
    >>> x = torch.randn(1, 50, 2, 8)
    >>> cache = MoBACache(block_size=8, top_k=2)
    >>> for t in range(50):
    ...     out_t = cache.step(x[:, t], x[:, t], x[:, t])
    >>> torch.allclose(out_t, glocal.moba_attention(x, x, x, block_size=8, top_k=2)[:, -1], atol=1e-5)
    True
"""

from __future__ import annotations

import torch

from ..checks import routing
from ..checks.decoding import cache_count, cache_query
from ..numerics import compute_dtype
from ..ops import moba_attention
from .base import KeyValueCache


class MoBACache(KeyValueCache):
    """Keys, values and the running sum of every key block, for causal MoBA decoding (no RoPE of its own).

    Shapes: ``append(k_t [B, H_kv, D], v_t [B, H_kv, D_v])``, ``extend(k [B, T, H_kv, D], v)``,
    ``attend(q_t [B, H_q, D]) -> [B, H_q, D_v]``; ``step`` = append then attend.

    The newest query routes itself with ``glocal.moba_attention`` at T_q = 1 (its own block, token-causal,
    plus the ``top_k - 1`` best-gated earlier blocks, or the ``threshold`` rule) using the block means
    kept here, so per token the gate reads n_blocks = ceil(T / block_size) means and the attention
    only the selected blocks' keys: compute O(top_k * block_size + T / block_size) per token. Memory
    O(T): every key and value (a later query may route to any block) plus one mean per block.
    Equal, token by token, to the causal ``glocal.moba_attention`` forward over the whole stream.

    Example:
        >>> import torch
        >>> from glocal.decoding import MoBACache
        >>> cache = MoBACache(block_size=4, top_k=2)
        >>> cache.extend(torch.randn(1, 10, 2, 8), torch.randn(1, 10, 2, 8))
        >>> cache.block_means().shape
        torch.Size([1, 3, 2, 8])
    """

    BUFFERS = ("keys", "values", "block_sums")

    def __init__(self, block_size: int, top_k: int | None = None, threshold: float | None = None):
        self.block_size = cache_count("block_size", block_size, 1)
        routing(top_k, threshold)
        self.top_k = None if top_k is None else int(top_k)
        self.threshold = None if threshold is None else float(threshold)
        self.options = {"block_size": self.block_size, "top_k": self.top_k, "threshold": self.threshold}
        super().__init__()

    def _add(self, k, v) -> None:
        k, v = k.detach(), v.detach()
        self.keys.extend(k)
        self.values.extend(v)
        # Block sums: the open last block gets its new keys, whole new blocks get theirs; the mean divides by
        # the real count, so a partial block averages only the keys it holds.
        start, end = self.length, self.length + k.shape[1]
        blocks = torch.arange(start, end, device=k.device) // self.block_size
        n_blocks = -(-end // self.block_size)
        sums = self.block_sums
        if n_blocks > sums.length:
            sums.extend(k.new_zeros((k.shape[0], n_blocks - sums.length, *k.shape[2:]), dtype=compute_dtype(k)))
        sums.view().index_add_(1, blocks, k.to(sums.data.dtype))
        self.length = end

    def block_means(self) -> torch.Tensor:
        """The mean of the real keys of every block so far, ``[B, n_blocks, H_kv, D]``."""
        sums = self.block_sums.view()
        counts = torch.full((sums.shape[1],), float(self.block_size), dtype=sums.dtype, device=sums.device)
        counts[-1] = self.length - (sums.shape[1] - 1) * self.block_size
        return sums / counts[:, None, None]

    def kept(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every cached key and value, ``[B, T, H_kv, D]`` each (views of the buffers)."""
        return self.keys.view(), self.values.view()

    def attend(self, q_t: torch.Tensor, scale: float | None = None, return_lse: bool = False):
        """The newest token's query, routed over the cached blocks: ``[B, H_q, D_v]`` (and lse ``[B, H_q]``)."""
        cache_query(self.layout, q_t, self.length)
        keys, values = self.kept()
        out, lse = moba_attention(q_t[:, None], keys, values, self.block_size, top_k=self.top_k, is_causal=True,
                                  threshold=self.threshold, scale=scale, return_lse=True,
                                  block_means=self.block_means())
        return (out[:, 0], lse[:, 0]) if return_lse else out[:, 0]


