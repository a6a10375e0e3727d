"""RAT decoding: the final states of past chunks and the running state of the current one.

Shapes: q_t [B, H_q, D], k_t [B, H_kv, D], v_t [B, H_kv, D_v], gates broadcastable to k_t / v_t
-> out_t [B, H_q, D_v]; states [B, n_chunks + 1, H_kv, D] (float32; float64 for float64 inputs).

Example:
    >>> import torch, glocal
    >>> from glocal.decoding import RATCache
    >>> x = torch.randn(1, 40, 2, 8)
    >>> g = torch.sigmoid(torch.randn(1, 40, 2, 8))
    >>> cache = RATCache(chunk_size=16)
    >>> for t in range(40):
    ...     out_t = cache.step(x[:, t], x[:, t], x[:, t], g[:, t], g[:, t])
    >>> torch.allclose(out_t, glocal.rat_attention(x, x, x, g, g, chunk_size=16)[:, -1], atol=1e-5)
    True
"""

from __future__ import annotations

import torch

from ..checks.decoding import cache_count, cache_gate, cache_tokens
from ..numerics import compute_dtype
from ..ops import attention
from .base import DecodingCache


class RATCache(DecodingCache):
    """What a RAT query needs of the past: one key and value state per completed chunk, and the running one.

    Shapes: ``step(q_t [B, H_q, D], k_t [B, H_kv, D], v_t [B, H_kv, D_v], key_gate_t, value_gate_t)
    -> [B, H_q, D_v]`` (gates broadcastable to k_t and v_t, in [0, 1]); ``extend(k [B, T, H_kv, D],
    v, key_gate, value_gate)`` runs the recurrence over a chunk of tokens without reading (a prefill).

    Inside a chunk of ``chunk_size`` positions k~_t = g_t * k~_{t-1} + (1 - g_t) * k_t (v~ likewise),
    reset at every chunk start; the query at t attends, in one softmax, the final states of the
    completed chunks and its own running state (``glocal.rat_attention``'s definition: token by
    token this equals its forward). The running state is kept in the slot after the completed
    chunks, so when its chunk completes it is already where a final state belongs.
    Memory O(T / chunk_size): ceil(T / chunk_size) key and value states (buffers grown by half when
    full), 1 / chunk_size of a full KV cache's.

    Example:
        >>> import torch
        >>> from glocal.decoding import RATCache
        >>> cache = RATCache(chunk_size=4)
        >>> x, g = torch.randn(1, 10, 2, 8), torch.full((1, 10, 2, 1), 0.5)
        >>> cache.extend(x, x, g, g)
        >>> cache.length, cache.completed_chunks()
        (10, 2)
    """

    BUFFERS = ("key_states", "value_states")

    def __init__(self, chunk_size: int):
        self.chunk_size = cache_count("chunk_size", chunk_size, 1)
        self.options = {"chunk_size": self.chunk_size}
        super().__init__()

    def completed_chunks(self) -> int:
        return self.length // self.chunk_size

    def _advance(self, k_t, v_t, key_gate_t, value_gate_t) -> None:
        """One token of the recurrence, written into the running slot; a chunk start resets it."""
        compute = compute_dtype(k_t)
        k_t, v_t = k_t.detach().to(compute), v_t.detach().to(compute)
        gk, gv = key_gate_t.detach().to(compute), value_gate_t.detach().to(compute)
        slot = self.completed_chunks()
        if self.length % self.chunk_size == 0:  # a new chunk: its running state starts from 0
            self.key_states.extend(((1 - gk) * k_t).expand_as(k_t)[:, None])
            self.value_states.extend(((1 - gv) * v_t).expand_as(v_t)[:, None])
        else:
            for states, x, g in ((self.key_states, k_t, gk), (self.value_states, v_t, gv)):
                running = states.data[:, slot]
                running.copy_(torch.lerp(x, running, g))
        self.length += 1

    def step(self, q_t, k_t, v_t, key_gate_t, value_gate_t, scale: float | None = None) -> torch.Tensor:
        """Advance the recurrence by token t, then attend the chunk states with q_t: ``[B, H_q, D_v]``."""
        self._check_step(q_t, k_t, v_t)
        if k_t.dim() != 3:
            raise ValueError(f"step takes one token, k_t of shape [B, H_kv, D]; got k_t.shape={tuple(k_t.shape)}. "
                             f"Use extend for a chunk.")
        cache_gate("key_gate_t", key_gate_t, k_t)
        cache_gate("value_gate_t", value_gate_t, v_t)
        self._fix_layout(k_t, v_t)
        self._advance(k_t, v_t, key_gate_t, value_gate_t)
        keys, values = self.key_states.view(), self.value_states.view()
        scale = q_t.shape[-1] ** -0.5 if scale is None else scale
        out = attention(q_t[:, None].to(keys.dtype), keys, values, scale=scale)
        return out[:, 0].to(q_t.dtype)

    def extend(self, k, v, key_gate, value_gate) -> None:
        """Run the recurrence over a chunk of tokens ``[B, T, H_kv, D]`` (gates broadcastable to k and v)."""
        cache_tokens(self.layout, k, v, rope=False)
        k, v = (x[:, None] if x.dim() == 3 else x for x in (k, v))
        cache_gate("key_gate", key_gate, k)
        cache_gate("value_gate", value_gate, v)
        self._fix_layout(k, v)
        compute = compute_dtype(k)
        k, v = k.detach().to(compute), v.detach().to(compute)
        key_gate = key_gate.detach().to(compute).expand_as(k)
        value_gate = value_gate.detach().to(compute).expand_as(v)
        size, total = self.chunk_size, k.shape[1]
        # First the rest of a chunk this cache is in the middle of, from its running state ...
        done = min(total, (-self.length) % size)
        if done:
            slot = self.completed_chunks()
            for states, x, g in ((self.key_states, k, key_gate), (self.value_states, v, value_gate)):
                running = states.data[:, slot]
                running.copy_(_final_states(x[:, None, :done], g[:, None, :done], running[:, None])[:, 0])
        # ... then whole chunks from 0, the last one possibly partial (its running state, padded with
        # gates 1 and tokens 0, which leave a state as it is).
        rest = total - done
        if rest:
            chunks = -(-rest // size)
            for states, x, g in ((self.key_states, k, key_gate), (self.value_states, v, value_gate)):
                pad = (0, 0) * (x.dim() - 2) + (0, chunks * size - rest)
                xs = torch.nn.functional.pad(x[:, done:], pad).unflatten(1, (chunks, size))
                gs = torch.nn.functional.pad(g[:, done:], pad, value=1.0).unflatten(1, (chunks, size))
                states.extend(_final_states(xs, gs, None))
        self.length += total


def _final_states(x, g, start):
    """The state after each run of tokens of the gated recurrence s_t = g_t s_{t-1} + (1 - g_t) x_t.

    Shapes: x, g [B, n, L, H, D] (n runs of L tokens), start [B, n, H, D] or None (0) -> [B, n, H, D].
    One step per position, all runs at once, with the arithmetic of ``step`` (so the states are the same).
    """
    state = (1 - g[:, :, 0]) * x[:, :, 0] if start is None else torch.lerp(x[:, :, 0], start, g[:, :, 0])
    for j in range(1, x.shape[2]):
        state = torch.lerp(x[:, :, j], state, g[:, :, j])
    return state
