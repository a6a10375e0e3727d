"""Planning a conversion: which heads become which rule, from a capture report and optionally measured.

Example:
    >>> import torch
    >>> from glocal.convert import mean_cosine
    >>> round(mean_cosine(torch.ones(2, 3), torch.ones(2, 3)), 6)
    1.0
"""

from __future__ import annotations

import torch

from .apply import convert, restore
from .rules import Hybrid, Local


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
            restore(model)

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
