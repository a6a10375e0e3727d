"""Checks of glocal.nn module arguments and inputs.

Every message states the rule, the values that broke it and the fix (see glocal.checks)."""

from __future__ import annotations

import numbers

from .base import is_tensor


def module_dims(dim, num_heads) -> None:
    """Attention modules split ``dim`` channels into ``num_heads`` heads."""
    for name, value in (("dim", dim), ("num_heads", num_heads)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {name}={value!r}. Pass a positive int.")
    if dim % num_heads != 0:
        raise ValueError(
            f"dim must be divisible by num_heads (each head gets dim // num_heads channels); "
            f"got dim={dim}, num_heads={num_heads}. Choose num_heads dividing {dim}."
        )


def module_input(x, dim: int, ndim: int | None) -> None:
    """Module inputs are ``[B, *spatial, dim]`` (``ndim`` spatial axes; sequences have 1)."""
    is_tensor("x", x)
    if ndim is not None and x.dim() != ndim + 2:
        raise ValueError(
            f"this module takes x of shape [B, {', '.join('XYZ'[:ndim]) if ndim > 1 else 'T'}, dim] ({ndim + 2}-D); "
            f"got x.dim()={x.dim()} (shape {tuple(x.shape)}). Reshape the input to channels-last."
        )
    if x.shape[-1] != dim:
        raise ValueError(
            f"the last axis of x must have the module's dim channels; got x.shape[-1]={x.shape[-1]}, dim={dim}. "
            f"Pass channels-last input with {dim} channels."
        )


def module_global_tokens(num_global_tokens, pool) -> None:
    if (num_global_tokens is None) == (pool is None):
        raise ValueError(
            f"GlobalTokenAttention takes its global tokens from num_global_tokens (learned) or from pool "
            f"(pooled input); got num_global_tokens={num_global_tokens!r}, pool={pool!r}. Pass exactly one."
        )
    if num_global_tokens is not None and (not isinstance(num_global_tokens, numbers.Integral)
                                          or isinstance(num_global_tokens, bool) or num_global_tokens < 1):
        raise ValueError(
            f"num_global_tokens must be an int >= 1; got num_global_tokens={num_global_tokens!r}. Pass e.g. 8."
        )
