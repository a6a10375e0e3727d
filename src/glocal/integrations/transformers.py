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
    heads; a rule object without it runs its heads through ``attend``), the unconverted ones as one SDPA call.
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
    full = [h for h in range(heads) if h not in rules]
    if full:
        at = _heads_index(full, out.device)
        o = _full(call, at).transpose(1, 2).to(out.dtype)
        if isinstance(at, slice):
            out[:, :, at] = o
        else:
            out.index_copy_(2, at, o)
    return out


def _heads_index(heads: list[int], device):
    """A run of heads as a slice (views, no gather or scatter copies), other sets as an index tensor
    (index_select / index_copy_: a list index costs several times more on the CPU)."""
    if heads == list(range(heads[0], heads[-1] + 1)):
        return slice(heads[0], heads[-1] + 1)
    return torch.tensor(heads, device=device)


def _full(call, heads) -> torch.Tensor:
    """The original attention of the unconverted heads (a slice or an index tensor): [B, h, T_q, D_v]."""
    mask = call.bias if call.bias is not None else call.allowed
    take = (lambda x: x[:, heads]) if isinstance(heads, slice) else (lambda x: x.index_select(1, heads))  # noqa: E731
    if mask is not None and mask.shape[1] > 1:
        mask = take(mask)
    return torch.nn.functional.scaled_dot_product_attention(take(call.q), take(call.k), take(call.v), attn_mask=mask,
                                                            is_causal=call.causal, scale=call.scale)
