"""Speed of a converted all-MiniLM-L6-v2 against the original on the CPU (not a GPU script).

Two figures, each the median of interleaved repeats in one process (original, converted, original, ...):

- layer: the attention core of one MiniLM layer at ``--tokens`` tokens (the attention-interface call:
  SDPA for the original, glocal's adapter for the converted layer), for 8 of 12 heads converted with a
  mix of Local(17/33/65) with sinks (0, -1) and one Hybrid(65), and for all 12 converted;
- model: the whole model's forward at ``--tokens`` tokens with two realistic plans: the plan
  ``plan_from_report(report)`` gives on the built-in calibration text (no model), and the measured plan
  ``plan_from_report(report, model, calibration)`` (about a minute to plan; its summary is printed).

Run: ``.venv/bin/python benchmarks/convert_speed.py --threads 2 --tokens 512``

The first model figure at 128, 256 and 512 tokens, with each variant's peak memory and the output error, is also
a row of ``glocal bench --family models`` (glocal.bench.models).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import glocal
from glocal.analysis import capture, samples
from glocal.analysis.command import load
from glocal.convert import Hybrid, Local, plan_from_report
from glocal.integrations import transformers as hf


def interleaved(fns: dict, repeats: int, inner: int = 1) -> dict:
    """Median ms of each function, the functions alternating within every repeat."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - start) * 1e3 / inner)
    return {name: statistics.median(t) for name, t in times.items()}


def long_input(tokenizer, tokens: int):
    text = " ".join(samples.CALIBRATION + samples.EVALUATION)
    return tokenizer(text, truncation=True, max_length=tokens, return_tensors="pt")


LAYER_MIX = {0: Local(17, (0, -1)), 1: Local(17, (0, -1)), 2: Local(33, (0, -1)), 3: Local(33, (0, -1)),
             4: Local(65, (0, -1)), 5: Local(65, (0, -1)), 6: Local(65, (0, -1)), 7: Hybrid(65, (0, -1), 16)}
LAYER_ALL = {**LAYER_MIX, 8: Local(17, (0, -1)), 9: Local(33, (0, -1)), 10: Local(65, (0, -1)),
             11: Hybrid(65, (0, -1), 16)}


def layer_figures(model, inputs, repeats: int) -> dict:
    """Attention-interface call of layer 1: the original SDPA function against glocal's with a plan."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    attn = model.encoder.layer[1].attention.self
    seen = {}
    hook = attn.register_forward_hook(lambda m, a, kw, out: seen.update(x=a[0] if a else kw["hidden_states"]),
                                      with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    x = seen["x"]
    b, t, _ = x.shape
    split = lambda y: y.view(b, t, 12, 32).transpose(1, 2)  # noqa: E731  as BERT shapes them
    with torch.no_grad():
        q, k, v = split(attn.query(x)), split(attn.key(x)), split(attn.value(x))
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    results = {}
    for name, rules in (("8 of 12 heads", LAYER_MIX), ("12 of 12 heads", LAYER_ALL)):
        glocal.convert(model, {(1, h): r for h, r in rules.items()})
        fn = ALL_ATTENTION_FUNCTIONS[hf.PREFIX + "sdpa"]
        with torch.no_grad():
            ms = interleaved({"original": lambda: sdpa(attn, q, k, v, None, scaling=attn.scaling),
                              "converted": lambda: fn(attn, q, k, v, None, scaling=attn.scaling)},
                             repeats, inner=5)
        glocal.convert.restore(model)
        results[name] = ms
    return results


def model_figures(model, inputs, plans: dict, repeats: int) -> dict:
    results = {}
    for name, plan in plans.items():
        base, conv = [], []
        with torch.no_grad():
            model(**inputs)
            for _ in range(repeats):
                start = time.perf_counter()
                model(**inputs)
                base.append((time.perf_counter() - start) * 1e3)
                glocal.convert(model, plan)
                model(**inputs) if not conv else None  # warm-up of the converted model's first run
                start = time.perf_counter()
                model(**inputs)
                conv.append((time.perf_counter() - start) * 1e3)
                glocal.convert.restore(model)
        results[name] = {"original": statistics.median(base), "converted": statistics.median(conv),
                         "heads": len(plan)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--skip-model", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer, model = load(None)
    inputs = long_input(tokenizer, args.tokens)
    cal = tokenizer(samples.CALIBRATION, padding=True, truncation=True, max_length=256, return_tensors="pt")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"{inputs['input_ids'].shape[1]} tokens, batch 1, float32")
    for name, ms in layer_figures(model, inputs, args.repeats).items():
        print(f"layer attention, {name}: original {ms['original']:.3f} ms, converted {ms['converted']:.3f} ms "
              f"(x{ms['original'] / ms['converted']:.2f})")
    if args.skip_model:
        return
    with capture(model) as rec, torch.no_grad():
        model(**cal)
    report = rec.report(window=65)
    measured = plan_from_report(report, model, cal, progress=False)
    print(f"measured plan: {measured.summary()}")
    plans = {"plan_from_report(report)": plan_from_report(report), "measured plan": measured}
    for name, r in model_figures(model, inputs, plans, args.repeats).items():
        print(f"model, {name} ({r['heads']} of 72 heads): original {r['original']:.1f} ms, converted "
              f"{r['converted']:.1f} ms (x{r['original'] / r['converted']:.2f})")


if __name__ == "__main__":
    main()
