"""Apply a plan to a model and undo it: the adapter for the model's kind, plan validation, convert, restore.

Shapes:
    plan: {(layer, head): Local(window, sinks) | Hybrid(window, sinks, global_branch)}

Example:
    >>> from glocal.convert.apply import validate_plan
    >>> from glocal.convert import Local
    >>> validate_plan({(0, 1): Local(9)}, heads_per_layer=[4])
    {0: {1: Local(window=9, sinks=())}}
"""

from __future__ import annotations

from .. import checks
from ..integrations import timm as vit
from ..integrations import transformers as hf
from .rules import Hybrid, Local


def adapter_for(model):
    """The integration module that converts ``model``: Hugging Face transformers or a timm-style ViT."""
    if hf.is_hf_model(model):
        return hf
    if vit.is_vit(model):
        return vit
    raise TypeError(
        f"glocal.convert handles Hugging Face transformers models (with a config using the attention interface) "
        f"and timm-style vision transformers (blocks[i].attn with qkv and num_heads, patch_embed.grid_size); "
        f"got {type(model).__name__}. Convert the attention calls yourself with glocal.na1d / glocal.na2d."
    )


def validate_plan(plan: dict, heads_per_layer: list[int]) -> dict:
    """Check a plan and group it by layer: {layer: {head: rule}}."""
    if not isinstance(plan, dict):
        raise TypeError(f"plan must be a dict {{(layer, head): Local | Hybrid}}; got {type(plan).__name__}.")
    by_layer: dict[int, dict] = {}
    for key, rule in plan.items():
        checks.conversion_rule(key, rule, Local, Hybrid)
        by_layer.setdefault(key[0], {})[key[1]] = rule
    checks.plan_targets(plan, len(heads_per_layer), heads_per_layer)
    return by_layer


def convert(model, plan: dict):
    """Convert the planned heads of ``model`` in place (merging with an earlier conversion); returns the model.

    Shapes:
        plan: {(layer, head): Local(window, sinks) | Hybrid(window, sinks, global_branch)}

    Layers are numbered like :func:`glocal.analysis.capture` numbers them. Works on Hugging Face
    transformers encoders and decoders (through their attention interface) and on timm-style
    vision transformers (2-D neighborhood attention over the patch grid; class/register tokens
    are extra keys/values every patch attends, and they themselves keep full attention).

    Example:
        >>> import glocal
        >>> rule = glocal.convert.Local(65, sinks=(0, -1))
        >>> rule.window, rule.sinks
        (65, (0, -1))
    """
    adapter = adapter_for(model)
    adapter.convert(model, validate_plan(plan, adapter.heads_per_layer(model)))
    return model


def restore(model):
    """Undo every conversion of ``model`` (its attention runs exactly as before); returns the model."""
    adapter_for(model).restore(model)
    return model
