"""Checks of block-routed attention (MoBA, VMoBA): tensors, block sizes, the routing rule, block means.

Every message states the rule, the values that broke it and the fix (see glocal.checks)."""

from __future__ import annotations

import math
import numbers

from .base import float_dtype, heads_and_dims, is_tensor, per_axis, same_dtype_device


def moba_tensors(what: str, q, k, v=None) -> None:
    """Sequences ``q: [B, T_q, H_q, D]``, ``k: [B, T_kv, H_kv, D]`` (and ``v: [B, T_kv, H_kv, D_v]``), T_q <= T_kv."""
    named = (("q", q), ("k", k)) + ((("v", v),) if v is not None else ())
    for name, x in named:
        is_tensor(name, x)
        if x.dim() != 4:
            raise ValueError(
                f"{what} takes {name} of shape [B, T, H, D] (4-D); got {name}.dim()={x.dim()} "
                f"(shape {tuple(x.shape)}). Flatten grids to sequences, or use moba_attention_nd for grids."
            )
    for name, x in named:
        float_dtype(name, x)
    same_dtype_device(dict(named))
    if v is not None and k.shape[1] != v.shape[1]:
        raise ValueError(
            f"k and v must have the same sequence length; got k T={k.shape[1]}, v T={v.shape[1]}. "
            f"Pass one value per key."
        )
    heads_and_dims(q, k, k if v is None else v, what)
    if q.shape[1] > k.shape[1]:
        raise ValueError(
            f"{what} places the queries at the last T_q key positions, so T_q <= T_kv; got "
            f"T_q={q.shape[1]}, T_kv={k.shape[1]}. Pass at least as many keys as queries (the KV cache "
            f"includes the queries' own keys)."
        )


def moba_grid_tensors(q, k, v) -> int:
    """Grids ``q, k, v: [B, *spatial, H, D]`` with 1 to 3 spatial axes, one grid (self attention); returns ndim."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        is_tensor(name, x)
        if x.dim() not in (4, 5, 6):
            raise ValueError(
                f"moba_attention_nd takes {name} of shape [B, *spatial, H, D] with 1 to 3 spatial axes "
                f"(4-D to 6-D); got {name}.dim()={x.dim()} (shape {tuple(x.shape)}). Reshape to heads-last, "
                f"e.g. [B, T, X, Y, H, D] for a video."
            )
    for name, x in (("q", q), ("k", k), ("v", v)):
        float_dtype(name, x)
    same_dtype_device({"q": q, "k": k, "v": v})
    sq, sk, sv = tuple(q.shape[1:-2]), tuple(k.shape[1:-2]), tuple(v.shape[1:-2])
    if sq != sk or sq != sv:
        raise ValueError(
            f"moba_attention_nd is self attention on one grid: q, k and v need the same spatial shape; got "
            f"q={sq}, k={sk}, v={sv}. Pass tensors laid out on the same grid."
        )
    heads_and_dims(q, k, v, "moba_attention_nd")
    return q.dim() - 3


def block_size(block_size) -> int:
    if not isinstance(block_size, numbers.Integral) or isinstance(block_size, bool):
        raise TypeError(
            f"block_size must be an int (keys per block); got block_size={block_size!r} of type "
            f"{type(block_size).__name__}. Pass e.g. block_size=512."
        )
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1; got block_size={block_size}. Pass e.g. block_size=512.")
    return int(block_size)


def block_shape(block_shape, ndim: int) -> tuple:
    """An int or one int per spatial axis, each >= 1 (a size at least the axis length spans the axis)."""
    shape = per_axis("block_shape", block_shape, ndim, int)
    if any(b < 1 for b in shape):
        raise ValueError(
            f"block_shape must be >= 1 on every axis; got block_shape={block_shape!r}. Pass sizes >= 1, "
            f"e.g. (4, 8, 8); the axis length spans a whole axis."
        )
    return shape


def routing(top_k, threshold) -> None:
    """Exactly one of ``top_k`` (int >= 1) and ``threshold`` (a number in [0, 1])."""
    if (top_k is None) == (threshold is None):
        raise ValueError(
            f"block routing takes exactly one of top_k and threshold; got top_k={top_k!r}, "
            f"threshold={threshold!r}. Pass top_k=3 (MoBA) or threshold=0.25 (VMoBA), not both."
        )
    if top_k is not None:
        if not isinstance(top_k, numbers.Integral) or isinstance(top_k, bool):
            raise TypeError(
                f"top_k must be an int (blocks per query, the own block included); got top_k={top_k!r} of "
                f"type {type(top_k).__name__}. Pass e.g. top_k=3."
            )
        if top_k < 1:
            raise ValueError(
                f"top_k must be >= 1 (it counts the own block, which is always attended); got top_k={top_k}. "
                f"Pass top_k=1 for the own block only, or more."
            )
        return
    if not isinstance(threshold, numbers.Real) or isinstance(threshold, bool):
        raise TypeError(
            f"threshold must be a number in [0, 1] (a share of the normalised gates); got "
            f"threshold={threshold!r} of type {type(threshold).__name__}. Pass e.g. threshold=0.25."
        )
    if math.isnan(threshold) or not 0 <= threshold <= 1:
        raise ValueError(
            f"threshold must be in [0, 1] (0 keeps the own block only, 1 every eligible block); got "
            f"threshold={threshold!r}. Pass e.g. threshold=0.25."
        )


def block_means(means, k, n_blocks: int) -> None:
    """Precomputed block means ``[B, n_blocks, H_kv, D]`` (of the real keys of each block) or None."""
    if means is None:
        return
    is_tensor("block_means", means)
    float_dtype("block_means", means)
    if means.device != k.device:
        raise ValueError(
            f"block_means must be on the keys' device; got block_means.device={means.device}, "
            f"k.device={k.device}. Move it with .to(k.device)."
        )
    want = (k.shape[0], n_blocks, k.shape[-2], k.shape[-1])
    if tuple(means.shape) != want:
        raise ValueError(
            f"block_means must have shape [B, n_blocks, H_kv, D] = {list(want)} (n_blocks = ceil(T_kv / "
            f"block_size)); got block_means.shape={tuple(means.shape)}. Pass the mean key of every block of "
            f"k (glocal.masks.block_means(k, (block_size,))), kept up to date with the cache."
        )

