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
        if lse.device != o.device or not lse.dtype.is_floating_point:
            raise ValueError(
                f"each lse must be a floating-point tensor on its output's device; got lses[{i}].dtype={lse.dtype}, "
                f"lses[{i}].device={lse.device}, outputs[{i}].device={o.device}. Pass the lse returned with that output."
            )


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


# --- Global mechanisms: linear, InLine, L2ViT, global-token, compressed and channel attention ---

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


def feature_map(feature_map, names: tuple) -> None:
    if callable(feature_map):
        return
    if not isinstance(feature_map, str):
        raise TypeError(
            f"feature_map must be a name or a callable; got feature_map={feature_map!r} of type "
            f"{type(feature_map).__name__}. Pass one of {list(names)} or a function of a tensor."
        )
    if feature_map not in names:
        raise ValueError(
            f"unknown feature_map {feature_map!r}; the feature maps are {list(names)} or a callable. "
            f"Pass one of them."
        )


def chunk_size(chunk_size) -> None:
    if not isinstance(chunk_size, numbers.Integral) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(
            f"chunk_size must be an int >= 1; got chunk_size={chunk_size!r}. Pass e.g. chunk_size=64."
        )


def linear_state(name: str, state, q, k, v) -> None:
    """A linear-attention state ``(kv [B, H_kv, D_k, D_v], ksum [B, H_kv, D_k])`` or None."""
    if state is None:
        return
    want_kv = (k.shape[0], k.shape[-2], k.shape[-1], v.shape[-1])
    want_ksum = want_kv[:3]
    ok = (isinstance(state, (tuple, list)) and len(state) == 2
          and all(isinstance(s, torch.Tensor) for s in state)
          and tuple(state[0].shape) == want_kv and tuple(state[1].shape) == want_ksum)
    if not ok:
        got = (tuple(tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__ for s in state)
               if isinstance(state, (tuple, list)) else type(state).__name__)
        raise ValueError(
            f"{name} must be a pair (kv [B, H_kv, D_k, D_v], ksum [B, H_kv, D_k]) = "
            f"({list(want_kv)}, {list(want_ksum)}); got {name}={got}. Pass the state returned by "
            f"linear_attention(..., return_state=True) or linear_attention_step for the same shapes."
        )


def step_tensors(q_t, k_t, v_t) -> None:
    """One decoding step: ``q_t: [B, H_q, D_k]``, ``k_t: [B, H_kv, D_k]``, ``v_t: [B, H_kv, D_v]``."""
    for name, x in (("q_t", q_t), ("k_t", k_t), ("v_t", v_t)):
        is_tensor(name, x)
        if x.dim() != 3:
            raise ValueError(
                f"linear_attention_step takes {name} of shape [B, H, D] (3-D, one token); got "
                f"{name}.dim()={x.dim()} (shape {tuple(x.shape)}). Index the token, e.g. x[:, t]."
            )
        float_dtype(name, x)
    same_dtype_device({"q_t": q_t, "k_t": k_t, "v_t": v_t})
    heads_and_dims(q_t, k_t, v_t, "linear_attention_step")


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


def nonempty_keys(what: str, k) -> None:
    n = 1
    for length in k.shape[1:-2]:
        n *= length
    if n == 0:
        raise ValueError(
            f"{what} needs at least one key (it averages over the keys); got k.shape={tuple(k.shape)}. "
            f"Pass a non-empty key sequence."
        )


def l2vit_args(q, temperature, denominator_min) -> None:
    if temperature is not None and isinstance(temperature, torch.Tensor):
        if tuple(temperature.shape) != (q.shape[-2],):
            raise ValueError(
                f"temperature must be a float or a tensor of shape [H_q] = [{q.shape[-2]}]; got "
                f"temperature.shape={tuple(temperature.shape)}. Pass one temperature per query head."
            )
    elif temperature is not None and (not isinstance(temperature, numbers.Real) or isinstance(temperature, bool)):
        raise TypeError(
            f"temperature must be None, a float or a [H_q] tensor; got temperature={temperature!r}. Pass a float."
        )
    if not isinstance(denominator_min, numbers.Real) or isinstance(denominator_min, bool) or denominator_min <= 0:
        raise ValueError(
            f"denominator_min must be a number > 0 (the clamp keeps the division finite); got "
            f"denominator_min={denominator_min!r}. Pass e.g. 1.0 or L2ViT's 100.0."
        )


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


def choice(name: str, value, options: tuple) -> None:
    if value not in options or isinstance(value, bool):
        raise ValueError(f"{name} must be one of {list(options)}; got {name}={value!r}. Pass one of them.")


# --- attention analysis and conversion (glocal.analysis, glocal.convert) ---


def capture_args(streaming, window, block) -> None:
    """``capture(streaming=True)`` needs the locality window up front; windows and blocks are positive ints."""
    if streaming and window is None:
        raise ValueError(
            "capture(streaming=True) computes statistics while the model runs, so it needs the locality window "
            f"now; got streaming=True, window=None. Pass window=w (tokens), e.g. capture(model, streaming=True, window=65)."
        )
    for name, value in (("window", window), ("block", block)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be a positive int or None; got {name}={value!r}. Pass e.g. {name}=64.")


def report_window(window, capture_window, streaming: bool) -> int:
    """The window of ``report()``: any positive int for exact captures; a streamed capture only has its own."""
    if streaming:
        if window is not None and window != capture_window:
            raise ValueError(
                f"a streaming capture computed its statistics for one window; got report(window={window}) but the "
                f"capture used window={capture_window}. Call report() or report(window={capture_window}), or capture "
                f"again with window={window}."
            )
        return capture_window
    window = window if window is not None else capture_window
    if window is None:
        raise ValueError("report() needs a locality window; got window=None. Pass report(window=w), e.g. window=65.")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive int; got window={window!r}. Pass e.g. window=65.")
    return window


def report_clip(clip, capture_clip) -> None:
    if clip != capture_clip:
        raise ValueError(
            f"a streaming capture computed the windowed average attention distance for one clip; got "
            f"waad_clip={clip} but the capture used {capture_clip}. Pass waad_clip to capture() instead."
        )


def conversion_rule(key, rule, local_cls, hybrid_cls) -> None:
    """A plan maps (layer, head) ints to Local(window, sinks) or Hybrid(window, sinks, global_branch)."""
    if (not isinstance(key, tuple) or len(key) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in key)):
        raise TypeError(
            f"plan keys must be (layer, head) pairs of non-negative ints; got key {key!r}. "
            f"Write the plan as {{(0, 3): glocal.convert.Local(65)}}."
        )
    if not isinstance(rule, (local_cls, hybrid_cls)):
        raise TypeError(
            f"plan values must be glocal.convert.Local or glocal.convert.Hybrid; got {type(rule).__name__} for "
            f"key {key}. Wrap the window as glocal.convert.Local(window, sinks)."
        )
    if not isinstance(rule.window, int) or isinstance(rule.window, bool) or rule.window < 1:
        raise ValueError(f"window must be a positive int (tokens); got window={rule.window!r} for {key}. Use e.g. 65.")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in rule.sinks):
        raise TypeError(
            f"sinks must be token positions (ints; negative counts from the last real token); got "
            f"sinks={rule.sinks!r} for {key}. Use e.g. sinks=(0, -1)."
        )
    if isinstance(rule, hybrid_cls):
        g = rule.global_branch
        if not isinstance(g, int) or isinstance(g, bool) or g < 1:
            raise ValueError(
                f"global_branch is the block length (tokens) of the pooled global keys and must be a positive int; "
                f"got global_branch={g!r} for {key}. Use e.g. 16."
            )


def plan_targets(plan: dict, layers: int, heads_per_layer: list[int]) -> None:
    for layer, head in plan:
        if layer >= layers:
            raise ValueError(
                f"plan names layer {layer} but the model has {layers} attention layers (0..{layers - 1}); "
                f"got key {(layer, head)}. Build the plan from this model's report."
            )
        if head >= heads_per_layer[layer]:
            raise ValueError(
                f"plan names head {head} of layer {layer}, which has {heads_per_layer[layer]} heads; got key "
                f"{(layer, head)}. Use a head index below {heads_per_layer[layer]}."
            )


def steering_converted_layer(steered: bool, layer: int, heads: list) -> None:
    """A steering handler and a conversion must not meet in one layer: conversion would drop the steering."""
    if steered:
        raise ValueError(
            f"layer {layer} has converted heads {heads} and a steering handler: the conversion replaces the "
            f"attention that steering rewrites, so the steering would be silently lost. Steer the model before "
            f"converting it, or call glocal.convert.restore(model) first."
        )


def steering_factor(name: str, value, low: float = 0.0, high: float | None = None) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= low
    ok = ok and (high is None or value <= high)
    if not ok:
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be a number {rng}; got {name}={value!r}. Pass a value {rng}.")
