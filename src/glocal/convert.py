"""Training-free conversion of full-attention heads to local (or local + global) attention.

A plan maps ``(layer, head)`` to a rule; heads not in the plan keep their attention:

- ``Local(window, sinks)``: the head attends the ``window`` tokens around each query (neighborhood
  attention: the window is centred and shifted inward at the borders, so it always holds ``window``
  tokens; causal models take the ``window`` tokens ending at the query) plus the ``sinks``, token
  positions every query also attends (negative positions count from the last real token, so
  ``sinks=(0, -1)`` are the first and last real tokens, e.g. [CLS] and [SEP]).
- ``Hybrid(window, sinks, global_branch)``: the same plus a global branch, mean-pooled keys/values of
  blocks of ``global_branch`` tokens (each pooled score carries + log(block length), so a block of equal
  keys weighs as its members would); blocks whose centre lies in a query's window are left out for that
  query. The branches are merged exactly with their log-sum-exps (``glocal.merge_attentions``).

Layers are numbered like :func:`glocal.analysis.capture` numbers them. ``convert(model, plan)`` works on
Hugging Face transformers encoders and decoders (through their attention interface) and on timm-style
vision transformers (2-D neighborhood attention over the patch grid; class/register tokens are extra
keys/values every patch attends, and they themselves keep full attention); ``convert.restore(model)``
undoes it.

Shapes (:func:`local_attention`):
    q: [B, H, T, D]   k: [B, H, T, D]   v: [B, H, T, D_v]   valid: [B, T] bool   →   out [B, H, T, D_v]

Example:
    >>> import torch, glocal
    >>> from glocal.convert import Local, local_attention
    >>> q = k = v = torch.randn(1, 2, 40, 8)
    >>> out = local_attention(q, k, v, Local(65, sinks=(0, -1)), scale=8 ** -0.5)
    >>> ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    >>> torch.allclose(out, ref, atol=1e-5)  # a window covering the input is full attention
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from . import checks
from .analysis import metrics


@dataclass(frozen=True)
class Local:
    """Attend the ``window`` tokens around each query plus the ``sinks`` positions."""

    window: int
    sinks: tuple = field(default=())

    def __post_init__(self):
        object.__setattr__(self, "sinks", tuple(self.sinks))


@dataclass(frozen=True)
class Hybrid:
    """Local(window, sinks) plus a pooled global branch with blocks of ``global_branch`` tokens."""

    window: int
    sinks: tuple = field(default=())
    global_branch: int = 16

    def __post_init__(self):
        object.__setattr__(self, "sinks", tuple(self.sinks))


def _sink_positions(sinks, length: int) -> list[int]:
    out = []
    for s in sinks:
        p = s if s >= 0 else length + s
        if 0 <= p < length and p not in out:
            out.append(p)
    return sorted(out)


def _branch(q, k, v, scale, allowed, bias=None):
    """Small dense attention over a few keys. q: [n, L, h, D], k/v: [n, S, h, D], allowed: [L, S]."""
    from .backends.reference import softmax_with_lse

    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = torch.einsum("nlhd,nshd->nlhs", q.to(compute), k.to(compute)) * scale
    if bias is not None:
        s = s + bias
    s = s.masked_fill(~allowed[None, :, None, :], -float("inf"))
    p, lse = softmax_with_lse(s)
    return torch.einsum("nlhs,nshd->nlhd", p, v.to(compute)).to(q.dtype), lse.float() if compute != torch.float64 else lse


def _local_packed(q, k, v, rule, scale: float, causal: bool):
    """Local/Hybrid attention over sequences of real tokens only. q, k, v: [n, L, h, D] → [n, L, h, D_v]."""
    from . import functional

    length = q.shape[1]
    window = min(rule.window, length)
    out, lse = functional.na1d(q, k, v, kernel_size=window, is_causal=causal, scale=scale, return_lse=True)
    outs, lses = [out], [lse]
    pos = torch.arange(length, device=q.device, dtype=torch.float64)
    extent = torch.tensor([[float(length)]], dtype=torch.float64, device=q.device)
    sinks = _sink_positions(rule.sinks, length)
    if sinks:
        s_pos = torch.tensor(sinks, dtype=torch.float64, device=q.device)
        inside = metrics.in_window(pos[None, :, None], s_pos[None, :, None], extent, window, causal)[0]
        allowed = ~inside
        if causal:
            allowed &= s_pos[None, :] <= pos[:, None]
        # A sink inside the query's window is already attended there: leaving it out here keeps every key once.
        o, l = _branch(q, k[:, sinks], v[:, sinks], scale, allowed)
        outs.append(o)
        lses.append(l)
    if isinstance(rule, Hybrid) and length > window:
        g = rule.global_branch
        blocks = math.ceil(length / g)
        pad = blocks * g - length
        kp = torch.nn.functional.pad(k, (0, 0, 0, 0, 0, pad)).reshape(k.shape[0], blocks, g, *k.shape[2:])
        vp = torch.nn.functional.pad(v, (0, 0, 0, 0, 0, pad)).reshape(v.shape[0], blocks, g, *v.shape[2:])
        counts = torch.full((blocks,), float(g), device=q.device)
        counts[-1] = g - pad
        kp = kp.sum(2) / counts[None, :, None, None].to(k.dtype)
        vp = vp.sum(2) / counts[None, :, None, None].to(v.dtype)
        start = torch.arange(blocks, device=q.device, dtype=torch.float64) * g
        centre = start + (counts.double() - 1) / 2
        inside = metrics.in_window(pos[None, :, None], centre.round()[None, :, None], extent, window, causal)[0]
        allowed = ~inside
        if causal:
            allowed &= (start + counts.double() - 1)[None, :] <= pos[:, None]
        bias = torch.log(counts)[None, None, None, :]
        o, l = _branch(q, kp, vp, scale, allowed, bias)
        outs.append(o)
        lses.append(l)
    if len(outs) == 1:
        return out
    return functional.merge_attentions(outs, lses)[0]


def local_attention(q, k, v, rule, scale: float, causal: bool = False, valid=None):
    """Apply one Local/Hybrid rule to heads-first tensors, over the real tokens of each sequence.

    Shapes:
        q: [B, H, T, D]   k: [B, H, T, D]   v: [B, H, T, D_v]   valid: [B, T] bool (None = all real)
        returns [B, H, T, D_v]; rows of padded queries are 0.

    Positions (window placement, sinks) count real tokens only, so padding on either side changes
    nothing for the real tokens. Sequences with the same padding pattern run as one batch.

    Example:
        >>> import torch
        >>> from glocal.convert import Local, local_attention
        >>> q = k = v = torch.randn(2, 4, 30, 16)
        >>> local_attention(q, k, v, Local(9, sinks=(0,)), scale=0.25).shape
        torch.Size([2, 4, 30, 16])
    """
    batch, heads, tokens = q.shape[0], q.shape[1], q.shape[2]
    out = q.new_zeros(batch, heads, tokens, v.shape[-1])
    if valid is None:
        valid = torch.ones(batch, tokens, dtype=torch.bool, device=q.device)
    patterns, which = torch.unique(valid, dim=0, return_inverse=True)
    for i in range(patterns.shape[0]):
        rows = (which == i).nonzero().flatten()
        cols = patterns[i].nonzero().flatten()
        if cols.numel() == 0:
            continue
        take = lambda x: x[rows][:, :, cols].transpose(1, 2)  # noqa: E731  [n, L, H, D]
        o = _local_packed(take(q), take(k), take(v), rule, scale, causal)
        out[rows[:, None], :, cols[None, :]] = o.to(out.dtype)  # advanced indices first: [n, L, H, D]
    return out


def local_mask(q_pos, k_pos, rule, causal: bool) -> torch.Tensor:
    """Boolean [B, T_q, T_k] of the keys a Local rule lets each query see (window ∪ sinks, real keys only).

    Used where the fast path does not apply (a decoding step with T_q != T_k). Hybrid rules are refused there.
    """
    inside = metrics.in_window(q_pos.coord, k_pos.coord, k_pos.extent, min(rule.window, 1 << 30), causal)
    length = k_pos.length[:, None]
    sink = torch.zeros_like(k_pos.rank, dtype=torch.bool)
    for s in rule.sinks:
        target = torch.full_like(length, s) if s >= 0 else length + s
        sink |= k_pos.rank == target
    allowed = inside | sink[:, None, :]
    if causal:
        allowed &= k_pos.rank[:, None, :] <= q_pos.rank[:, :, None]
    return allowed & (k_pos.rank >= 0)[:, None, :]


def converted_probs(q, k, q_pos, k_pos, rule, scale: float, causal: bool) -> torch.Tensor:
    """The attention probabilities a Local/Hybrid head runs, as a map over the call's keys.

    Shapes:
        q: [B, H, T_q, D]   k: [B, H, T_k, D]   q_pos, k_pos: :class:`metrics.Positions`   →   [B, H, T_q, T_k]

    Local: softmax over the window and sinks (:func:`local_mask`). Hybrid: the window, the sinks and the
    pooled blocks share one softmax; a block's probability is spread evenly over its tokens, so that
    ``probs @ v`` is the head's output (a block's value is its tokens' mean). Rows of padded queries are
    those of the mask (sinks only, or all zero).

    Example:
        >>> import torch
        >>> from glocal.analysis.metrics import positions_1d
        >>> from glocal.convert import Hybrid, converted_probs, local_attention
        >>> q, k, v = torch.randn(3, 1, 2, 20, 8).unbind(0)
        >>> pos = positions_1d(torch.ones(1, 20, dtype=torch.bool))
        >>> p = converted_probs(q, k, pos, pos, Hybrid(5, (0,), 4), 0.3, False)
        >>> torch.allclose(p @ v, local_attention(q, k, v, Hybrid(5, (0,), 4), 0.3), atol=1e-5)
        True
    """
    from .backends.reference import softmax_with_lse

    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k = q.to(compute), k.to(compute)
    tk = k.shape[2]
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    s = s.masked_fill(~local_mask(q_pos, k_pos, rule, causal)[:, None], -float("inf"))
    if not isinstance(rule, Hybrid):
        return softmax_with_lse(s)[0]
    # Blocks of `global_branch` real tokens (by rank), as in the conversion's pooled branch.
    g = rule.global_branch
    valid = k_pos.rank >= 0
    block = torch.where(valid, k_pos.rank // g, torch.zeros_like(k_pos.rank))  # [B, T_k]
    n_blocks = max(1, math.ceil(int(k_pos.length.max()) / g))
    counts = torch.zeros(k.shape[0], n_blocks, dtype=compute, device=k.device)
    counts.scatter_add_(1, block, valid.to(compute))
    index = block[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
    k_sum = torch.zeros(*k.shape[:2], n_blocks, k.shape[3], dtype=compute, device=k.device)
    k_sum.scatter_add_(2, index, k * valid[:, None, :, None])
    k_pool = k_sum / counts.clamp_min(1)[:, None, :, None]
    first = torch.arange(n_blocks, device=k.device, dtype=torch.float64) * g
    centre = (first + (counts.double() - 1) / 2).round()
    centre = torch.where(counts > 0, centre, torch.full_like(centre, float("nan")))
    blocks_ok = ~metrics.in_window(q_pos.coord, centre[..., None], k_pos.extent, rule.window, causal)
    blocks_ok &= (counts > 0)[:, None, :] & (q_pos.rank >= 0)[:, :, None]
    if causal:
        blocks_ok &= (first + counts.double() - 1)[:, None, :] <= q_pos.rank[:, :, None]
    sp = torch.einsum("bhqd,bhnd->bhqn", q, k_pool) * scale + torch.log(counts.clamp_min(1))[:, None, None, :]
    sp = sp.masked_fill(~blocks_ok[:, None], -float("inf"))
    p = softmax_with_lse(torch.cat([s, sp], -1))[0]
    p_keys, p_blocks = p[..., :tk], p[..., tk:] / counts.clamp_min(1)[:, None, None, :]
    spread = p_blocks.gather(-1, block[:, None, None, :].expand(*p_keys.shape))
    return p_keys + spread * valid[:, None, None, :]


# ---------------------------------------------------------------------------------------------------


def _adapter(model):
    from .analysis.capture import is_hf_model

    if is_hf_model(model):
        from .integrations import transformers as adapter

        return adapter
    from .integrations import timm as vit

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


class _Convert:
    """``glocal.convert(model, plan)`` converts in place and returns the model; see the module docstring.

    Shapes:
        plan: {(layer, head): Local(window, sinks) | Hybrid(window, sinks, global_branch)}

    Example:
        >>> import glocal
        >>> rule = glocal.convert.Local(65, sinks=(0, -1))
        >>> rule.window, rule.sinks
        (65, (0, -1))
    """

    Local = Local
    Hybrid = Hybrid

    def __call__(self, model, plan: dict):
        adapter = _adapter(model)
        by_layer = validate_plan(plan, adapter.heads_per_layer(model))
        adapter.convert(model, by_layer)
        return model

    def restore(self, model):
        """Undo every conversion of ``model`` (its attention runs exactly as before); returns the model."""
        _adapter(model).restore(model)
        return model

    def plan_from_report(self, *args, **kwargs):
        """Same as :func:`glocal.convert.plan_from_report` (also exported as ``glocal.plan_from_report``)."""
        return plan_from_report(*args, **kwargs)


convert = _Convert()
restore = convert.restore


# ---------------------------------------------------------------------------------------------------
# Planning


def mean_pooled(model, inputs) -> torch.Tensor:
    """Mean of the last hidden state over real tokens ([B, C]): the sentence embedding of MiniLM-style models.

    Example:
        >>> mean_pooled  # doctest: +ELLIPSIS
        <function mean_pooled at ...>
    """
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    hidden = out.last_hidden_state if getattr(out, "last_hidden_state", None) is not None else out.hidden_states[-1]
    mask = inputs.get("attention_mask")
    mask = torch.ones(hidden.shape[:2], device=hidden.device) if mask is None else mask.to(hidden.dtype)
    return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity of matching rows of ``a`` and ``b`` ([B, C] each)."""
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).mean())


def plan_from_report(report, model=None, inputs=None, windows=(17, 33, 65), sinks=(0, -1),
                     min_cosine: float = 0.99, max_heads: int | None = None, min_locality: float = 0.5,
                     hybrid: int | None = 16, embed=None, progress=None, chunk: int = 4) -> dict:
    """Propose a conversion plan from a capture report, optionally measured on calibration inputs.

    Shapes:
        report: Report of the model on calibration text; inputs: the model's keyword inputs (e.g. a
        tokenizer's output, [B, T]); returns {(layer, head): Local | Hybrid}

    Without ``model``/``inputs``: every head whose attention mass inside the report's window plus the
    first and last tokens (``locality_with_sinks``) is at least ``min_locality`` gets
    ``Local(report.window, sinks)``, most local first, up to ``max_heads``.

    With ``model`` and ``inputs`` (measured effect per head):

    1. each head alone is converted with each candidate rule, ``Local(w, sinks)`` for every window and,
       if ``hybrid`` is set, ``Hybrid(max(windows), sinks, hybrid)``; its effect is 1 - the mean cosine
       between the converted and original embeddings (``embed(model, inputs)``, default :func:`mean_pooled`);
    2. each head takes the cheapest rule (smallest window, Local before Hybrid) whose effect is within
       (1 - min_cosine) / 100 of that head's best rule;
    3. heads are added greedily by increasing effect, ``chunk`` at a time; a chunk whose addition takes the
       whole plan's mean cosine below ``min_cosine`` is retried head by head.

    Example:
        >>> import torch, glocal
        >>> from glocal.analysis import capture
        >>> q = k = v = torch.randn(1, 64, 2, 8)
        >>> with capture() as rec:
        ...     _ = glocal.na1d(q, k, v, kernel_size=9)
        >>> sorted(plan_from_report(rec.report(window=9)).items())  # heads come most local first
        [((0, 0), Local(window=9, sinks=(0, -1))), ((0, 1), Local(window=9, sinks=(0, -1)))]
    """
    pairs = report.heads()
    order = sorted(pairs, key=lambda p: -report.value("locality_with_sinks", *p))
    if model is None or inputs is None:
        chosen = [p for p in order if report.value("locality_with_sinks", *p) >= min_locality]
        if max_heads is not None:
            chosen = chosen[:max_heads]
        return {p: Local(report.window, sinks) for p in chosen}
    embed = embed or mean_pooled
    reference = embed(model, inputs)

    def quality(plan):
        if not plan:
            return 1.0
        convert(model, plan)
        try:
            return mean_cosine(embed(model, inputs), reference)
        finally:
            convert.restore(model)

    rules = [Local(w, sinks) for w in sorted(windows)]
    if hybrid:
        rules.append(Hybrid(max(windows), sinks, hybrid))
    total = len(pairs) * len(rules) + len(pairs)
    done = 0
    effect = {}
    for p in pairs:
        for r in rules:
            effect[(p, r)] = 1.0 - quality({p: r})
            done += 1
            if progress:
                progress(done, total)
    slack = (1.0 - min_cosine) / 100
    best = {}
    for p in pairs:
        lowest = min(effect[(p, r)] for r in rules)
        best[p] = next(r for r in rules if effect[(p, r)] <= lowest + slack)  # rules are in cost order
    queue = sorted(pairs, key=lambda p: effect[(p, best[p])])
    if max_heads is not None:
        queue = queue[:max_heads]
    plan: dict = {}
    for i in range(0, len(queue), chunk):
        group = queue[i:i + chunk]
        trial = {**plan, **{p: best[p] for p in group}}
        if quality(trial) >= min_cosine:
            plan = trial
        elif len(group) > 1:
            for p in group:
                one = {**plan, p: best[p]}
                if quality(one) >= min_cosine:
                    plan = one
        done += len(group)
        if progress:
            progress(done, total)
    return plan
