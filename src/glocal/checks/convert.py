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


def accelerate_target(is_hf_model: bool, name: str) -> None:
    """glocal.accelerate reads the windows of Hugging Face transformers models from their configuration."""
    if not is_hf_model:
        raise TypeError(
            f"glocal.accelerate handles Hugging Face transformers models (a `config` with an attention "
            f"implementation, attention through transformers' attention interface); got {name}. For other models "
            f"call glocal.na1d(q, k, v, kernel_size=..., is_causal=...) in their attention yourself."
        )


def plan_avoids_accelerated(plan_layers: list, accelerated: list) -> None:
    """A conversion plan may not name layers that glocal.accelerate runs (their window would be converted twice)."""
    both = sorted(set(plan_layers) & set(accelerated))
    if both:
        raise ValueError(
            f"layers {both} are accelerated by glocal.accelerate (their configured window runs exactly with glocal's "
            f"ops), so a conversion plan may not also name them; got plan layers {sorted(plan_layers)}, accelerated "
            f"layers {sorted(accelerated)}. Convert heads of the other layers only, or call "
            f"glocal.convert.restore(model) first and convert without accelerating."
        )


def plan_split(batch: int) -> None:
    """A measured plan holds some calibration rows out; that needs at least two rows."""
    if batch < 2:
        raise ValueError(
            f"a measured plan is accepted on held-out inputs, so `inputs` needs at least 2 sequences to split "
            f"(every fourth is held out); got {batch}. Pass more calibration sequences, or the held-out ones as "
            f"validation=."
        )


def plan_quality(min_cosine: float, margin: float) -> None:
    """The quality floor plus its margin must be a cosine below 1."""
    if not (0.0 < min_cosine + margin < 1.0) or margin < 0:
        raise ValueError(
            f"min_cosine + margin is the held-out mean cosine a plan must keep, so it must lie in (0, 1) with "
            f"margin >= 0; got min_cosine={min_cosine}, margin={margin}. Use e.g. min_cosine=0.98, margin=0.005."
        )
