"""Planning a conversion: which heads become which rule, from a capture report and optionally measured.

Example:
    >>> import torch
    >>> from glocal.convert import mean_cosine
    >>> round(mean_cosine(torch.ones(2, 3), torch.ones(2, 3)), 6)
    1.0
"""

from __future__ import annotations

import time

import torch

from .. import checks
from .apply import convert, restore
from .rules import Hybrid, Local

# The model-free plan's default threshold on ``locality_with_sinks``. Chosen on all-MiniLM-L6-v2 with the
# built-in calibration text only: a report on one half of its paragraphs, the plan judged on the other half,
# both ways; the lowest threshold (in steps of 0.05) whose plan kept mean cosine >= 0.985 on both halves
# (0.6: 33 of 72 heads, 0.9886 and 0.9891; 0.55 fell to 0.982). Confirmed, untuned, on samples.UNSEEN.
MODEL_FREE_LOCALITY = 0.6


class Plan(dict):
    """A conversion plan, {(layer, head): Local | Hybrid}, with how it was made and what it measured.

    Attributes: ``method`` ("report" or "measured"); for measured plans ``fit_cosine`` (mean cosine on the
    inputs it was fitted on), ``validation_cosine`` and ``validation_min`` (mean and minimum on the held-out
    inputs, the figure it was accepted against), ``trials`` (model forwards spent) and ``seconds``.

    Example:
        >>> from glocal.convert import Local
        >>> plan = Plan({(0, 1): Local(65)}, method="report")
        >>> plan.summary()
        '1 head converted (report): 1 x Local(65)'
    """

    def __init__(self, rules=(), method: str = "report", fit_cosine=None, validation_cosine=None,
                 validation_min=None, trials: int = 0, seconds: float = 0.0):
        super().__init__(rules)
        self.method = method
        self.fit_cosine = fit_cosine
        self.validation_cosine = validation_cosine
        self.validation_min = validation_min
        self.trials = trials
        self.seconds = seconds

    def summary(self) -> str:
        kinds: dict = {}
        for rule in self.values():
            name = f"{type(rule).__name__}({rule.window})"
            kinds[name] = kinds.get(name, 0) + 1
        text = (f"{len(self)} head{'s' if len(self) != 1 else ''} converted ({self.method}): "
                + ", ".join(f"{n} x {k}" for k, n in sorted(kinds.items())))
        if self.validation_cosine is not None:
            text += (f"; mean cosine {self.fit_cosine:.4f} on the fitted inputs, {self.validation_cosine:.4f} "
                     f"(min {self.validation_min:.4f}) held out; {self.trials} trials in {self.seconds:.1f} s")
        return text


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


def _rows(inputs, rows) -> dict:
    """The given batch rows of a model's keyword inputs (tensors with the batch first; anything else as is)."""
    index = torch.tensor(rows)
    return {k: v.index_select(0, index.to(v.device)) if isinstance(v, torch.Tensor) and v.dim() else v
            for k, v in inputs.items()}


def _batch(inputs) -> int:
    return next(v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor) and v.dim())


def held_out_split(inputs) -> tuple[dict, dict]:
    """(fit, validation) rows of ``inputs``: every fourth row (3, 7, ...) held out; the last row for 2-3 rows.

    Example:
        >>> import torch
        >>> fit, held = held_out_split({"input_ids": torch.arange(8)[:, None]})
        >>> fit["input_ids"].flatten().tolist(), held["input_ids"].flatten().tolist()
        ([0, 1, 2, 4, 5, 6], [3, 7])
    """
    batch = _batch(inputs)
    checks.plan_split(batch)
    held = list(range(3, batch, 4)) if batch >= 4 else [batch - 1]
    return _rows(inputs, [i for i in range(batch) if i not in held]), _rows(inputs, held)


class _Bar:
    """Progress as a tqdm bar (``progress=True``), a callable ``progress(done, total)``, or nothing."""

    def __init__(self, progress, total: int):
        self.fn, self.bar, self.done, self.total = None, None, 0, total
        if callable(progress):
            self.fn = progress
        elif progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="planning", unit="trial")

    def step(self, n: int = 1, total: int | None = None) -> None:
        self.done += n
        self.total = max(self.total, self.done) if total is None else total
        if self.fn:
            self.fn(self.done, self.total)
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def plan_from_report(report, model=None, inputs=None, validation=None, windows=(17, 65), sinks=(0, -1),
                     min_cosine: float = 0.98, margin: float = 0.005, max_heads: int | None = None,
                     min_locality: float = MODEL_FREE_LOCALITY, hybrid: int | None = 16, embed=None,
                     progress=True, trial_rows: int = 6) -> Plan:
    """Propose a conversion plan from a capture report, optionally measured on calibration inputs.

    Shapes:
        report: Report of the model on calibration text; inputs, validation: the model's keyword inputs (e.g.
        a tokenizer's output, [B, T]); returns a :class:`Plan`, {(layer, head): Local | Hybrid}

    Without ``model``/``inputs`` (no forward runs): every head whose attention mass inside the report's window
    plus the first and last tokens (``locality_with_sinks``) is at least ``min_locality`` gets
    ``Local(report.window, sinks)``, most local first, up to ``max_heads``. What it gives: the default
    threshold (0.6, with the report's window 65 at 256 tokens) kept mean cosine >= 0.98 on text of kinds
    absent from the calibration text for all-MiniLM-L6-v2 (docs/analysis.md, "Measured"). What it does not: a
    head's locality says little about how much the model depends on it, so for another model, window or
    length there is no quality guarantee; use the measured path for one.

    With ``model`` and ``inputs`` (measured; quality is the mean cosine of ``embed(model, x)``, default
    :func:`mean_pooled`, to the original's):

    1. ``validation`` (default: every fourth row of ``inputs``, :func:`held_out_split`) is held out; the rest
       is fitted on.
    2. each head's effect alone is measured on the first ``trial_rows`` fitted rows: ``Local(min(windows))``
       first (taken at once when its effect is below a hundredth of the quality budget
       ``1 - min_cosine - margin``); else the most faithful candidate, ``Hybrid(max(windows), sinks, hybrid)``
       (``Local(max(windows))`` without ``hybrid``); a head whose best effect alone exceeds the budget is not
       converted; otherwise it takes the cheapest rule within a hundredth of the budget of the best.
    3. heads in increasing effect: the longest prefix keeping ``min_cosine + margin`` on the fitted rows is
       found by bisection, then the next heads are tried one by one (up to 8 more).
    4. the plan is accepted only if the held-out mean cosine is at least ``min_cosine + margin``; otherwise the
       last-added heads are dropped (by bisection on the held-out rows) until it is.

    Planning all-MiniLM-L6-v2 on the 26 built-in calibration paragraphs of 256 tokens takes under a minute on
    two cores (docs/analysis.md). ``progress``: True for a progress bar, a callable ``progress(done, total)``,
    or False.

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
        return Plan({p: Local(report.window, sinks) for p in chosen}, method="report")
    checks.plan_quality(min_cosine, margin)
    start = time.perf_counter()
    embed = embed or mean_pooled
    fit, held = (inputs, validation) if validation is not None else held_out_split(inputs)
    trial = _rows(fit, list(range(min(trial_rows, _batch(fit)))))
    target = min_cosine + margin
    budget = 1.0 - target
    slack = budget / 100
    bar = _Bar(progress, 3 * len(pairs) + 16)  # at most 3 trials per head, then ~16 plan checks
    trials = 0
    reference = {}

    def quality(plan, x, name):
        nonlocal trials
        if name not in reference:
            reference[name] = embed(model, x)
        if not plan:
            return 1.0, 1.0
        convert(model, plan)
        try:
            cos = torch.nn.functional.cosine_similarity(embed(model, x).double(), reference[name].double(), dim=-1)
        finally:
            restore(model)
        trials += 1
        bar.step()
        return float(cos.mean()), float(cos.min())

    cheapest = Local(min(windows), sinks)
    faithful = Hybrid(max(windows), sinks, hybrid) if hybrid else Local(max(windows), sinks)
    middle = [Local(w, sinks) for w in sorted(windows)[1:]]
    best, effect = {}, {}
    for p in order:
        effects = {cheapest: 1.0 - quality({p: cheapest}, trial, "trial")[0]}
        if effects[cheapest] > slack and faithful != cheapest:
            effects[faithful] = 1.0 - quality({p: faithful}, trial, "trial")[0]
            if min(effects.values()) <= budget and effects[cheapest] > effects[faithful] + slack:
                for rule in middle:  # cheaper than the faithful rule; stop at the first within slack
                    if rule != faithful:
                        effects[rule] = 1.0 - quality({p: rule}, trial, "trial")[0]
                        if effects[rule] <= effects[faithful] + slack:
                            break
        lowest = min(effects.values())
        if lowest > budget:
            continue
        rank = [cheapest] + middle + [faithful]  # cost order
        best[p] = next(r for r in rank if r in effects and effects[r] <= lowest + slack)
        effect[p] = effects[best[p]]
    queue = sorted(best, key=lambda p: effect[p])
    if max_heads is not None:
        queue = queue[:max_heads]
    bar.step(0, total=trials + 16)

    def prefix(n):
        return {p: best[p] for p in queue[:n]}

    lo, hi = 0, len(queue)  # the longest prefix that keeps the target on the fitted rows (bisection)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if quality(prefix(mid), fit, "fit")[0] >= target:
            lo = mid
        else:
            hi = mid - 1
    plan = prefix(lo)
    added = list(queue[:lo])
    for p in queue[lo + 1:lo + 9]:
        if quality({**plan, p: best[p]}, fit, "fit")[0] >= target:
            plan[p] = best[p]
            added.append(p)
    held_mean, held_min = quality(plan, held, "held")
    if held_mean < target:  # accepted against the held-out rows only: drop the last-added heads until it holds
        lo, hi = 0, len(added) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if quality({p: best[p] for p in added[:mid]}, held, "held")[0] >= target:
                lo = mid
            else:
                hi = mid - 1
        plan = {p: best[p] for p in added[:lo]}
        held_mean, held_min = quality(plan, held, "held")
    fit_mean = quality(plan, fit, "fit")[0]
    bar.close()
    return Plan(plan, method="measured", fit_cosine=fit_mean, validation_cosine=held_mean, validation_min=held_min,
                trials=trials, seconds=time.perf_counter() - start)
