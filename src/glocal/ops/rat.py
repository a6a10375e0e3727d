"""RAT: chunked gated recurrence plus softmax attention across chunk states. IN PROGRESS."""

from __future__ import annotations


def rat_attention(q, k, v, key_gate, value_gate, chunk_size, scale=None, return_lse=False, backend=None):
    raise NotImplementedError("rat_attention is being built")
