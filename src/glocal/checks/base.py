"""Checks every family shares: tensor types and dtypes, devices, heads and head dims, scale, causal flags, patterns, backend names.

Every message states the rule, the values that broke it and the fix (see glocal.checks)."""

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


def scale(scale, default: str = "D_qk ** -0.5") -> None:
    """``scale`` is None (the family's default, named by ``default``) or a real number."""
    if scale is not None and (not isinstance(scale, numbers.Real) or isinstance(scale, bool)):
        raise TypeError(
            f"scale must be None (meaning {default}) or a real number; got scale={scale!r} "
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


def causal_flag(is_causal) -> None:
    if not isinstance(is_causal, bool):
        raise TypeError(
            f"is_causal must be a bool; got is_causal={is_causal!r} of type {type(is_causal).__name__}. "
            f"Pass True or False."
        )


def backend_name(name, known: list[str]) -> None:
    if name is not None and name not in known:
        raise ValueError(f"unknown backend {name!r}; the backends are {known}. Pass one of them or None to choose.")


def choice(name: str, value, options: tuple) -> None:
    if value not in options or isinstance(value, bool):
        raise ValueError(f"{name} must be one of {list(options)}; got {name}={value!r}. Pass one of them.")


ATTENTION_PATTERNS = ("non-causal self", "causal self", "non-causal cross", "causal cross")


def pattern_name(is_causal: bool, is_cross: bool) -> str:
    """One of the four CAB attention patterns."""
    return f"{'causal' if is_causal else 'non-causal'} {'cross' if is_cross else 'self'}"


def pattern_supported(mechanism: str, is_causal, is_cross: bool, supported: tuple) -> None:
    """Refuse an attention pattern the mechanism does not define, naming the ones it does."""
    causal_flag(is_causal)
    pattern = pattern_name(is_causal, is_cross)
    if pattern not in supported:
        raise ValueError(
            f"{mechanism} does not support the {pattern} attention pattern "
            f"(is_causal={is_causal}, {'cross' if is_cross else 'self'} attention); it supports: "
            f"{', '.join(supported)}. Use one of those, or a mechanism that defines {pattern} "
            f"(see docs/global.md for the table)."
        )


def int_at_least(name: str, value, low: int, meaning: str, example: int) -> int:
    """An int >= ``low``; ``meaning`` says what it counts, ``example`` a good value."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(
            f"{name} must be an int ({meaning}); got {name}={value!r} of type {type(value).__name__}. "
            f"Pass e.g. {name}={example}."
        )
    if value < low:
        raise ValueError(f"{name} must be >= {low} ({meaning}); got {name}={value}. Pass e.g. {name}={example}.")
    return int(value)
