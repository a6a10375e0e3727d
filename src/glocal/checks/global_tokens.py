"""Checks of global-token, compressed and channel attention.

Every message states the rule, the values that broke it and the fix (see glocal.checks)."""

from __future__ import annotations

from .base import float_dtype, heads_and_dims, is_tensor, per_axis, same_dtype_device
from .neighborhood import additional_kv


def grid_tensors(what: str, q, k, v) -> None:
    """``q: [B, *spatial_q, H_q, D]``, ``k, v: [B, *spatial_kv, H_kv, D]``, 1 to 3 spatial axes."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        is_tensor(name, x)
        if x.dim() not in (4, 5, 6):
            raise ValueError(
                f"{what} takes {name} of shape [B, *spatial, H, D] with 1 to 3 spatial axes (4-D to 6-D); "
                f"got {name}.dim()={x.dim()} (shape {tuple(x.shape)}). Reshape to heads-last."
            )
        float_dtype(name, x)
    same_dtype_device({"q": q, "k": k, "v": v})
    if tuple(k.shape[1:-2]) != tuple(v.shape[1:-2]):
        raise ValueError(
            f"k and v must have the same spatial shape; got k={tuple(k.shape[1:-2])}, v={tuple(v.shape[1:-2])} "
            f"for {what}. Pass one value per key."
        )
    heads_and_dims(q, k, v, what)


def reduction(reduction, ndim: int) -> tuple:
    """Per-axis pooling factors, each an int >= 1."""
    factors = per_axis("reduction", reduction, ndim, int)
    if any(f < 1 for f in factors):
        raise ValueError(
            f"reduction must be >= 1 on every axis; got reduction={reduction!r}. "
            f"Use 1 for no pooling on an axis."
        )
    return factors


def global_tokens(q, k, v, global_q, global_k, global_v, pool) -> None:
    """Global tokens: learned ``global_k/v [B, G, H_kv, D]`` (and optional ``global_q [B, G, H_q, D_k]``) or ``pool``."""
    if (global_k is None) != (global_v is None):
        raise ValueError(
            "global_k and global_v must be given together; got only "
            f"{'global_k' if global_k is not None else 'global_v'}. Pass both, or neither with pool=..."
        )
    if (global_k is None) == (pool is None):
        raise ValueError(
            f"global_token_attention takes its global tokens either from global_k/global_v or from pool; "
            f"got global_k={'a tensor' if global_k is not None else None}, pool={pool!r}. Pass exactly one of them."
        )
    if global_k is not None:
        additional_kv(q, k, v, global_k, global_v)
    if global_q is not None:
        is_tensor("global_q", global_q)
        same_dtype_device({"q": q, "global_q": global_q})
        g = global_k.shape[1] if global_k is not None else global_q.shape[1]
        want = (q.shape[0], g, q.shape[-2], q.shape[-1])
        if tuple(global_q.shape) != want:
            raise ValueError(
                f"global_q must have shape [B, G, H_q, D_k] = {list(want)} (G from global_k); got "
                f"global_q.shape={tuple(global_q.shape)}. Give it q's batch, heads and head dim."
            )


def channel_tensors(q, k, v) -> None:
    """Channel attention mixes the channels of one token set: D_k == D_v, same tokens for q, k, v."""
    grid_tensors("channel_attention", q, k, v)
    if k.shape[-1] != v.shape[-1]:
        raise ValueError(
            f"channel_attention mixes value channels with weights over key channels, so k and v need the "
            f"same head dim; got k D={k.shape[-1]}, v D={v.shape[-1]}. Project them to one head dim."
        )


def global_queries(return_global: bool, global_q) -> None:
    if return_global and global_q is None:
        raise ValueError(
            "return_global=True needs queries for the global tokens; got global_q=None and pool=None. "
            "Pass global_q [B, G, H_q, D_k], or pool=... to pool them from q."
        )
