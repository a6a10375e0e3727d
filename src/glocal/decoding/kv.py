"""The full KV cache: every key and value of the stream, causal attention of the newest query over all of them.

Shapes: k_t [B, H_kv, D], v_t [B, H_kv, D_v], q_t [B, H_q, D] -> out_t [B, H_q, D_v]; chunks [B, T, H, D].

Memory O(T): this is dense decoding, the baseline the bounded caches are measured against.

Example:
    >>> import torch, glocal
    >>> from glocal.decoding import KVCache
    >>> x = torch.randn(1, 6, 2, 8)
    >>> cache = KVCache()
    >>> for t in range(6):
    ...     out_t = cache.step(x[:, t], x[:, t], x[:, t])
    >>> torch.allclose(out_t, glocal.attention(x, x, x, is_causal=True)[:, -1], atol=1e-5)
    True
"""

from __future__ import annotations

import torch

from ..checks.decoding import cache_query
from ..ops import attention
from .base import KeyValueCache


class KVCache(KeyValueCache):
    """Every key and value so far (no RoPE of its own: rotate q and k before feeding them).

    Shapes: ``append(k_t [B, H_kv, D], v_t [B, H_kv, D_v])``, ``extend(k [B, T, H_kv, D], v)``,
    ``attend(q_t [B, H_q, D]) -> [B, H_q, D_v]`` (and lse [B, H_q] with ``return_lse``): the query
    attends every cached key with ``glocal.attention`` (GQA: H_q a multiple of H_kv).
    ``step(q_t, k_t, v_t)`` = append then attend. Memory: the keys and values of every token (the
    buffers grow by half when full, so at most 1.5x what is held); ``nbytes()`` says how much.

    Example:
        >>> import torch
        >>> from glocal.decoding import KVCache
        >>> cache = KVCache()
        >>> cache.extend(torch.randn(2, 5, 4, 16), torch.randn(2, 5, 4, 16))
        >>> cache.step(torch.randn(2, 8, 16), torch.randn(2, 4, 16), torch.randn(2, 4, 16)).shape, cache.length
        (torch.Size([2, 8, 16]), 6)
    """

    BUFFERS = ("keys", "values")

    def __init__(self):
        self.options = {}
        super().__init__()

    def _add(self, k, v) -> None:
        self.keys.extend(k.detach())
        self.values.extend(v.detach())
        self.length += k.shape[1]

    def kept(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values attended, ``[B, n, H_kv, D]`` each (views of the buffers)."""
        return self.keys.view(), self.values.view()

    def attend(self, q_t: torch.Tensor, scale: float | None = None, return_lse: bool = False):
        """The query of the newest token over every cached key: ``[B, H_q, D_v]`` (and lse ``[B, H_q]``)."""
        cache_query(self.layout, q_t, self.length)
        keys, values = self.kept()
        out, lse = attention(q_t[:, None], keys, values, scale=scale, return_lse=True)
        return (out[:, 0], lse[:, 0]) if return_lse else out[:, 0]
