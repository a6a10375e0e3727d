"""Reference of RAT: the recurrence position by position, then one dense masked attention, plain autograd.

Definitions (C = chunk_size, chunk c(t) = t // C, computed in float32, float64 for float64):
    k~_t = g^k_t * k~_{t-1} + (1 - g^k_t) * k_t,   v~_t = g^v_t * v~_{t-1} + (1 - g^v_t) * v_t,
        with k~ = v~ = 0 before each chunk's first position (t % C == 0);
    the keys of query t: the final states k~_{(j+1)C-1} of the chunks j < c(t), and its own k~_t;
    out_t = softmax_j(scale * q_t . key_j) . value_j over those keys, lse_t its log-normaliser.

Here the keys are laid out as [final states of the full chunks | every position's own state] and
one boolean mask says which a query attends (glocal.numerics.dense_attention): memory
O(T * (T + T / C)) per batch and head, for tests.

Shapes:
    q: [B, T, H_q, D]  k: [B, T, H_kv, D]  v: [B, T, H_kv, D_v]; gates broadcastable to k and v
    returns (out [B, T, H_q, D_v], lse [B, T, H_q])

Example:
    >>> import torch
    >>> from glocal.backends.reference.rat import rat_attention_reference
    >>> q = k = v = torch.randn(1, 10, 2, 8)
    >>> g = torch.full((1, 10, 2, 1), 0.9)
    >>> rat_attention_reference(q, k, v, g, g, chunk_size=4).shape
    torch.Size([1, 10, 2, 8])
"""

from __future__ import annotations

import torch

from ...numerics import compute_dtype, dense_attention
from ...spec import RATSpec

NAME = "reference"


def can_run(spec, tensors: dict) -> list[str]:
    if not isinstance(spec, RATSpec):
        return [f"reference does not implement {type(spec).__name__} as RAT attention"]
    return []


def run(spec: RATSpec, tensors: dict, scale: float):
    """``(out, lse)``; see the module docstring."""
    return _rat(tensors["q"], tensors["k"], tensors["v"], tensors["key_gate"], tensors["value_gate"],
                spec.chunk_size, scale)


def gated_running_average(x: torch.Tensor, gate: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """x~ [B, T, H, F]: x~_t = g_t * x~_{t-1} + (1 - g_t) * x_t, restarted from 0 at every chunk start.

    One step per position inside a chunk, all chunks at once (the sequence is zero-padded to whole
    chunks; padding comes after a chunk's positions, so it never reaches them).
    """
    compute = compute_dtype(x)
    batch, length = x.shape[:2]
    n = -(-length // chunk_size)
    gate = torch.broadcast_to(gate, x.shape).to(compute)
    pad = n * chunk_size - length
    xs = torch.cat([x.to(compute), x.new_zeros(batch, pad, *x.shape[2:], dtype=compute)], 1)
    gs = torch.cat([gate, gate.new_zeros(batch, pad, *x.shape[2:])], 1)
    xs, gs = xs.unflatten(1, (n, chunk_size)), gs.unflatten(1, (n, chunk_size))
    h = torch.zeros_like(xs[:, :, 0])
    states = []
    for pos in range(chunk_size):
        h = gs[:, :, pos] * h + (1 - gs[:, :, pos]) * xs[:, :, pos]
        states.append(h)
    return torch.stack(states, 2).flatten(1, 2)[:, :length]


def _rat(q, k, v, key_gate, value_gate, chunk_size, scale):
    length = q.shape[1]
    kt = gated_running_average(k, key_gate, chunk_size)
    vt = gated_running_average(v, value_gate, chunk_size)
    full = length // chunk_size
    ends = torch.arange(full, device=q.device) * chunk_size + chunk_size - 1  # each full chunk's last position
    keys = torch.cat([kt[:, ends], kt], 1)
    values = torch.cat([vt[:, ends], vt], 1)
    t = torch.arange(length, device=q.device)
    earlier_chunk = torch.arange(full, device=q.device)[None, :] < (t // chunk_size)[:, None]  # [T, n_full]
    own_state = t[:, None] == t[None, :]  # [T, T]
    allowed = torch.cat([earlier_chunk, own_state], 1)
    out, lse = dense_attention(q.to(keys.dtype), keys, values, scale, allowed)
    return out.to(q.dtype), lse


def rat_attention_reference(q, k, v, key_gate, value_gate, chunk_size, scale=None, return_lse=False):
    """Dense reference of :func:`glocal.rat_attention` (``scale=None`` means D ** -0.5), same arguments.

    Shapes: as :func:`glocal.rat_attention`. Memory O(T * (T + T / C)) per batch and head.

    Example:
        >>> import torch
        >>> q = k = v = torch.randn(1, 6, 1, 4)
        >>> g = torch.zeros(1, 6, 1, 1)   # no memory: k~ = k, v~ = v
        >>> out = rat_attention_reference(q, k, v, g, g, chunk_size=6)   # one chunk: the pure recurrence
        >>> torch.allclose(out, v)
        True
    """
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    out, lse = _rat(q, k, v, key_gate, value_gate, chunk_size, scale)
    return (out, lse) if return_lse else out
