"""A sliding window plus attention sinks in a ring buffer: memory O(window + sinks), never O(T).

Shapes: k_t [B, H_kv, D], v_t [B, H_kv, D_v], q_t [B, H_q, D] -> out_t [B, H_q, D_v]; chunks [B, T, H, D].

The query of the newest token, at stream position p, attends the first ``sinks`` tokens of the
stream and the ``window`` tokens ending at itself (with ``dilation`` d: p, p - d, ..., p - (window - 1) d),
each key once (StreamingLLM, Xiao et al. 2024, for sinks; glocal's causal 1-D neighborhood for the window).

Example:
    >>> import torch, glocal
    >>> from glocal.decoding import SlidingWindowCache
    >>> x = torch.randn(1, 40, 2, 8)
    >>> cache = SlidingWindowCache(window=8)
    >>> for t in range(40):
    ...     out_t = cache.step(x[:, t], x[:, t], x[:, t])
    >>> torch.allclose(out_t, glocal.na1d(x, x, x, kernel_size=8, is_causal=True)[:, -1], atol=1e-5)
    True
"""

from __future__ import annotations

import torch

from ..checks.decoding import cache_count, cache_positions, cache_query
from ..nn.rope import RopeAt, rope
from ..ops import attention
from .base import KeyValueCache


class SlidingWindowCache(KeyValueCache):
    """A ring buffer of the last ``window`` tokens (``(window - 1) * dilation + 1`` with a dilation) plus the
    first ``sinks`` tokens.

    Shapes: ``append(k_t [B, H_kv, D], v_t [B, H_kv, D_v])``, ``extend(k [B, T, H_kv, D], v)``,
    ``attend(q_t [B, H_q, D]) -> [B, H_q, D_v]`` (lse [B, H_q] with ``return_lse``); ``step`` = append
    then attend. The query is the newest token's (stream position p = length - 1); it attends key j
    iff j < sinks, or p - j < span with (p - j) % dilation == 0 (span = (window - 1) * dilation + 1).

    Memory: two preallocated buffers of ``sinks + span`` tokens, written in place; ``nbytes()`` is
    the same at token 10^3 and 10^6.

    Positions (``rope_theta`` given: the cache rotates q and k itself, so feed them before RoPE):
        "absolute"  each key keeps its stream position, the query is at p (equal to the causal
                    sliding-window forward over the whole stream);
        "cache"     StreamingLLM's re-indexing: the kept tokens in cache order (sinks, then the window
                    oldest first) sit at positions 0 .. n - 1 and the query at n - 1. RoPE scores depend
                    on position differences only, and the window is contiguous and ends at the query,
                    so window keys keep their stream rotation and only the sinks are rotated, by the
                    number of evicted tokens, from a copy at their own positions (O(sinks) work per token, not
                    O(window)); the scores equal rotating every kept key by its slot.
    ``rope_theta=None``: the cache rotates nothing (positions "absolute"; rotate q and k yourself).

    Example:
        >>> import torch
        >>> from glocal.decoding import SlidingWindowCache
        >>> cache = SlidingWindowCache(window=16, sinks=4, positions="cache", rope_theta=10000.0)
        >>> for t in range(100):
        ...     out_t = cache.step(torch.randn(1, 4, 32), torch.randn(1, 2, 32), torch.randn(1, 2, 32))
        >>> out_t.shape, cache.length, cache.kept_positions().tolist()[:6]
        (torch.Size([1, 4, 32]), 100, [0, 1, 2, 3, 84, 85])
    """

    TENSORS = ("keys", "values", "sink_keys")

    def __init__(self, window: int, sinks: int = 0, positions: str = "absolute", rope_theta: float | None = None,
                 dilation: int = 1):
        window = cache_count("window", window, 1)
        sinks = cache_count("sinks", sinks, 0)
        dilation = cache_count("dilation", dilation, 1)
        cache_positions(positions, rope_theta, dilation)
        self.window, self.sinks, self.dilation, self.positions = window, sinks, dilation, positions
        self.rope_theta = None if rope_theta is None else float(rope_theta)
        self.span = (window - 1) * dilation + 1
        # Two angle tables: the newest token's position and the sinks' turn each advance by one per token.
        self._rope_at, self._rope_sinks = (None, None) if rope_theta is None else (RopeAt(rope_theta), RopeAt(rope_theta))
        self.options = {"window": window, "sinks": sinks, "positions": positions, "rope_theta": self.rope_theta,
                        "dilation": dilation}
        super().__init__()

    def _add(self, k, v, rotated=None) -> None:
        """Write a chunk: only what the window and the sinks keep; keys rotated as the positions mode says
        (``rotated``: k already rotated by its stream positions, from :meth:`step`)."""
        if self.keys is None:
            slots = self.sinks + self.span
            self.keys = k.new_zeros(k.shape[0], slots, *k.shape[2:])
            self.values = v.new_zeros(v.shape[0], slots, *v.shape[2:])
        start, count = self.length, k.shape[1]
        if count == 1 and rotated is not None and start >= self.sinks:  # a step past the sinks: one ring slot
            slot = self.sinks + (start - self.sinks) % self.span
            self.keys[:, slot], self.values[:, slot] = rotated[:, 0].detach(), v[:, 0].detach()
            self.length += 1
            if self.positions == "cache" and self.sinks:
                self._rotate_sinks()
            return
        # Tokens that are sinks, or among the last `span` of the stream after this write: nothing else survives.
        first_kept = max(self.sinks, start + count - self.span)
        for lo, hi in ((start, min(start + count, self.sinks)), (max(start, first_kept), start + count)):
            if lo >= hi:
                continue
            keys, values = k[:, lo - start:hi - start].detach(), v[:, lo - start:hi - start].detach()
            done = None if rotated is None else rotated[:, lo - start:hi - start].detach()
            if self.rope_theta is not None:
                keys = done if done is not None else rope(keys, torch.arange(lo, hi, device=k.device), self.rope_theta)
            if hi <= self.sinks and self.positions == "cache":
                if self.sink_keys is None:
                    self.sink_keys = torch.zeros_like(self.keys[:, :self.sinks])
                self.sink_keys[:, lo:hi] = keys  # at their own positions: turned from here as tokens are evicted
            if hi <= self.sinks:
                self.keys[:, lo:hi], self.values[:, lo:hi] = keys, values
                continue
            for part in range(lo, hi, self.span):  # at most `span` tokens: their ring slots may wrap once
                end = min(hi, part + self.span)
                slot = self.sinks + (part - self.sinks) % self.span
                head = min(end - part, self.sinks + self.span - slot)
                for target, rows in ((self.keys, keys), (self.values, values)):
                    chunk = rows[:, part - lo:end - lo]
                    target[:, slot:slot + head] = chunk[:, :head]
                    target[:, self.sinks:self.sinks + chunk.shape[1] - head] = chunk[:, head:]
        self.length += count
        if self.positions == "cache" and self.sinks and self.length > self.sinks:
            self._rotate_sinks()

    def _clear(self) -> None:
        super()._clear()
        self.rotated_by = 0  # under re-indexing: how far past their slots the sink slots are rotated
        self._sink_half = None  # cat(-x2, x1) of the sinks' keys, for the turn

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._sink_half = None
        self.rotated_by = self._evicted()  # the saved sink slots were rotated for the saved length

    def _evicted(self) -> int:
        return self.length - min(self.length, self.sinks + self.span)

    def _rotate_sinks(self) -> None:
        """Under re-indexing the sink slots hold the sinks rotated by their slot plus the evicted count: their
        copy at their own positions turned by the evicted count, one rotation from that copy each time (never
        a rotation of a rotation, so no error builds up); reading then needs no copy of the window."""
        evicted = self._evicted()
        if evicted != self.rotated_by:
            if self.keys.dtype in (torch.float32, torch.float64):
                if self._sink_half is None:  # the sinks are complete once the window is full
                    x1, x2 = self.sink_keys.chunk(2, dim=-1)
                    self._sink_half = torch.cat([-x2, x1], -1)
                self._rope_sinks.into(self.keys[:, :self.sinks], self.sink_keys, self._sink_half, evicted)
            else:  # half precision rotates in float32, as rope does
                self.keys[:, :self.sinks] = self._rope_sinks(self.sink_keys, evicted)
            self.rotated_by = evicted

    def _slot(self, positions: torch.Tensor) -> torch.Tensor:
        """The buffer slot of each stream position: sinks first, then a ring of ``span`` slots."""
        return torch.where(positions < self.sinks, positions, self.sinks + (positions - self.sinks) % self.span)

    def kept_positions(self) -> torch.Tensor:
        """The stream positions the newest query attends, in cache order (sinks, then oldest to newest)."""
        p = self.length - 1
        sinks = torch.arange(min(self.sinks, self.length))
        first = max(self.sinks, p - self.span + 1)
        recent = torch.arange(first, max(first, p + 1))
        recent = recent[(p - recent) % self.dilation == 0]
        return torch.cat([sinks, recent])

    def kept(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values the newest query attends, ``[B, n, H_kv, D]``, in buffer order (the softmax
        does not depend on the order), keys rotated as the positions mode says (views when undilated)."""
        n = min(self.length, self.sinks + self.span)
        keys, values = self.keys[:, :n], self.values[:, :n]
        if self.dilation > 1:
            slots = self._slot(self.kept_positions()).to(self.keys.device)
            keys, values = keys.index_select(1, slots), values.index_select(1, slots)
        return keys, values

    def query_position(self) -> int:
        """The position the newest query is rotated by: p ("absolute"), or the same p - evicted ("cache",
        evicted counted in the rotation of the sinks instead; see the class docstring)."""
        return self.length - 1

    def attend(self, q_t: torch.Tensor, scale: float | None = None, return_lse: bool = False):
        """The newest token's query (before RoPE when the cache has a ``rope_theta``) over the kept keys."""
        cache_query(self.layout, q_t, self.length)
        q = q_t[:, None]
        if self.rope_theta is not None:
            q = self._rope_at(q, self.query_position())
        return self._read(q, scale, return_lse)

    def _read(self, q, scale, return_lse=False):
        keys, values = self.kept()
        out, lse = attention(q, keys, values, scale=scale, return_lse=True)
        return (out[:, 0], lse[:, 0]) if return_lse else out[:, 0]

    def step(self, q_t, k_t, v_t, scale: float | None = None):
        """``append(k_t, v_t)`` then ``attend(q_t)``, validated as a whole first; with RoPE the query and the key,
        at the same position, are rotated together."""
        if self.rope_theta is None:
            return super().step(q_t, k_t, v_t, scale)
        self._check_step(q_t, k_t, v_t, True)
        self._fix_layout(k_t, v_t)
        both = self._rope_at(torch.cat([q_t, k_t], 1)[:, None], self.length)
        q, k = both.split([q_t.shape[1], k_t.shape[1]], 2)
        self._add(k_t[:, None], v_t[:, None], rotated=k)
        return self._read(q, scale)
