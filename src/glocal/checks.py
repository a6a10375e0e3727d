"""Validation of user arguments.

Every message states the rule, the values that broke it and the fix. Checks
raise ``ValueError`` for bad values and ``TypeError`` for bad types; they never
modify their inputs. Kernels assume these checks passed.
"""

from __future__ import annotations

import numbers

import torch

_FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def per_axis(name: str, value, ndim: int, kind: type) -> tuple:
    """Normalise an int (or bool) or a per-axis tuple/list to a tuple of length ``ndim``."""
    if isinstance(value, (tuple, list)):
        values = tuple(value)
        if len(values) != ndim:
            raise ValueError(
                f"{name} must be a single value or have one entry per spatial axis; "
                f"got {name}={value!r} ({len(values)} entries) for a {ndim}-D problem. "
                f"Pass a single value or a tuple of {ndim}."
            )
    else:
        values = (value,) * ndim
    for v in values:
        if kind is bool:
            ok = isinstance(v, bool)
        else:
            ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
        if not ok:
            raise TypeError(
                f"{name} entries must be {kind.__name__}; got {name}={value!r} "
                f"(an entry of type {type(v).__name__}). Pass {kind.__name__} values."
            )
    return tuple(kind(v) for v in values)


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


def is_tensor(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {name} of type {type(x).__name__}. Pass a tensor.")


def float_dtype(name: str, x: torch.Tensor) -> None:
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating-point tensor (float64, float32, bfloat16 or float16); "
            f"got {name}.dtype={x.dtype}. Convert it, e.g. {name}.float()."
        )


def same_dtype_device(named: dict[str, torch.Tensor]) -> None:
    items = list(named.items())
    first_name, first = items[0]
    for name, x in items[1:]:
        if x.device != first.device:
            raise ValueError(
                f"all inputs must be on one device; got {first_name}.device={first.device}, {name}.device={x.device}. "
                f"Move them with .to({first_name}.device)."
            )
        if x.dtype != first.dtype:
            raise TypeError(
                f"all inputs must have one dtype; got {first_name}.dtype={first.dtype}, {name}.dtype={x.dtype}. "
                f"Convert them with .to({first_name}.dtype)."
            )


def scale(scale) -> None:
    if scale is not None and (not isinstance(scale, numbers.Real) or isinstance(scale, bool)):
        raise TypeError(
            f"scale must be None (meaning D_qk ** -0.5) or a real number; got scale={scale!r} "
            f"of type {type(scale).__name__}. Pass a float."
        )


def heads_and_dims(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, what: str) -> None:
    """Shared head/channel rules for heads-last tensors ``[..., H, D]``."""
    hq, hk, hv = q.shape[-2], k.shape[-2], v.shape[-2]
    if hk != hv:
        raise ValueError(
            f"k and v must have the same number of heads; got k heads={hk}, v heads={hv} "
            f"(shapes k={tuple(k.shape)}, v={tuple(v.shape)}). Give v the layout of k."
        )
    if hk == 0 or hq % hk != 0:
        raise ValueError(
            f"the query heads must be a multiple of the key/value heads (GQA/MQA); got H_q={hq}, H_kv={hk}. "
            f"Use H_kv dividing H_q, e.g. H_kv=1 (MQA) or H_kv=H_q."
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same head dim; got q D={q.shape[-1]}, k D={k.shape[-1]} "
            f"(shapes q={tuple(q.shape)}, k={tuple(k.shape)}) for {what}. Project them to one head dim."
        )
    if q.shape[0] != k.shape[0] or q.shape[0] != v.shape[0]:
        raise ValueError(
            f"q, k and v must have the same batch size; got q={q.shape[0]}, k={k.shape[0]}, v={v.shape[0]} "
            f"for {what}. Pass one batch for all three."
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


def causal_flag(is_causal) -> None:
    if not isinstance(is_causal, bool):
        raise TypeError(
            f"is_causal must be a bool; got is_causal={is_causal!r} of type {type(is_causal).__name__}. "
            f"Pass True or False."
        )


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


def backend_name(name, known: list[str]) -> None:
    if name is not None and name not in known:
        raise ValueError(f"unknown backend {name!r}; the backends are {known}. Pass one of them or None to choose.")
