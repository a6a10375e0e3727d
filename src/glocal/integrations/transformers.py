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
import inspect
import sys

import torch

from .. import checks, hooks
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
    if state is None or state.handlers or state.plan:
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
    for layer, rules in by_layer.items():
        state.plan.setdefault(layer, {}).update(rules)


def restore(model) -> None:
    state = getattr(model, "_glocal_state", None)
    if state is None:
        return
    state.plan.clear()
    _uninstall_if_idle(model)


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
    """Run a layer with some heads converted. Returns [B, T_q, H, D_v] (heads-last from here on)."""
    q, k, v = call.q.transpose(1, 2), call.k.transpose(1, 2), call.v.transpose(1, 2)
    batch, tq, heads, _ = q.shape
    out = q.new_zeros(batch, tq, heads, v.shape[-1])
    full = [h for h in range(heads) if h not in rules]
    if full:
        out[:, :, full] = _full(call, full).transpose(1, 2)
    valid = call.k_pos.rank >= 0
    for rule, hs in _rule_groups(rules).items():
        if tq == k.shape[1]:
            o = rule.attend(q[:, :, hs], k[:, :, hs], v[:, :, hs], call.scale, causal, valid)
        else:
            allowed = rule.mask(call.q_pos, call.k_pos, causal)[:, None]
            o, _ = dense_attention(q[:, :, hs].float(), k[:, :, hs], v[:, :, hs], call.scale, allowed)
        out[:, :, hs] = o.to(out.dtype)
    return out


def _full(call, heads) -> torch.Tensor:
    """The original attention of the unconverted heads: [B, h, T_q, D_v]."""
    allowed = call.allowed
    mask = call.bias if call.bias is not None else allowed
    if mask is not None and mask.shape[1] > 1:
        mask = mask[:, heads]
    return torch.nn.functional.scaled_dot_product_attention(
        call.q[:, heads], call.k[:, heads], call.v[:, heads], attn_mask=mask, is_causal=call.causal,
        scale=call.scale)
