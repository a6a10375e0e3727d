"""Checks of the routed layer (glocal.nn.RoutedLayer): its arguments, force, caches and sparsity target.

Every message states the rule, the values that broke it and the fix (see glocal.checks)."""

from __future__ import annotations

import math
import numbers

from .base import int_at_least

FORCE_OPTIONS = (None, "full", "sparse")


def _real(name: str, value, example: float) -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(
            f"{name} must be a real number; got {name}={value!r} of type {type(value).__name__}. "
            f"Pass a float, e.g. {name}={example}."
        )


def _probability(name: str, value, meaning: str, example: float) -> None:
    """A real number in [0, 1]."""
    _real(name, value, example)
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(f"{name} must lie in [0, 1] ({meaning}); got {name}={value!r}. Pass e.g. {name}={example}.")


def routed_layer_args(window, sinks, pool, temperature, threshold) -> None:
    """The window and sink counts, the router's pool, the Gumbel temperature and the eval threshold."""
    int_at_least("window", window, 1, "the sparse branch's query attends its window most recent keys, "
                  "itself included", 1024)
    int_at_least("sinks", sinks, 0, "the first tokens every query of the sparse branch also attends", 4)
    int_at_least("pool", pool, 1, "the router averages q over the first and the last pool tokens", 16)
    _real("temperature", temperature, 1.0)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"temperature must be finite and > 0 (it divides the router's noisy logit in training); "
            f"got temperature={temperature!r}. Pass e.g. temperature=1.0; smaller is closer to a hard choice."
        )
    _probability("threshold", threshold, "eval picks full attention where sigmoid(logit) > threshold", 0.5)


def routed_force(force) -> None:
    """``force`` is None (the router chooses), "full" or "sparse"."""
    if not (force is None or (isinstance(force, str) and force in FORCE_OPTIONS)):
        raise ValueError(
            f"force must be None (the router chooses), 'full' or 'sparse' (every sequence takes that "
            f"branch); got force={force!r}. Pass one of {list(FORCE_OPTIONS)}."
        )


def routed_sequence(x) -> None:
    """The router pools the first and the last tokens: a sequence needs at least one."""
    if x.shape[1] < 1:
        raise ValueError(
            f"RoutedLayer routes each sequence on its first and last tokens, so it needs T >= 1; "
            f"got x.shape={tuple(x.shape)}. Pass at least one token per sequence."
        )


def routed_cache(cache, cache_type: type, batch: int, prefill: bool) -> None:
    """A cache of the layer's type, of ``batch`` sequences: empty for a prefill, prefilled for a step."""
    if not isinstance(cache, cache_type):
        raise TypeError(
            f"cache must be a {cache_type.__name__}; got cache of type {type(cache).__name__}. "
            f"Make one with layer.new_cache(batch)."
        )
    if cache.batch != batch:
        raise ValueError(
            f"the cache holds one entry per sequence of the batch; got cache batch={cache.batch}, "
            f"x batch={batch}. Make the cache with layer.new_cache({batch})."
        )
    if prefill and cache.length != 0:
        raise ValueError(
            f"a forward with a cache is the prefill: it routes the sequence and needs an empty cache; got "
            f"cache.length={cache.length}. Continue a prefilled sequence with layer.step(x_t, cache), "
            f"or start over with cache.reset()."
        )
    if not prefill and cache.choice is None:
        raise ValueError(
            f"step reuses the branch chosen at the prefill, and this cache has none; got "
            f"cache.length={cache.length}, cache.choice=None. Prefill first: "
            f"y = layer(x, cache=cache) with cache = layer.new_cache(batch)."
        )


def sparsity_target(target, probability) -> None:
    """The target is a fraction in [0, 1], and the router must have run (``probability`` is its output)."""
    _probability("target", target, "the desired fraction of sequences routed to the sparse branch", 0.5)
    if probability is None:
        raise ValueError(
            "sparsity_loss reads the router probabilities of the last forward, and the layer has not run; "
            "got last_probability=None. Call the layer on a batch first, then sparsity_loss(target)."
        )
