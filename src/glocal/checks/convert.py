"""Checks of conversion plans (glocal.convert).

Every message states the rule, the values that broke it and the fix (see glocal.checks)."""

from __future__ import annotations


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
