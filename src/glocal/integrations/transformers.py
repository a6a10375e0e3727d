"""Hugging Face transformers adapter: capture, steering and conversion through the attention interface.

transformers (>= 5.0; tested with 5.24) routes every attention module's core computation through
``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``, with q/k/v as ``[B, H, T, D]``, the prepared
mask and the scale. glocal registers one function, ``"glocal_<original>"``, in ``AttentionInterface``
(and the original's mask builder under the same name in ``AttentionMaskInterface``, so masks keep their
format) and switches the model to it with ``set_attn_implementation``. The function hands each call to
capture/steering handlers, runs converted heads with glocal's ops, and calls the original implementation
for everything else, so a model with no plan and no handler computes exactly what it did before. Removing
the last hook switches the model back to its original implementation. Calls reach handlers through
:mod:`glocal.hooks`; converted heads run the rule objects' own methods (``rule.attend``, ``rule.probs``,
``rule.mask``: :mod:`glocal.convert.rules`), so this module imports neither analysis nor convert.

Attention layers are the modules whose ``forward`` looks up ``ALL_ATTENTION_FUNCTIONS``, numbered in
``model.named_modules()`` order (for BERT: ``encoder.layer.<i>.attention.self``).

Shapes:
    query: [B, H, T_q, D]   key/value: [B, H_kv, T_k, D]   returns ([B, T_q, H, D_v], None)

Example:
    >>> from glocal.integrations import transformers as hf  # doctest: +SKIP
    >>> [name for name, _ in hf.attention_modules(model)][:1]  # doctest: +SKIP
    ['encoder.layer.0.attention.self']
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys

import torch

from .. import checks, hooks
from ..checks.streaming import (
    streaming_args,
    streaming_batch_change,
    streaming_crop,
    streaming_layer_index,
    streaming_layer_types,
    streaming_model,
    streaming_reorder,
    streaming_rope_type,
    streaming_rotary,
    streaming_rotary_dims,
    streaming_tokens,
)
from ..numerics import dense_attention
from . import require

PREFIX = "glocal_"


def is_hf_model(model) -> bool:
    """Whether ``model`` looks like a Hugging Face transformers model (a config with an attention implementation)."""
    config = getattr(model, "config", None)
    return config is not None and hasattr(config, "_attn_implementation")


def _transformers():
    return require("transformers", purpose="capturing or converting a Hugging Face model")


def attention_modules(model) -> list:
    """(name, module) of every module whose forward goes through the attention interface, in module order."""
    found = []
    for name, module in model.named_modules():
        forward = inspect.unwrap(type(module).forward)
        code = getattr(forward, "__code__", None)
        if code is not None and "ALL_ATTENTION_FUNCTIONS" in code.co_names:
            found.append((name, module))
    return found


def _heads(module) -> int:
    for attr in ("num_attention_heads", "num_heads", "n_heads"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    config = getattr(module, "config", None)
    return int(getattr(config, "num_attention_heads"))


def heads_per_layer(model) -> list[int]:
    _transformers()
    return [_heads(m) for _, m in attention_modules(model)]


class _State:
    def __init__(self, original: str, modules):
        self.original = original
        self.modules = modules
        self.handlers: list = []
        self.plan: dict = {}
        self.accelerated: dict = {}  # {layer: window rule} of glocal.accelerate (see _accelerated)


def _install(model) -> _State:
    state = getattr(model, "_glocal_state", None)
    if state is not None:
        return state
    hf = _transformers()
    from transformers import AttentionInterface
    from transformers.masking_utils import (
        ALL_MASK_ATTENTION_FUNCTIONS,
        AttentionMaskInterface,
        sdpa_mask,
    )

    original = model.config._attn_implementation or "eager"
    modules = attention_modules(model)
    if not modules:
        raise TypeError(
            f"{type(model).__name__} has no attention module that uses transformers' attention interface "
            f"(transformers {hf.__version__}); glocal cannot hook it. Capture it through torch's SDPA instead: "
            f"glocal.analysis.capture(model.base_model) on a model built without `config`, or use attn_implementation='sdpa'."
        )
    name = PREFIX + original
    AttentionInterface.register(name, _glocal_attention)
    mask_fn = ALL_MASK_ATTENTION_FUNCTIONS[original] if original in ALL_MASK_ATTENTION_FUNCTIONS else sdpa_mask
    AttentionMaskInterface.register(name, mask_fn)
    state = _State(original, modules)
    for i, (qualified, module) in enumerate(modules):
        module._glocal_state = state
        module._glocal_layer = i
        module._glocal_name = qualified
    model._glocal_state = state
    model.set_attn_implementation(name)
    return state


def _uninstall_if_idle(model) -> None:
    state = getattr(model, "_glocal_state", None)
    if state is None or state.handlers or state.plan or state.accelerated:
        return
    model.set_attn_implementation(state.original)
    for _, module in state.modules:
        for attr in ("_glocal_state", "_glocal_layer", "_glocal_name"):
            if hasattr(module, attr):
                delattr(module, attr)
    del model._glocal_state


@contextlib.contextmanager
def attach_handler(model, handler):
    """Route the model's attention calls to ``handler`` inside the block (capture, steering)."""
    state = _install(model)
    state.handlers.append(handler)
    try:
        yield
    finally:
        state.handlers.remove(handler)
        _uninstall_if_idle(model)


def convert(model, by_layer: dict) -> None:
    """Apply a plan grouped by layer ({layer: {head: rule}}); merges with an earlier conversion."""
    state = _install(model)
    checks.plan_avoids_accelerated(sorted(by_layer), sorted(state.accelerated))
    for layer, rules in by_layer.items():
        state.plan.setdefault(layer, {}).update(rules)


def restore(model) -> None:
    state = getattr(model, "_glocal_state", None)
    if state is None:
        return
    state.plan.clear()
    state.accelerated.clear()
    _uninstall_if_idle(model)


# --------------------------------------------------------------------------------------------- acceleration
# glocal.accelerate (glocal.convert.accelerate) runs layers whose attention is already windowed by the model's
# configuration with glocal's neighborhood ops. The rule objects decide, call by call, whether they can
# reproduce the original exactly (their ``run`` returns None where they cannot); this adapter only hands
# them the raw call and falls back to the original implementation.


def original_implementation(model) -> str:
    """The attention implementation the model runs without glocal (``"sdpa"``, ``"eager"``, ...)."""
    state = getattr(model, "_glocal_state", None)
    if state is not None:
        return state.original
    return model.config._attn_implementation or "eager"


def accelerate(model, by_layer: dict) -> None:
    """Run the given layers ({layer: window rule}) through their rules' ``run``; merges with earlier calls."""
    state = _install(model)
    state.accelerated.update(by_layer)


def accelerated_layers(model) -> dict:
    """{layer: window rule} of the layers glocal.accelerate runs now (empty when none)."""
    state = getattr(model, "_glocal_state", None)
    return dict(state.accelerated) if state is not None else {}


def converted_layers(model) -> list[int]:
    """The layers with converted heads (glocal.convert), sorted."""
    state = getattr(model, "_glocal_state", None)
    return sorted(layer for layer, rules in state.plan.items() if rules) if state is not None else []


def _accelerated(module, window, original, query, key, value, attention_mask, dropout, scaling, kwargs):
    """One call of an accelerated layer: the window rule's exact attention, or the original where it declines.

    q/k/v arrive as transformers gives them (heads-first, kv heads not repeated). The rule gets a way to
    run the original on chosen query rows of one sequence, for the padded query rows whose output is the
    original implementation's own convention (e.g. fully masked rows).
    """

    def original_rows(b, rows):
        mask = attention_mask[b:b + 1] if attention_mask.shape[0] > 1 else attention_mask
        out, _ = original(module, query[b:b + 1, :, rows], key[b:b + 1], value[b:b + 1], mask[:, :, rows],
                          dropout=dropout, scaling=scaling, **kwargs)
        return out

    with hooks.handling():  # glocal ops inside are this layer's own work, not calls for op observers
        out = window.run(query, key, value, attention_mask, scaling, dropout, kwargs, original_rows)
    if out is None:
        return original(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    return out, None


def _original_function(module, state):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = state.original
    if name != "eager" and name in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[name]
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if eager is None:
        return ALL_ATTENTION_FUNCTIONS["sdpa"]
    return eager


def _glocal_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    state = getattr(module, "_glocal_state", None)
    if state is None:  # a module of another model sharing the registered name: behave like sdpa
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, dropout=dropout,
                                               scaling=scaling, **kwargs)
    original = _original_function(module, state)
    layer = module._glocal_layer
    window = state.accelerated.get(layer)
    if window is not None and not state.handlers and not hooks.busy():
        return _accelerated(module, window, original, query, key, value, attention_mask, dropout, scaling, kwargs)
    rules = state.plan.get(layer)
    if (not state.handlers and not rules) or hooks.busy():
        return original(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    is_causal = kwargs.get("is_causal")
    module_causal = bool(getattr(module, "is_causal", False) if is_causal is None else is_causal)
    causal_flag = module_causal and attention_mask is None and query.shape[2] > 1
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    mask = attention_mask if isinstance(attention_mask, torch.Tensor) else None
    if attention_mask is not None and mask is None:
        raise TypeError(
            f"glocal reads boolean or additive attention masks; got {type(attention_mask).__name__} from "
            f"attn_implementation={state.original!r}. Load the model with attn_implementation='sdpa' or 'eager'."
        )
    call = hooks.sdpa_call(query, key, value, mask, causal_flag, scale, layer, module._glocal_name)
    if rules:
        call.replaced = _replaced_heads(call, rules, module_causal)
    out = hooks.dispatch(state.handlers, call) if state.handlers else None
    if rules:
        checks.steering_converted_layer(out is not None, layer, sorted(rules))
        with hooks.handling():
            out = _converted(call, rules, module_causal)
    if out is None:
        return original(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    return out.to(query.dtype), None


def _rule_groups(rules: dict) -> dict:
    """{rule: [heads]} of a layer's plan."""
    groups: dict = {}
    for h, rule in rules.items():
        groups.setdefault(rule, []).append(h)
    return groups


def _replaced_heads(call, rules: dict, causal: bool) -> list:
    """The converted heads' probabilities for recordings (``AttentionCall.replaced``)."""

    def probs_of(heads, rule):
        return lambda start, stop: rule.probs(call.q[:, heads, start:stop].transpose(1, 2),
                                              call.k[:, heads].transpose(1, 2), call.q_pos.rows(start, stop),
                                              call.k_pos, call.scale, causal)

    return [(hs, probs_of(hs, rule)) for rule, hs in _rule_groups(rules).items()]


def _converted(call, rules: dict, causal: bool) -> torch.Tensor:
    """Run a layer with some heads converted. Returns [B, T_q, H, D_v] (heads-last from here on).

    Whole sequences: the converted heads run fused (the rules' ``attend_heads``, one call for all Local/Hybrid
    heads; a rule object without it runs its heads through ``attend``), the unconverted ones as one SDPA call
    per run of consecutive heads.
    A decoding step (T_q < T_k): all converted heads as one dense call with a per-head mask from their rules'
    ``mask``.
    """
    q, k, v = call.q.transpose(1, 2), call.k.transpose(1, 2), call.v.transpose(1, 2)
    batch, tq, heads, _ = q.shape
    if tq == k.shape[1]:
        valid = None if call.allowed is None else call.k_pos.rank >= 0
        fused = next((r.attend_heads for r in rules.values() if getattr(r, "attend_heads", None)), None)
        if fused is not None:
            out = fused(q, k, v, [rules.get(h) for h in range(heads)], call.scale, causal, valid)
        else:
            out = q.new_zeros(batch, tq, heads, v.shape[-1])
            for rule, hs in _rule_groups(rules).items():
                out[:, :, hs] = rule.attend(q[:, :, hs], k[:, :, hs], v[:, :, hs], call.scale, causal,
                                            valid).to(out.dtype)
    else:
        out = q.new_zeros(batch, tq, heads, v.shape[-1])
        hs = sorted(rules)
        masks = {rule: rule.mask(call.q_pos, call.k_pos, causal) for rule in set(rules.values())}
        allowed = torch.stack([masks[rules[h]] for h in hs], 1)  # [B, h, T_q, T_k]
        o, _ = dense_attention(q[:, :, hs].float(), k[:, :, hs], v[:, :, hs], call.scale, allowed)
        out[:, :, hs] = o.to(out.dtype)
    for run in _runs([h for h in range(heads) if h not in rules]):
        out[:, :, run] = _full(call, run).transpose(1, 2).to(out.dtype)
    return out


def _runs(heads: list[int]) -> list[slice]:
    """Sorted heads as runs of consecutive ones: SDPA reads a run as a view, where a gather of scattered heads
    and the scatter of their output cost more than a call per run."""
    runs = []
    for h in heads:
        if runs and runs[-1].stop == h:
            runs[-1] = slice(runs[-1].start, h + 1)
        else:
            runs.append(slice(h, h + 1))
    return runs


def _full(call, heads: slice) -> torch.Tensor:
    """The original attention of a run of unconverted heads: [B, h, T_q, D_v]."""
    mask = call.bias if call.bias is not None else call.allowed
    if mask is not None and mask.shape[1] > 1:
        mask = mask[:, heads]
    return torch.nn.functional.scaled_dot_product_attention(call.q[:, heads], call.k[:, heads], call.v[:, heads],
                                                            attn_mask=mask, is_causal=call.causal, scale=call.scale)


# --------------------------------------------------------------------------------------------- streaming cache
# StreamingCache: StreamingLLM (Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks") as a
# transformers Cache: per attention layer the first `sinks` tokens of the stream and the last `window` ones, in
# preallocated buffers (docs/streaming_cache.md). transformers is optional, so the classes, which subclass its
# cache classes, are built on first access (`_streaming_cache_class`, reached through the module's __getattr__).


def _layer_types(config) -> tuple[list, str]:
    """The attention kind of every decoder layer of ``config``, and where it was read (for the messages)."""
    types = getattr(config, "layer_types", None)
    if types is not None:
        return list(types), "config.layer_types"
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    # Without layer_types, transformers reads a window or chunk size as "every layer is windowed".
    if getattr(config, "sliding_window", None) is not None:
        return ["sliding_attention"] * layers, f"config.sliding_window={config.sliding_window}"
    if getattr(config, "attention_chunk_size", None) is not None:
        return ["chunked_attention"] * layers, f"config.attention_chunk_size={config.attention_chunk_size}"
    return ["full_attention"] * layers, "config"


def _rotary_embeddings(model) -> list:
    """(name, module) of the model's rotary embeddings (``*rotary_emb`` with ``inv_freq``), one per distinct set of
    frequencies."""
    found = []
    for name, module in model.named_modules():
        inv_freq = getattr(module, "inv_freq", None)
        if not (name.rsplit(".", 1)[-1].endswith("rotary_emb") and isinstance(inv_freq, torch.Tensor)):
            continue
        if not any(other.inv_freq.shape == inv_freq.shape
                   and torch.equal(other.inv_freq.detach().cpu(), inv_freq.detach().cpu()) for _, other in found):
            found.append((name, module))
    return found


def _rope_type(rotary, config):
    rope_type = getattr(rotary, "rope_type", None)
    if rope_type is None:
        parameters = getattr(config, "rope_parameters", None)
        rope_type = parameters.get("rope_type") if isinstance(parameters, dict) else None
    return rope_type


class _SinkRotation:
    """Rotates keys forward by ``delta`` positions with the model's RoPE frequencies.

    Shapes: x [B, H_kv, S, D] -> [B, H_kv, S, D]; the first ``dims = 2 * len(inv_freq)`` channels rotate
    in Llama's rotate-half layout (channel i pairs with i + dims / 2), the others pass through.

    Example:
        >>> import torch
        >>> rotary = torch.nn.Module()
        >>> rotary.inv_freq = torch.tensor([1.0, 0.5], dtype=torch.float64)  # 2 pairs: channels (0, 2), (1, 3)
        >>> key = torch.tensor([1.0, 1.0, 0.0, 0.0, 7.0], dtype=torch.float64).view(1, 1, 1, 5)
        >>> _SinkRotation(rotary)(key, 2).round(decimals=4).flatten().tolist()  # angles 2 and 1; channel 4 kept
        [-0.4161, 0.5403, 0.9093, 0.8415, 7.0]
    """

    def __init__(self, rotary):
        # The module, not a copy of its frequencies: they follow model.to(device / dtype) as the model's own do.
        self.rotary = rotary
        self._memo = None  # (delta, device, dtype, inv_freq, cos, sin): every layer of a step shares one delta

    @property
    def dims(self) -> int:
        return 2 * self.rotary.inv_freq.shape[-1]

    def __call__(self, x: torch.Tensor, delta: int) -> torch.Tensor:
        inv_freq = self.rotary.inv_freq
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        memo = self._memo
        if memo is None or memo[:3] != (delta, x.device, compute) or memo[3] is not inv_freq:
            angle = inv_freq.to(x.device, compute) * delta
            memo = self._memo = (delta, x.device, compute, inv_freq, angle.cos(), angle.sin())
        cos, sin = memo[4], memo[5]
        half = cos.shape[-1]
        x1, x2 = x[..., :half].to(compute), x[..., half:2 * half].to(compute)
        # No attention_scaling: the stored keys carry the model's scaling already, a rotation keeps norms.
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)
        return rotated if 2 * half == x.shape[-1] else torch.cat((rotated, x[..., 2 * half:]), dim=-1)


@functools.cache
def _streaming_cache_class():
    """The StreamingCache class (built once, on first use, since its bases come from the optional transformers).

    Shapes:
        key/value chunk: [B, H_kv, T, D]   sink buffers: [B, H_kv, sinks, D]   ring buffers: [B, H_kv, window, D]
        returned by update: [B, H_kv, n_kept + T, D], n_kept <= sinks + window

    Example:
        >>> from glocal.integrations.transformers import StreamingCache  # doctest: +SKIP
        >>> cache = StreamingCache(model, window=256, sinks=4)  # doctest: +SKIP
        >>> out = model.generate(ids, max_new_tokens=1000, past_key_values=cache)  # doctest: +SKIP
    """
    require("transformers", purpose="StreamingCache (a StreamingLLM cache for Hugging Face models)")
    cache_utils = require("transformers.cache_utils")

    class StreamingLayer(cache_utils.CacheLayerMixin):
        """One attention layer of a StreamingCache: the first ``sinks`` tokens and the last ``window`` ones.

        Shapes:
            sink_keys/sink_values: [B, H_kv, sinks, D]   keys/values (the ring of the window): [B, H_kv, window, D]
            update(key_states [B, H_kv, T, D], ...) -> keys, values [B, H_kv, n_kept + T, D]

        Example:
            >>> layer = StreamingCache.Layer(window=8, sinks=2)  # doctest: +SKIP
            >>> keys, values = layer.update(torch.randn(1, 2, 3, 16), torch.randn(1, 2, 3, 16))  # doctest: +SKIP
            >>> layer.get_seq_length(), layer.get_mask_sizes(1)  # doctest: +SKIP
            (3, (4, 0))

        Token ``p`` of the stream (0-based) lives in the sinks at ``p`` when ``p < sinks``, else in the ring
        at ``(p - sinks) % window``. Keys are stored as the model gave them (rotated by their stream position);
        with a ``rotation`` (positions="cache") the sinks are returned rotated forward by the number of evicted
        tokens, which re-indexes the kept keys 0..n-1 (docs/streaming_cache.md).
        """

        is_sliding = False  # the cache, not a sliding mask, bounds the span: masks see every kept key
        is_compileable = False
        is_croppable = False

        def __init__(self, window: int, sinks: int, rotation=None, index: int = 0):
            super().__init__()
            self.window, self.sinks, self.rotation, self.index = int(window), int(sinks), rotation, index
            self.seen = 0
            self.sink_keys = self.sink_values = None
            self.layout = None

        def __repr__(self):
            return f"StreamingCache.Layer(window={self.window}, sinks={self.sinks}, seen={self.seen})"

        @staticmethod
        def _layout(key_states, value_states) -> dict:
            return {"batch": key_states.shape[0], "heads": key_states.shape[1], "key_dim": key_states.shape[3],
                    "value_dim": value_states.shape[3], "dtype": key_states.dtype, "device": key_states.device}

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            batch, heads, _, key_dim = key_states.shape
            value_dim = value_states.shape[-1]
            if self.rotation is not None:
                streaming_rotary_dims(self.rotation.dims, key_dim)
            self.device = key_states.device
            self.sink_keys = key_states.new_zeros(batch, heads, self.sinks, key_dim)
            self.sink_values = value_states.new_zeros(batch, heads, self.sinks, value_dim)
            self.keys = key_states.new_zeros(batch, heads, self.window, key_dim)
            self.values = value_states.new_zeros(batch, heads, self.window, value_dim)
            self.layout = self._layout(key_states, value_states)
            self.is_initialized = True

        def _kept(self) -> tuple[int, int]:
            """How many sinks and ring slots hold stream tokens."""
            return min(self.seen, self.sinks), min(max(self.seen - self.sinks, 0), self.window)

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            streaming_tokens(self.layout, key_states, value_states, self.seen, self.index)
            if not self.is_initialized or (self.seen == 0 and self._layout(key_states, value_states) != self.layout):
                self.lazy_initialization(key_states, value_states)
            n_sink, n_ring = self._kept()
            if n_sink + n_ring == 0:
                keys, values = key_states, value_states
            else:
                sink_keys = self.sink_keys[:, :, :n_sink]
                evicted = self.seen - n_sink - n_ring
                if self.rotation is not None and evicted and n_sink:
                    # The window keys and q carry contiguous absolute rotations; moving the sinks up by the gap
                    # makes every score that of positions 0..n-1. From the pristine copy, so errors never add up.
                    sink_keys = self.rotation(sink_keys, evicted)
                # The ring's slots are in ring order, not stream order: every past key is visible to every query
                # of the chunk, so their order does not change the attention.
                keys = torch.cat((sink_keys, self.keys[:, :, :n_ring], key_states), dim=-2)
                values = torch.cat((self.sink_values[:, :, :n_sink], self.values[:, :, :n_ring], value_states), dim=-2)
            self._write(key_states, value_states)
            self.seen += key_states.shape[-2]
            return keys, values

        def _write(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            """Store a chunk: its first tokens into free sinks, its last ``window`` others into the ring."""
            # Detached: an in-place copy of a tensor with a graph would chain every step's graph into the buffers,
            # and memory would grow with the stream. The current chunk still carries its graph (update returns it).
            key_states, value_states = key_states.detach(), value_states.detach()
            start, length = self.seen, key_states.shape[-2]
            into_sinks = min(max(self.sinks - start, 0), length)
            if into_sinks:
                self.sink_keys[:, :, start:start + into_sinks].copy_(key_states[:, :, :into_sinks])
                self.sink_values[:, :, start:start + into_sinks].copy_(value_states[:, :, :into_sinks])
            take = min(length - into_sinks, self.window)  # older tokens of a long chunk would be overwritten anyway
            if take <= 0:
                return
            slot = (start + length - take - self.sinks) % self.window
            first = min(take, self.window - slot)
            for ring, new in ((self.keys, key_states[:, :, length - take:]),
                              (self.values, value_states[:, :, length - take:])):
                ring[:, :, slot:slot + first].copy_(new[:, :, :first])
                ring[:, :, :take - first].copy_(new[:, :, first:])

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            # kv positions seen - n_kept .. seen + query_length - 1 against query positions seen ..: every kept key
            # is before every query, and the chunk is causal within itself.
            kept = sum(self._kept())
            return kept + query_length, self.seen - kept

        def get_seq_length(self) -> int:
            # Tokens of the stream, not tokens kept: generate's slicing and default position ids are absolute.
            return self.seen

        def get_max_length(self) -> int:
            return -1  # the stream has no maximum length (the layer keeps sinks + window tokens of it)

        def reset(self) -> None:
            self.seen = 0
            if self.is_initialized:
                for buffer in self._buffers():
                    buffer.zero_()

        def _buffers(self) -> list:
            return [self.sink_keys, self.sink_values, self.keys, self.values] if self.is_initialized else []

        def nbytes(self) -> int:
            return sum(buffer.nbytes for buffer in self._buffers())

        def offload(self):
            if self.is_initialized:
                self.sink_keys, self.sink_values, self.keys, self.values = (
                    buffer.to("cpu", non_blocking=True) for buffer in self._buffers())

        def prefetch(self):
            if self.is_initialized and self.keys.device != self.device:
                self.sink_keys, self.sink_values, self.keys, self.values = (
                    buffer.to(self.device, non_blocking=True) for buffer in self._buffers())

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            if not self.is_initialized or self.seen == 0:
                return
            streaming_reorder(beam_idx, self.layout["batch"])
            for buffer in self._buffers():
                buffer.copy_(buffer.index_select(0, beam_idx.to(buffer.device)))

        def batch_repeat_interleave(self, repeats: int) -> None:
            streaming_batch_change("batch_repeat_interleave", self.seen)  # before the stream: the update allocates

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            streaming_batch_change("batch_select_indices", self.seen)

        def crop(self, tokens_to_remove: int) -> None:
            streaming_crop(tokens_to_remove, self.seen)

    class StreamingCache(cache_utils.Cache):
        """StreamingLLM's cache for a Hugging Face causal LM: per attention layer, the first ``sinks`` tokens of the
        stream (attention sinks) and the last ``window`` tokens, in buffers preallocated at the first update.

        Shapes:
            update(key_states [B, H_kv, T, D], value_states [B, H_kv, T, D_v], layer_idx)
                -> keys [B, H_kv, n + T, D], values [B, H_kv, n + T, D_v], n = kept past tokens <= sinks + window
            per layer: sinks [B, H_kv, sinks, D], ring [B, H_kv, window, D] (keys and values): O(sinks + window)

        Example:
            >>> from glocal.integrations.transformers import StreamingCache  # doctest: +SKIP
            >>> cache = StreamingCache(model, window=256, sinks=4)  # doctest: +SKIP
            >>> out = model.generate(ids, max_new_tokens=4096, do_sample=False, past_key_values=cache)  # doctest: +SKIP
            >>> cache.get_seq_length() == out.shape[1] - 1  # doctest: +SKIP
            True

        ``StreamingCache(model, window, sinks=4, positions="cache")``. ``positions="cache"`` scores the kept keys as
        if they sat at positions 0..n-1 in cache order (sinks, then the window oldest to newest, the query last),
        as StreamingLLM does, by rotating only the sinks (RoPE models); ``positions="absolute"`` keeps every key's
        stream position. ``get_seq_length()`` counts the tokens of the stream (absolute), so ``generate`` and the
        default position ids stay correct. A multi-token chunk (the prompt) attends the kept past and itself
        causally, in full; only then is the stream cut back to sinks + window. Each query of a one-token step
        attends up to ``sinks + window`` past tokens and itself. ``nbytes()``: the bytes of all layers' buffers.

        Limitations: no padding (left-padded batches would put pad tokens in the sinks and misalign the mask),
        no rollback (``crop``), no batch-size change mid-stream; beam search is supported (``reorder_cache``).
        See docs/streaming_cache.md.
        """

        Layer = StreamingLayer

        def __init__(self, model, window: int, sinks: int = 4, positions: str = "cache"):
            streaming_args(window, sinks, positions)
            hf = is_hf_model(model) and isinstance(model, torch.nn.Module)
            modules = attention_modules(model) if hf else []
            streaming_model(type(model).__name__, hf, len(modules))
            config = model.config.get_text_config(decoder=True)
            streaming_layer_types(*_layer_types(config))
            rotation = None
            if positions == "cache":
                found = _rotary_embeddings(model)
                streaming_rotary(found, positions)
                streaming_rope_type(_rope_type(found[0][1], config), positions)
                rotation = _SinkRotation(found[0][1])
            self.window, self.sinks, self.positions = int(window), int(sinks), positions
            super().__init__(layers=[StreamingLayer(window, sinks, rotation, i) for i in range(len(modules))])

        def __repr__(self):
            return (f"StreamingCache(window={self.window}, sinks={self.sinks}, positions={self.positions!r}, "
                    f"layers={len(self.layers)}, seen={self.get_seq_length()})")

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
            streaming_layer_index(layer_idx, len(self.layers))
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)

        def nbytes(self) -> int:
            """Bytes held by all layers' buffers (0 before the first update, then constant along the stream)."""
            return sum(layer.nbytes() for layer in self.layers)

    # Pickle finds the classes through the module's __getattr__.
    StreamingCache.__module__ = StreamingLayer.__module__ = __name__
    StreamingCache.__qualname__ = "StreamingCache"
    StreamingLayer.__qualname__ = "StreamingCache.Layer"
    return StreamingCache


def __getattr__(name: str):
    # StreamingCache subclasses transformers' Cache, so it exists once transformers is imported (on first access).
    if name == "StreamingCache":
        return _streaming_cache_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
