"""Checks of neighborhood attention: window arguments (DESIGN.md §1), grid tensors, extra keys/values.

Every message states the rule, the values that broke it and the fix (see glocal.checks)."""

from __future__ import annotations

from .base import float_dtype, heads_and_dims, is_tensor, same_dtype_device


def window_args(kernel_size, stride, dilation) -> None:
    """The per-axis rules of DESIGN.md §1 that need no input length: 1 <= K, 1 <= s <= K, d >= 1."""
    for axis, (k, s, d) in enumerate(zip(kernel_size, stride, dilation)):
        if k < 1:
            raise ValueError(
                f"kernel_size must be >= 1 on every axis; got kernel_size={kernel_size} (axis {axis}: {k}). "
                f"Use a kernel size of at least 1."
            )
        if d < 1:
            raise ValueError(
                f"dilation must be >= 1 on every axis; got dilation={dilation} (axis {axis}: {d}). "
                f"Use dilation=1 for no dilation."
            )
        if s < 1:
            raise ValueError(
                f"stride must be >= 1 on every axis; got stride={stride} (axis {axis}: {s}). "
                f"Use stride=1 for a window per query."
            )
        if s > k:
            raise ValueError(
                f"stride must not exceed kernel_size on any axis (else some keys are never attended); "
                f"got stride={stride}, kernel_size={kernel_size} (axis {axis}: s={s} > K={k}). "
                f"Lower the stride to at most {k} or raise the kernel size."
            )


def neighborhood_args(spatial, kernel_size, stride, dilation) -> None:
    """The per-axis rules of DESIGN.md §1: 1 <= K, K*d <= L, 1 <= s <= K, d >= 1."""
    window_args(kernel_size, stride, dilation)
    for axis, (length, k, d) in enumerate(zip(spatial, kernel_size, dilation)):
        if k * d > length:
            raise ValueError(
                f"kernel_size * dilation must not exceed the input length on any axis; "
                f"got kernel_size={kernel_size}, dilation={dilation}, spatial shape={tuple(spatial)} "
                f"(axis {axis}: {k} * {d} = {k * d} > {length}). "
                f"Use kernel_size <= {length // d} at dilation {d}, or a smaller dilation."
            )


def neighborhood_tensors(q, k, v, ndim: int | None) -> int:
    """Check ``q, k, v: [B, *spatial, H, D]``; return the number of spatial axes."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        is_tensor(name, x)
    if ndim is None:
        ndim = q.dim() - 3
        if ndim not in (1, 2, 3):
            raise ValueError(
                f"neighborhood attention takes q of shape [B, *spatial, H, D] with 1 to 3 spatial axes "
                f"(4-D to 6-D); got q.dim()={q.dim()} (shape {tuple(q.shape)}). "
                f"Reshape to heads-last, e.g. [B, X, Y, H, D] for 2-D."
            )
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != ndim + 3:
            raise ValueError(
                f"{ndim}-D neighborhood attention takes {name} of shape [B, *spatial, H, D] "
                f"({ndim + 3}-D); got {name}.dim()={x.dim()} (shape {tuple(x.shape)}). "
                f"Reshape to heads-last [B, {', '.join('XYZ'[:ndim])}, H, D]."
            )
    for name, x in (("q", q), ("k", k), ("v", v)):
        float_dtype(name, x)
    same_dtype_device({"q": q, "k": k, "v": v})
    sq, sk, sv = q.shape[1:-2], k.shape[1:-2], v.shape[1:-2]
    if sq != sk or sq != sv:
        raise ValueError(
            f"q, k and v must have the same spatial shape (self attention on one grid); "
            f"got q={tuple(sq)}, k={tuple(sk)}, v={tuple(sv)}. Pass tensors laid out on the same grid."
        )
    heads_and_dims(q, k, v, "neighborhood attention")
    return ndim


def additional_kv(q, k, v, additional_keys, additional_values) -> None:
    """Extra keys/values ``[B, S, H_kv, D_qk]`` / ``[B, S, H_kv, D_v]``, both or neither."""
    if (additional_keys is None) != (additional_values is None):
        given = "additional_keys" if additional_keys is not None else "additional_values"
        raise ValueError(
            f"additional_keys and additional_values must be given together; got only {given}. "
            f"Pass both (same number of tokens) or neither."
        )
    if additional_keys is None:
        return
    ak, av = additional_keys, additional_values
    is_tensor("additional_keys", ak)
    is_tensor("additional_values", av)
    float_dtype("additional_keys", ak)
    float_dtype("additional_values", av)
    same_dtype_device({"q": q, "additional_keys": ak, "additional_values": av})
    b, hk, dk, dv = q.shape[0], k.shape[-2], k.shape[-1], v.shape[-1]
    want_k = (b, ak.shape[1] if ak.dim() == 4 else "S", hk, dk)
    want_v = (b, ak.shape[1] if ak.dim() == 4 else "S", hk, dv)
    if ak.dim() != 4 or tuple(ak.shape) != want_k:
        raise ValueError(
            f"additional_keys must have shape [B, S, H_kv, D_qk] = {list(want_k)}; "
            f"got additional_keys.shape={tuple(ak.shape)}. Lay the extra keys out as k's batch, heads and head dim."
        )
    if tuple(av.shape) != want_v:
        raise ValueError(
            f"additional_values must have shape [B, S, H_kv, D_v] = {list(want_v)} (S from additional_keys); "
            f"got additional_values.shape={tuple(av.shape)}. Lay the extra values out as v's batch, heads and head dim."
        )
