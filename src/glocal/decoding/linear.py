"""The state of causal linear attention: two fixed-size tensors, whatever the stream's length.

Shapes: q_t [B, H_q, D_k], k_t [B, H_kv, D_k], v_t [B, H_kv, D_v] -> out_t [B, H_q, D_v];
state (kv [B, H_kv, D_k, D_v], ksum [B, H_kv, D_k]), float32 (float64 for float64 inputs).

Example:
    >>> import torch, glocal
    >>> from glocal.decoding import LinearAttentionState
    >>> x = torch.randn(1, 30, 2, 8)
    >>> state = LinearAttentionState()
    >>> for t in range(30):
    ...     out_t = state.step(x[:, t], x[:, t], x[:, t])
    >>> torch.allclose(out_t, glocal.linear_attention(x, x, x, is_causal=True)[:, -1], atol=1e-5)
    True
"""

from __future__ import annotations

import torch

from ..checks import feature_map as check_feature_map
from ..checks import scale as check_scale
from ..checks.decoding import cache_tokens
from ..numerics import FEATURE_MAPS
from ..ops import linear_attention, linear_attention_step
from .base import DecodingCache


class LinearAttentionState(DecodingCache):
    """Causal linear attention decoded token by token through ``glocal.linear_attention_step``.

    Shapes: ``step(q_t [B, H_q, D_k], k_t [B, H_kv, D_k], v_t [B, H_kv, D_v]) -> [B, H_q, D_v]``;
    ``extend(k [B, T, H_kv, D_k], v)`` adds a chunk's keys without reading (a prefill);
    ``state``: (kv, ksum) or None before the first token.

    Memory O(1) in T: kv [B, H_kv, D_k, D_v] and ksum [B, H_kv, D_k]. ``feature_map``, ``normalize``
    and ``scale`` as in ``glocal.linear_attention``; token by token it equals the causal forward.

    Example:
        >>> import torch
        >>> from glocal.decoding import LinearAttentionState
        >>> state = LinearAttentionState(feature_map="elu1")
        >>> state.extend(torch.randn(2, 100, 4, 16), torch.randn(2, 100, 4, 16))
        >>> out = state.step(torch.randn(2, 4, 16), torch.randn(2, 4, 16), torch.randn(2, 4, 16))
        >>> out.shape, state.length, state.nbytes()
        (torch.Size([2, 4, 16]), 101, 8704)
    """

    TENSORS = ("kv", "ksum")

    def __init__(self, feature_map="elu1", normalize: bool = True, scale: float | None = None):
        check_feature_map(feature_map, FEATURE_MAPS)
        check_scale(scale, "1")
        self.feature_map, self.normalize, self.scale = feature_map, bool(normalize), scale
        name = feature_map if isinstance(feature_map, str) else getattr(feature_map, "__name__", repr(feature_map))
        self.options = {"feature_map": name, "normalize": self.normalize, "scale": scale}
        super().__init__()

    @property
    def state(self):
        """(kv, ksum), or None before the first token."""
        return None if self.kv is None else (self.kv, self.ksum)

    def _set(self, state, count: int) -> None:
        self.kv, self.ksum = (t.detach() for t in state)
        self.length += count

    def step(self, q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
        """Add token t to the state, then read it with q_t: ``[B, H_q, D_v]``."""
        cache_tokens(self.layout, k_t, v_t, rope=False)
        out, state = linear_attention_step(q_t, k_t, v_t, self.state, self.feature_map, self.normalize, self.scale)
        self._fix_layout(k_t, v_t)
        self._set(state, 1)
        return out

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add a chunk of keys and values ``[B, T, H_kv, D]`` to the state (no query reads it)."""
        cache_tokens(self.layout, k, v, rope=False)
        # One non-causal query over the chunk returns the state after it (the query's output is discarded).
        _, state = linear_attention(k[:, :1], k, v, self.feature_map, normalize=self.normalize,
                                    initial_state=self.state, return_state=True)
        self._fix_layout(k, v)
        self._set(state, k.shape[1])
