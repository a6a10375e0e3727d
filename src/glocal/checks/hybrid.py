"""Checks of the hybrid layers and layer schedules (glocal.nn.HybridAttention, HybridEncoder, HybridDecoder).

Every message states the rule, the values that broke it and the fix (see glocal.checks)."""

from __future__ import annotations

import numbers

from .base import int_at_least

GLOBAL_BRANCHES = ("full", "tokens", "compressed", "linear", "moba")
COMBINES = ("merge", "gate")
HEAD_BRANCHES = ("local", "global", "both")
# The global branches whose key set is a set of softmax keys, so a union with the window is defined.
MERGEABLE = ("full", "tokens", "compressed", "moba")
# Options that belong to one global branch; passing one to another branch would be silently ignored.
BRANCH_OPTIONS = {"num_global_tokens": "tokens", "pool": "tokens", "reduction": "compressed",
                  "block_size": "moba", "top_k": "moba", "feature_map": "linear"}


def hybrid_branch(global_branch, combine, ndim, is_causal, options: dict) -> None:
    """The global branch, the combine rule and the branch's own options agree with each other."""
    if global_branch not in GLOBAL_BRANCHES:
        raise ValueError(f"global_branch must be one of {GLOBAL_BRANCHES}; got global_branch={global_branch!r}. "
                         f"Pick one of them.")
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}; got combine={combine!r}. Pass 'merge' (one softmax "
                         f"over both key sets) or 'gate' (a learned per-head sigmoid mix).")
    if ndim not in (1, 2, 3):
        raise ValueError(f"ndim must be 1, 2 or 3 (spatial axes of the input); got ndim={ndim!r}. Pass 1 for "
                         f"sequences [B, T, dim], 2 or 3 for grids.")
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool; got is_causal={is_causal!r}. Pass True or False.")
    if is_causal and ndim != 1:
        raise ValueError(f"HybridAttention is causal over sequences only; got is_causal=True with ndim={ndim}. "
                         f"Pass ndim=1 for causal sequences, or is_causal=False for grids.")
    if combine == "merge" and global_branch not in MERGEABLE:
        raise ValueError(
            f"combine='merge' takes one softmax over the window and the global keys, which needs a global branch "
            f"of softmax keys {MERGEABLE}; got global_branch={global_branch!r}. Pass combine='gate' for it.")
    for name, value in options.items():
        if value is not None and BRANCH_OPTIONS[name] != global_branch:
            raise ValueError(f"{name} is an option of global_branch={BRANCH_OPTIONS[name]!r}; got {name}={value!r} "
                             f"with global_branch={global_branch!r}. Leave {name} unset.")
    if global_branch == "tokens":
        if (options["num_global_tokens"] is None) == (options["pool"] is None):
            raise ValueError(
                f"global_branch='tokens' takes its tokens from num_global_tokens (learned) or pool (pooled input); "
                f"got num_global_tokens={options['num_global_tokens']!r}, pool={options['pool']!r}. Pass exactly one.")
        if is_causal and options["pool"] is not None:
            raise ValueError(f"pooled global tokens summarise the whole input, so a causal layer would read the "
                             f"future; got is_causal=True, pool={options['pool']!r}. Pass num_global_tokens instead.")
    for branch, required in (("compressed", ("reduction",)), ("moba", ("block_size", "top_k"))):
        for name in required:
            if global_branch == branch and options[name] is None:
                raise ValueError(f"global_branch={branch!r} needs {name}; got {name}=None. Pass it, e.g. "
                                 f"{name}={4 if name == 'reduction' else 64 if name == 'block_size' else 3}.")


def head_branches(value, num_heads: int) -> tuple:
    """One of 'local', 'global', 'both' per head (None: every head 'both')."""
    if value is None:
        return ("both",) * num_heads
    if isinstance(value, str) or not hasattr(value, "__len__") or len(value) != num_heads:
        raise ValueError(f"head_branches must be a sequence of num_heads={num_heads} entries from {HEAD_BRANCHES}; "
                         f"got head_branches={value!r}. Pass e.g. {('local', 'global') * (num_heads // 2) or ('both',)}.")
    bad = [b for b in value if b not in HEAD_BRANCHES]
    if bad:
        raise ValueError(f"every entry of head_branches must be one of {HEAD_BRANCHES}; got {bad[0]!r} in "
                         f"head_branches={tuple(value)!r}. Use only those words.")
    return tuple(value)


def positive_int(name: str, value) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {name}={value!r}. Pass a positive int.")
    return int(value)


def rope_dims(rope_theta, head_dim: int, ndim: int) -> None:
    """RoPE rotates channel pairs, one equal part of the head per axis on a grid."""
    if rope_theta is None:
        return
    if not isinstance(rope_theta, (int, float)) or isinstance(rope_theta, bool) or rope_theta <= 0:
        raise ValueError(f"rope_theta must be a positive number or None; got rope_theta={rope_theta!r}. "
                         f"Pass e.g. 10000.0, or None for no rotation.")
    if head_dim % (2 * ndim):
        raise ValueError(f"RoPE on a {ndim}-D input splits each head into {ndim} parts of channel pairs, so "
                         f"head_dim must be divisible by {2 * ndim}; got head_dim={head_dim}. Change dim or "
                         f"num_heads, or pass rope_theta=None.")


def schedule_pattern(pattern, valid: dict, depth, where: str) -> str:
    """A pattern string of layer letters, each one of ``valid`` (letter -> what it is)."""
    names = ", ".join(f"{letter} {what}" for letter, what in valid.items())
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern must be a non-empty string of layer letters ({names}); got pattern={pattern!r}. "
                         f"Pass e.g. 'GLL'.")
    bad = [c for c in pattern if c not in valid]
    if bad:
        raise ValueError(f"{where} layer letters are {names}; got {bad[0]!r} in pattern={pattern!r}. "
                         f"Use only the letters {''.join(valid)}.")
    positive_int("depth", depth)
    return pattern


def schedule_settings(settings, defaults: dict) -> dict:
    """Per-letter settings: a dict letter -> dict of options, each letter and option known; merged over defaults."""
    if settings is None:
        return {letter: dict(options) for letter, options in defaults.items()}
    if not isinstance(settings, dict):
        raise TypeError(f"settings must be a dict from layer letter to a dict of options; got "
                        f"settings={settings!r}. Pass e.g. {{'L': {{'window': 65}}}}.")
    merged = {letter: dict(options) for letter, options in defaults.items()}
    for letter, options in settings.items():
        if letter not in defaults:
            raise ValueError(f"settings has options for layer letter {letter!r}, which is not one of "
                             f"{''.join(defaults)}; got settings keys {list(settings)}. Use those letters.")
        if not isinstance(options, dict):
            raise TypeError(f"settings[{letter!r}] must be a dict of options; got {options!r}. "
                            f"Pass e.g. {dict(list(defaults[letter].items())[:1])}.")
        unknown = [name for name in options if name not in defaults[letter]]
        if unknown:
            raise ValueError(f"settings[{letter!r}] has no option {unknown[0]!r}; the options of {letter!r} are "
                             f"{sorted(defaults[letter])}. Use those names.")
        merged[letter].update(options)
    return merged


def window_sinks(sinks, causal_sequence: bool) -> None:
    """Attention sinks (the first tokens of a stream, attended by every query) belong to causal sequence layers."""
    int_at_least("sinks", sinks, 0, "the first tokens every query also attends", 4)
    if sinks and not causal_sequence:
        raise ValueError(f"attention sinks are the first tokens of a causal stream, so an L layer takes them only "
                         f"when causal over sequences (a decoder); got sinks={sinks}. Pass sinks=0 here.")


def window_border(border, window, is_causal: bool) -> None:
    """A local layer's border rule: 'shift' (glocal's window, DESIGN.md §1) or 'truncate' (|i - j| <= window // 2)."""
    if border not in ("shift", "truncate"):
        raise ValueError(f"border must be 'shift' (the window moves inward at the borders, DESIGN.md §1) or "
                         f"'truncate' (|i - j| <= window // 2, cut at the borders); got border={border!r}. "
                         f"Pass one of them.")
    if border == "truncate" and not is_causal and (not isinstance(window, int) or window % 2 == 0):
        raise ValueError(f"a truncated bidirectional window |i - j| <= r has 2r + 1 keys, so window must be an odd "
                         f"int; got window={window!r}. Pass e.g. window={window + 1 if isinstance(window, int) else 129}.")
