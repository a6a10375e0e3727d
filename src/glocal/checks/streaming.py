"""Checks of the StreamingLLM cache for Hugging Face models (glocal.integrations.transformers.StreamingCache).

A StreamingCache fixes its layout (batch, kv heads, key and value dims, dtype, device) at the first
update of a stream; every later chunk must match it. The checks of an update run before the cache
is touched, so a refused update leaves the cache as it was.

Every message states the rule, the values that broke it and the fix (see glocal.checks).

Example:
    >>> from glocal.checks import streaming
    >>> streaming.streaming_args(window=256, sinks=4, positions="cache")
    >>> streaming.streaming_args(window=0, sinks=4, positions="cache")
    Traceback (most recent call last):
    ...
    ValueError: window must be >= 1 (the cache keeps the last window tokens of the stream); got window=0. Pass e.g. window=256.
"""

from __future__ import annotations

import numbers

from .base import float_dtype, int_at_least, is_tensor

POSITIONS = ("cache", "absolute")
# RoPE variants whose frequencies change with the sequence length: the window keys keep the rotation of
# the step that wrote them, so a sink rotation with today's frequencies would not re-index them exactly.
LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def streaming_args(window, sinks, positions) -> None:
    """The window (>= 1), the sink count (>= 0) and the position mode ("cache" or "absolute")."""
    int_at_least("window", window, 1, "the cache keeps the last window tokens of the stream", 256)
    int_at_least("sinks", sinks, 0, "the cache keeps the first sinks tokens of the stream", 4)
    if not isinstance(positions, str) or positions not in POSITIONS:
        raise ValueError(
            f"positions must be 'cache' (the kept keys are re-indexed 0..n-1 in cache order, as in StreamingLLM) "
            f"or 'absolute' (every key keeps the position it had in the stream); got positions={positions!r}. "
            f"Pass positions='cache' or positions='absolute'."
        )


def streaming_model(name: str, is_hf_model: bool, attention_layers: int) -> None:
    """A Hugging Face transformers model with at least one attention layer."""
    if not is_hf_model:
        raise TypeError(
            f"StreamingCache is a transformers Cache for Hugging Face causal LMs (a model with a `config` that "
            f"names its attention implementation); got model of type {name}. Pass a transformers model, e.g. "
            f"LlamaForCausalLM."
        )
    if attention_layers < 1:
        raise ValueError(
            f"StreamingCache keeps keys and values per attention layer, and found none in this model; got "
            f"{name} with attention_layers={attention_layers} (modules whose forward goes through transformers' "
            f"attention interface). Pass a causal LM whose attention uses ALL_ATTENTION_FUNCTIONS (Llama, "
            f"Qwen2, ...)."
        )


def streaming_layer_types(layer_types: list, source: str) -> None:
    """Every attention layer is a full-attention layer: the cache alone decides which keys a query sees."""
    bad = {i: kind for i, kind in enumerate(layer_types) if kind != "full_attention"}
    if bad:
        shown = ", ".join(f"layer {i}: {kind!r}" for i, kind in list(bad.items())[:4])
        more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
        raise ValueError(
            f"StreamingCache needs every attention layer to be full attention: the model's own sliding or "
            f"chunked masks would measure distances on the cache's key slots, not on the stream; got "
            f"{len(bad)} of {len(layer_types)} layers that are not ({shown}{more}; read from {source}). "
            f"Use a model whose layers are all 'full_attention' (e.g. Llama, Qwen2 without sliding window), "
            f"or the model's own cache for this one."
        )


def streaming_rotary(found: list, positions: str) -> None:
    """positions="cache" rotates the sinks with the model's RoPE frequencies: one rotary embedding to read."""
    if positions != "cache":
        return
    if not found:
        raise ValueError(
            "positions='cache' re-indexes the kept keys by rotating the sinks with the model's RoPE frequencies, "
            "and found no rotary embedding; got no module named '*rotary_emb' with an inv_freq buffer. Use "
            "positions='absolute' (every key keeps its stream position), or a RoPE model such as Llama."
        )
    names = [name for name, _ in found]
    if len(found) > 1:
        raise ValueError(
            f"positions='cache' rotates the sinks with one set of RoPE frequencies, and the model has several "
            f"different ones; got rotary embeddings {names}. Use positions='absolute' for this model."
        )


def streaming_rope_type(rope_type, positions: str) -> None:
    """Re-indexing by a sink rotation needs frequencies that do not change along the stream."""
    if positions == "cache" and rope_type in LENGTH_DEPENDENT_ROPE:
        raise ValueError(
            f"positions='cache' rotates the sinks by the number of evicted tokens with fixed RoPE frequencies, "
            f"which a RoPE whose frequencies change with the length does not have; got rope_type={rope_type!r}. "
            f"Use positions='absolute' for this model."
        )


def streaming_rotary_dims(rotary_dims: int, head_dim: int) -> None:
    """The rotated channels (2 * len(inv_freq)) fit in the key head dim."""
    if rotary_dims > head_dim:
        raise ValueError(
            f"the model's RoPE rotates 2 * len(inv_freq) channels of each key, which must fit in the key head "
            f"dim; got rotary_dims={rotary_dims}, head_dim={head_dim}. Use positions='absolute' for this model."
        )


def streaming_layer_index(layer_idx, layers: int) -> None:
    """transformers numbers its attention layers 0..layers-1."""
    if not isinstance(layer_idx, numbers.Integral) or isinstance(layer_idx, bool) or not 0 <= layer_idx < layers:
        raise ValueError(
            f"the cache has one entry per attention layer of the model it was built for, numbered 0..{layers - 1}; "
            f"got layer_idx={layer_idx!r}. Build the StreamingCache from the model that runs it."
        )


def streaming_tokens(layout: dict | None, key_states, value_states, seen: int, layer: int) -> None:
    """A chunk [B, H_kv, T, D] of keys and values, consistent with the layout of the stream so far.

    ``layout`` holds the buffers' batch, heads, key_dim, value_dim, dtype and device, or is None before
    the first update."""
    is_tensor("key_states", key_states)
    is_tensor("value_states", value_states)
    float_dtype("key_states", key_states)
    float_dtype("value_states", value_states)
    if key_states.dim() != 4 or value_states.dim() != 4 or key_states.shape[:3] != value_states.shape[:3]:
        raise ValueError(
            f"a cache update takes keys and values [B, H_kv, T, D] of the same batch, heads and tokens; got "
            f"key_states.shape={tuple(key_states.shape)}, value_states.shape={tuple(value_states.shape)} for "
            f"layer {layer}. Pass the states as the attention layer computes them (heads before tokens)."
        )
    if key_states.dtype != value_states.dtype or key_states.device != value_states.device:
        raise TypeError(
            f"keys and values of one update must share dtype and device; got key_states: {key_states.dtype} "
            f"{key_states.device}, value_states: {value_states.dtype} {value_states.device} for layer {layer}. "
            f"Convert them with .to(key_states)."
        )
    if layout is None or seen == 0:
        return
    got = {"batch": key_states.shape[0], "heads": key_states.shape[1], "key_dim": key_states.shape[3],
           "value_dim": value_states.shape[3], "dtype": key_states.dtype, "device": key_states.device}
    changed = {name: (layout[name], value) for name, value in got.items() if value != layout[name]}
    if changed:
        diff = ", ".join(f"{name}: {old} -> {new}" for name, (old, new) in changed.items())
        raise ValueError(
            f"a StreamingCache holds one stream per batch row, and fixes its layout (batch, kv heads, head dims, "
            f"dtype, device) at the stream's first update; got a change after seen={seen} tokens in layer "
            f"{layer} ({diff}). Start a new stream with cache.reset() or a new StreamingCache, or keep the "
            f"batch as it began."
        )


def streaming_batch_change(operation: str, seen: int) -> None:
    """Beam and batch bookkeeping that changes the batch size is refused mid-stream."""
    if seen > 0:
        raise NotImplementedError(
            f"StreamingCache preallocates its buffers for the stream's batch, and does not change the batch "
            f"size mid-stream; got cache.{operation}(...) after seen={seen} tokens. Generate without "
            f"num_return_sequences > 1 / contrastive search, or reset() the cache and run again."
        )


def streaming_reorder(beam_idx, batch: int) -> None:
    """reorder_cache permutes the batch rows in place: one index per row."""
    if beam_idx.dim() != 1 or beam_idx.shape[0] != batch:
        raise ValueError(
            f"reorder_cache picks one existing row for each row of the batch, in place; got "
            f"beam_idx.shape={tuple(beam_idx.shape)} for batch={batch}. Pass {batch} row indices."
        )


def streaming_crop(tokens_to_remove, seen: int) -> None:
    """Evicted tokens are gone, so only a no-op crop is possible."""
    if tokens_to_remove != 0:
        raise NotImplementedError(
            f"StreamingCache evicts old tokens, so it cannot roll the stream back; got "
            f"crop(tokens_to_remove={tokens_to_remove!r}) after seen={seen} tokens. Do not use it with assisted "
            f"or speculative decoding, or keep a DynamicCache for those."
        )
