"""RAT: a gated recurrence inside chunks plus softmax attention across the chunks' final states.

Shapes (sequences, heads-last as everywhere in glocal):
    q: [B, T, H_q, D]   k: [B, T, H_kv, D]   v: [B, T, H_kv, D_v]   out: [B, T, H_q, D_v]
    key_gate: k's shape or broadcastable to it   value_gate: v's shape or broadcastable to it

Definitions (Wei, Yadav, Pascanu, Gulcehre, "RAT: Bridging RNN Efficiency and Attention
Accuracy", 2025; C = chunk_size, c(t) = t // C the chunk of position t):
    k~_t = g^k_t * k~_{t-1} + (1 - g^k_t) * k_t      v~_t = g^v_t * v~_{t-1} + (1 - g^v_t) * v_t
    with k~ = v~ = 0 before every chunk's first position (a reset, so the first state is (1 - g) * x);
    query t attends, in one softmax, the final states of the chunks j < c(t) and its own state:
    out_t = sum_j p_tj v~_end(j) + p_t,own v~_t,  p = softmax(scale * [q_t . k~_end(j) ; q_t . k~_t]).
The fast path is ``glocal.backends.cpu.rat``; the dense oracle ``glocal.backends.reference.rat``;
docs/rat.md describes both and what follows the paper.

Example:
    >>> import torch, glocal
    >>> x = torch.randn(1, 100, 4, 16)
    >>> g = torch.sigmoid(torch.randn(1, 100, 4, 16))
    >>> glocal.rat_attention(x, x, x, g, g, chunk_size=16).shape
    torch.Size([1, 100, 4, 16])
"""

from __future__ import annotations

from .. import checks
from ..backends import choose_backend
from ..numerics import resolve_scale
from ..spec import RATSpec


def rat_attention(q, k, v, key_gate, value_gate, chunk_size, scale=None, return_lse=False, backend=None):
    """RAT attention: a gated running average of keys and values inside chunks, softmax across chunk states.

    Shapes:
        q: [B, T, H_q, D]   k: [B, T, H_kv, D]   v: [B, T, H_kv, D_v]
        key_gate: broadcastable to k (e.g. [B, T, H_kv, D] or [B, T, H_kv, 1]); value_gate: to v
        out: [B, T, H_q, D_v]   lse: [B, T, H_q] (float32; float64 for float64 inputs)
        H_q a multiple of H_kv (GQA/MQA: query head h reads kv head h // (H_q // H_kv)).

    Inside each chunk of ``chunk_size`` positions k~_t = g_t * k~_{t-1} + (1 - g_t) * k_t (and
    v~ with value_gate), with the state reset to 0 before the chunk's first position, as RAT's
    code does (its scan starts from the first position's (1 - g) * x, the state a zero state
    would give). A query at t attends, in one softmax, the final states (k~, v~ at a chunk's
    last position) of every strictly earlier chunk and its own running state (k~_t, v~_t); in
    the first chunk the output is v~_t. T need not be a multiple of chunk_size (the last chunk is
    partial). ``lse`` is over exactly those keys. q is not recurrent. ``scale=None`` means
    D ** -0.5 (an explicit 0.0 is honoured). Gates 0 with chunk_size 1 give causal softmax
    attention; chunk_size >= T gives the pure recurrence out = v~.

    Gates must lie in [0, 1]: checked with one min/max reduction per gate (cheap next to the
    attention, but on a GPU it waits for the gates to be computed); NaN gates are not caught.

    Args:
        chunk_size: positions per chunk, an int >= 1 (RAT uses 16 to 64).
        return_lse: also return the lse.
        backend: None (the scan-and-tiles path, on any device) or a name, e.g. "reference"
            (dense masks).

    Example:
        >>> import torch, glocal
        >>> q = k = v = torch.randn(1, 64, 2, 16)
        >>> g = torch.full((1, 64, 2, 1), 0.8)          # one gate per head and position
        >>> out, lse = glocal.rat_attention(q, k, v, g, g, chunk_size=16, return_lse=True)
        >>> out.shape, lse.shape
        (torch.Size([1, 64, 2, 16]), torch.Size([1, 64, 2]))
    """
    checks.rat_tensors(q, k, v, key_gate, value_gate)
    checks.chunk_size(chunk_size)
    checks.scale(scale)
    checks.rat_gate_range(key_gate, value_gate)
    spec = RATSpec(int(chunk_size))
    tensors = {"q": q, "k": k, "v": v, "key_gate": key_gate, "value_gate": value_gate}
    out, lse = choose_backend(spec, tensors, backend).run(spec, tensors, resolve_scale(scale, q.shape[-1] ** -0.5))
    return (out, lse) if return_lse else out
