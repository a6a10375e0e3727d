"""Checks of the decoding caches (glocal.decoding): their options, the tokens fed to them, saved states.

A cache fixes its layout (batch, kv heads, key and value dims, dtype, device) at its first
append; every later token must match it. Every check runs before the cache is touched, so a
refused call leaves the cache as it was.
"""

from __future__ import annotations

import numbers

import torch

from .base import float_dtype, int_at_least, is_tensor

MEANINGS = {"window": "the keys of the window each query attends", "sinks": "the first tokens every query attends",
            "dilation": "the step between the window's keys", "block_size": "keys per routed block",
            "chunk_size": "positions per recurrent chunk"}


def cache_count(name: str, value, minimum: int) -> int:
    """An int option of a cache (window, dilation, block_size, chunk_size: >= 1; sinks: >= 0)."""
    return int_at_least(name, value, minimum, MEANINGS[name], {"sinks": 4, "dilation": 1}.get(name, 64))


def cache_positions(positions, rope_theta, dilation: int) -> None:
    """"absolute" or "cache"; re-indexing needs RoPE to re-index and a contiguous window."""
    if positions not in ("absolute", "cache"):
        raise ValueError(f"positions must be 'absolute' (each key keeps its stream position) or 'cache' (keys "
                         f"re-indexed by their slot in the cache); got positions={positions!r}. Pass one of them.")
    if rope_theta is not None and (not isinstance(rope_theta, numbers.Real) or isinstance(rope_theta, bool)
                                   or rope_theta <= 0):
        raise ValueError(f"rope_theta must be a number > 0 (the RoPE base) or None (the cache rotates nothing); "
                         f"got rope_theta={rope_theta!r}. Pass e.g. rope_theta=10000.0.")
    if positions == "cache" and rope_theta is None:
        raise ValueError("positions='cache' re-indexes the keys by rotating them with RoPE, so it needs the "
                         "RoPE base; got rope_theta=None. Pass rope_theta (the cache then rotates q and k itself: "
                         "give it q and k before RoPE), or use positions='absolute'.")
    if positions == "cache" and dilation != 1:
        raise ValueError(f"positions='cache' gives the kept keys consecutive slots, which a dilated window does "
                         f"not have; got dilation={dilation}. Use positions='absolute' with dilation > 1.")


def cache_tokens(layout: dict | None, k, v, rope: bool) -> None:
    """Keys and values of one token ``[B, H_kv, D]`` (``append``) or of a chunk ``[B, T, H_kv, D]`` (``extend``),
    consistent with each other and with the ``layout`` the cache fixed at its first append."""
    is_tensor("k", k)
    is_tensor("v", v)
    float_dtype("k", k)
    float_dtype("v", v)
    if k.dim() != v.dim() or k.dim() not in (3, 4):
        raise ValueError(f"a cache takes keys and values of one token [B, H_kv, D] (append) or of a chunk "
                         f"[B, T, H_kv, D] (extend); got k.shape={tuple(k.shape)}, v.shape={tuple(v.shape)}. "
                         f"Pass k[:, t] and v[:, t] for token t.")
    if k.shape[:-1] != v.shape[:-1] or k.dtype != v.dtype or k.device != v.device:
        raise ValueError(f"k and v must agree on every axis but the last, on dtype and on device; got "
                         f"k: {tuple(k.shape)} {k.dtype} {k.device}, v: {tuple(v.shape)} {v.dtype} {v.device}. "
                         f"Pass the key and value of the same tokens.")
    if rope and k.shape[-1] % 2:
        raise ValueError(f"the cache rotates keys with RoPE, which needs an even head dim; got k.shape[-1]="
                         f"{k.shape[-1]}. Use an even head dim or rope_theta=None.")
    if layout is None:
        return
    got = _layout_of(k, v)
    if got != layout:
        raise ValueError(f"this cache holds tokens of {_describe(layout)}; got {_describe(got)}. Feed tokens of "
                         f"the same layout, or reset() the cache to start a new stream.")


def cache_query(layout: dict | None, q, length: int) -> None:
    """A query of one token ``[B, H_q, D]`` over a cache that holds at least one token."""
    is_tensor("q", q)
    if layout is None or length == 0:
        raise ValueError("attend needs at least one cached token; the cache is empty. append(k_t, v_t) the "
                         "query's own token first.")
    if q.dim() != 3:
        raise ValueError(f"attend takes the query of one token, shape [B, H_q, D]; got q.shape={tuple(q.shape)}. "
                         f"Pass q[:, t].")
    batch, heads, dim = q.shape
    if (batch != layout["batch"] or heads % layout["heads"] or dim != layout["key_dim"] or q.dtype != layout["dtype"]
            or q.device != layout["device"]):
        raise ValueError(f"the query must match the cache (batch {layout['batch']}, a multiple of its "
                         f"{layout['heads']} kv heads, key dim {layout['key_dim']}, {layout['dtype']} on "
                         f"{layout['device']}); got q.shape={tuple(q.shape)}, {q.dtype} on {q.device}. "
                         f"Project the query like the keys.")


def cache_gate(name: str, gate, like: torch.Tensor) -> None:
    """A RAT gate for the tokens of ``like`` ([B, (T,) H, D]): broadcastable to it, values in [0, 1]."""
    is_tensor(name, gate)
    try:
        shape = torch.broadcast_shapes(gate.shape, like.shape)
    except RuntimeError:
        shape = None
    if shape != like.shape:
        raise ValueError(f"{name} must broadcast to the shape of what it gates, {tuple(like.shape)}; got "
                         f"{name}.shape={tuple(gate.shape)}. Pass one gate per channel or per head "
                         f"(a trailing axis of 1).")
    if gate.numel() and not bool(((gate >= 0) & (gate <= 1)).all()):
        raise ValueError(f"{name} must lie in [0, 1] (a forget gate); got values in [{float(gate.min()):.4g}, "
                         f"{float(gate.max()):.4g}]. Pass sigmoid(logits).")


def cache_state(state, kind: str, options: dict) -> None:
    """A ``state_dict`` saved from a cache of the same kind and options."""
    if not isinstance(state, dict) or "kind" not in state:
        raise ValueError(f"load_state_dict takes the dict that state_dict() returned; got {type(state).__name__}. "
                         f"Pass cache.state_dict() (saved with torch.save, loaded with torch.load).")
    if state["kind"] != kind or state.get("options") != options:
        raise ValueError(f"a {kind} with options {options} cannot load the state of a {state['kind']} with "
                         f"options {state.get('options')}. Build the cache with the saved options first.")


def cache_prefill(length: int, where: str) -> None:
    """A forward that fills a cache runs on an empty one (a prefill); later tokens go through ``step``."""
    if length:
        raise ValueError(f"{where}(x, cache) fills an empty cache (a prefill); this cache already holds {length} "
                         f"tokens. Continue the stream with step(x_t, cache), or reset() the cache first.")


def cache_kind(cache, kind: type, where: str) -> None:
    """``cache`` is the cache ``new_cache`` of this module builds."""
    if not isinstance(cache, kind):
        raise TypeError(f"{where} takes the cache its new_cache(batch) returns, a {kind.__name__}; got "
                        f"{type(cache).__name__}. Build it with {where.split('.')[0]}.new_cache(batch).")


def _layout_of(k, v) -> dict:
    return {"batch": k.shape[0], "heads": k.shape[-2], "key_dim": k.shape[-1], "value_dim": v.shape[-1],
            "dtype": k.dtype, "device": k.device}


def _describe(layout: dict) -> str:
    return (f"batch {layout['batch']}, {layout['heads']} kv heads, key dim {layout['key_dim']}, value dim "
            f"{layout['value_dim']}, {layout['dtype']} on {layout['device']}")


def cache_decodable(ok: bool, where: str, what: str) -> None:
    """Decoding token by token is defined for causal layers over sequences."""
    if not ok:
        raise ValueError(f"{where} decodes token by token only as a causal layer over sequences; this one has "
                         f"{what}. Build it with is_causal=True on sequences (a decoder) to decode.")


def cache_batch(cache_batch: int | None, batch: int, cache_layers: int, depth: int) -> None:
    """A model's cache was built for this model (one cache per layer) and this many streams."""
    if cache_layers != depth:
        raise ValueError(f"the cache must hold one cache per layer of the model; got {cache_layers} for a model of "
                         f"depth {depth}. Build it with model.new_cache(batch).")
    if cache_batch is not None and cache_batch != batch:
        raise ValueError(f"the cache was built for batch={cache_batch} streams; got x of batch {batch}. Pass "
                         f"{cache_batch} streams, or build a cache with model.new_cache({batch}).")
