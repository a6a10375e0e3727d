"""Checks of RAT attention (glocal.rat_attention) and its layer (glocal.nn.RATAttention).

Every message states the rule, the values that broke it and the fix (see glocal.checks)."""

from __future__ import annotations

import numbers

import torch

from .base import float_dtype, is_tensor, same_dtype_device
from .dense import sequence_tensors


def rat_tensors(q, k, v, key_gate, value_gate) -> None:
    """q, k, v of one sequence ``[B, T, H, D]``; each gate broadcastable to its tensor's shape."""
    sequence_tensors(q, k, v)
    if q.shape[1] != k.shape[1]:
        raise ValueError(
            f"rat_attention is self-attention over one sequence: q and k must have the same length; got "
            f"q T={q.shape[1]}, k T={k.shape[1]}. Pass the queries, keys and values of the same positions."
        )
    for name, gate, x, x_name in (("key_gate", key_gate, k, "k"), ("value_gate", value_gate, v, "v")):
        is_tensor(name, gate)
        float_dtype(name, gate)
        ok = gate.dim() <= x.dim()
        if ok:
            try:
                ok = torch.broadcast_shapes(gate.shape, x.shape) == x.shape
            except RuntimeError:
                ok = False
        if not ok:
            raise ValueError(
                f"{name} must have the shape of {x_name} or broadcast to it; got {name}.shape={tuple(gate.shape)}, "
                f"{x_name}.shape={tuple(x.shape)}. Pass one gate per element, or e.g. "
                f"[B, T, H_kv, 1] for one gate per head and position."
            )
    same_dtype_device({"q": q, "key_gate": key_gate, "value_gate": value_gate})


def rat_gate_range(key_gate, value_gate) -> None:
    """Gates lie in [0, 1] (one min/max reduction per gate; NaN is not caught)."""
    for name, gate in (("key_gate", key_gate), ("value_gate", value_gate)):
        if gate.numel() == 0:
            continue
        low, high = (float(x) for x in torch.aminmax(gate.detach()))
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{name} must lie in [0, 1] (it weighs the running state against the new token); got "
                f"min={low:g}, max={high:g}. Pass a sigmoid of the gate logits, e.g. torch.sigmoid(logits)."
            )


def rat_module_args(head_dim, rope_theta) -> None:
    """RoPE over the chunk index needs an even head dim and a positive base (or None: no RoPE)."""
    if rope_theta is None:
        return
    if not isinstance(rope_theta, numbers.Real) or isinstance(rope_theta, bool) or rope_theta <= 0:
        raise ValueError(
            f"rope_theta must be a number > 0 (the RoPE base) or None (no RoPE); got rope_theta={rope_theta!r}. "
            f"Pass e.g. rope_theta=10000.0."
        )
    if head_dim % 2 != 0:
        raise ValueError(
            f"RoPE rotates channel pairs, so the head dim must be even; got head_dim={head_dim} "
            f"(dim // num_heads). Choose dim and num_heads with an even quotient, or pass rope_theta=None."
        )
