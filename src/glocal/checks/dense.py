"""Checks of full attention over sequences and of merging results.

Every message states the rule, the values that broke it and the fix (see glocal.checks)."""

from __future__ import annotations

from .base import float_dtype, heads_and_dims, is_tensor, same_dtype_device


def sequence_tensors(q, k, v) -> None:
    """Check ``q: [B, T_q, H_q, D]``, ``k: [B, T_kv, H_kv, D]``, ``v: [B, T_kv, H_kv, D_v]``."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        is_tensor(name, x)
        if x.dim() != 4:
            raise ValueError(
                f"attention takes {name} of shape [B, T, H, D] (4-D); got {name}.dim()={x.dim()} "
                f"(shape {tuple(x.shape)}). Flatten grids to sequences first, or use neighborhood_attention."
            )
    for name, x in (("q", q), ("k", k), ("v", v)):
        float_dtype(name, x)
    same_dtype_device({"q": q, "k": k, "v": v})
    if k.shape[1] != v.shape[1]:
        raise ValueError(
            f"k and v must have the same sequence length; got k T={k.shape[1]}, v T={v.shape[1]}. "
            f"Pass one value per key."
        )
    heads_and_dims(q, k, v, "attention")


def merge_inputs(outputs, lses) -> None:
    if not isinstance(outputs, (list, tuple)) or not isinstance(lses, (list, tuple)):
        raise TypeError(
            f"merge_attentions takes a list of outputs and a list of lses; got {type(outputs).__name__} and "
            f"{type(lses).__name__}. Pass lists, e.g. merge_attentions([out_a, out_b], [lse_a, lse_b])."
        )
    if len(outputs) == 0 or len(outputs) != len(lses):
        raise ValueError(
            f"merge_attentions needs one lse per output and at least one of each; got {len(outputs)} outputs "
            f"and {len(lses)} lses. Pass matching lists."
        )
    for i, (o, lse) in enumerate(zip(outputs, lses)):
        is_tensor(f"outputs[{i}]", o)
        is_tensor(f"lses[{i}]", lse)
        if tuple(o.shape[:-1]) != tuple(lse.shape):
            raise ValueError(
                f"each lse must have the output's shape without its last (head-dim) axis; got "
                f"outputs[{i}].shape={tuple(o.shape)}, lses[{i}].shape={tuple(lse.shape)}. "
                f"Pass the lse returned with that output (return_lse=True)."
            )
        if o.shape != outputs[0].shape:
            raise ValueError(
                f"all outputs must have one shape; got outputs[0].shape={tuple(outputs[0].shape)}, "
                f"outputs[{i}].shape={tuple(o.shape)}. Merge results of the same queries only."
            )
        same_dtype_device({"outputs[0]": outputs[0], f"outputs[{i}]": o})
        if lse.device != o.device or not lse.dtype.is_floating_point:
            raise ValueError(
                f"each lse must be a floating-point tensor on its output's device; got lses[{i}].dtype={lse.dtype}, "
                f"lses[{i}].device={lse.device}, outputs[{i}].device={o.device}. Pass the lse returned with that output."
            )
