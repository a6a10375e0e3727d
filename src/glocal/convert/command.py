"""``glocal convert``: convert a model's local heads to local attention, then measure quality and speed.

Steps: capture attention on calibration text → ``plan_from_report`` (measured greedy by default) →
``glocal.convert`` → on evaluation text, the mean cosine of mean-pooled embeddings to the original model's
(and, for causal language models, next-token agreement) → forward time of original vs converted at the
longest input the model takes (its ``max_position_embeddings``).

Example:
    glocal convert                                 # all-MiniLM-L6-v2, built-in calibration/evaluation text
    glocal convert --model DIR --min-cosine 0.995 --json result.json
"""

from __future__ import annotations

import json
import statistics
import time

from .. import backends
from ..analysis import capture, samples
from ..analysis.command import default_model_path, load, paragraphs
from ..bench.timing import median_ms
from .apply import convert, restore
from .plan import mean_cosine, mean_pooled, plan_from_report
from .rules import Hybrid

HELP = "convert full-attention heads of a transformers model to local attention; report quality and speed"


def add_arguments(parser) -> None:
    parser.add_argument("--model", default=None, help="Hugging Face model directory (default: all-MiniLM-L6-v2)")
    parser.add_argument("--calibration", default=None, help="calibration text file (default: built-in)")
    parser.add_argument("--evaluation", default=None, help="evaluation text file (default: built-in, other text)")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per paragraph (default: %(default)s)")
    parser.add_argument("--windows", default="17,33,65", help="candidate windows in tokens (default: %(default)s)")
    parser.add_argument("--sinks", default="0,-1", help="sink positions (default: %(default)s: first, last token)")
    parser.add_argument("--hybrid", type=int, default=16,
                        help="block length of the pooled global branch of Hybrid candidates; 0 = none "
                             "(default: %(default)s)")
    parser.add_argument("--min-cosine", type=float, default=0.99,
                        help="quality floor on the calibration text (default: %(default)s)")
    parser.add_argument("--max-heads", type=int, default=None, help="convert at most this many heads")
    parser.add_argument("--plan", choices=("measured", "report"), default="measured",
                        help="measured: greedy by measured effect per head; report: by locality only")
    parser.add_argument("--speed-repeats", type=int, default=5, help="timed repeats per model (default: %(default)s)")
    parser.add_argument("--json", default=None, help="write the plan and the results to this JSON file")


def _is_causal_lm(path) -> bool:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    return any(a.endswith("ForCausalLM") for a in (config.architectures or [])) or bool(config.is_decoder)


def plan_to_json(plan: dict) -> list:
    return [{"layer": l, "head": h, "kind": type(r).__name__, "window": r.window, "sinks": list(r.sinks),
             **({"global_branch": r.global_branch} if isinstance(r, Hybrid) else {})}
            for (l, h), r in sorted(plan.items())]


def main(args) -> int:
    import torch
    from tqdm import tqdm

    start = time.perf_counter()
    path = str(args.model or default_model_path())
    causal_lm = _is_causal_lm(path)
    tokenizer, model = load(path, causal_lm=causal_lm)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encode = lambda texts: tokenizer(texts, padding=True, truncation=True, max_length=args.max_length,  # noqa: E731
                                     return_tensors="pt")
    cal = encode(paragraphs(args.calibration, samples.CALIBRATION))
    ev = encode(paragraphs(args.evaluation, samples.EVALUATION))
    windows = tuple(int(w) for w in args.windows.split(","))
    sinks = tuple(int(s) for s in args.sinks.split(",")) if args.sinks else ()
    with capture(model) as rec, torch.no_grad():
        model(**cal)
    report = rec.report(window=max(windows))
    bar = tqdm(total=1, desc="planning", unit="trial")

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    measured = args.plan == "measured"
    plan = plan_from_report(report, model if measured else None, cal if measured else None, windows=windows,
                            sinks=sinks, min_cosine=args.min_cosine, max_heads=args.max_heads,
                            hybrid=args.hybrid or None, progress=progress)
    bar.close()
    total_heads = len(report.heads())

    with torch.no_grad():
        ref_emb = mean_pooled(model, ev)
        ref_logits = model(**ev).logits if causal_lm else None
        convert(model, plan)
        new_emb = mean_pooled(model, ev)
        new_logits = model(**ev).logits if causal_lm else None
        restore(model)
    cosine = mean_cosine(new_emb, ref_emb)
    agreement = None
    if causal_lm:
        real = ev["attention_mask"].bool()
        same = (ref_logits.argmax(-1) == new_logits.argmax(-1)) & real
        agreement = float(same.sum() / real.sum())

    longest = int(getattr(model.config, "max_position_embeddings", args.max_length))
    longest = min(longest, 4096)
    text = " ".join(samples.CALIBRATION + samples.EVALUATION)
    while len(tokenizer(text, truncation=True, max_length=longest)["input_ids"]) < longest:
        text = text + " " + text
    long_inputs = tokenizer(text, truncation=True, max_length=longest, return_tensors="pt")
    # Original and converted runs alternate, so load changes on a shared machine hit both alike.
    base, conv = [], []
    with torch.no_grad():
        for _ in range(args.speed_repeats):
            base.append(median_ms(lambda: model(**long_inputs), repeats=1, warmup=1))
            convert(model, plan)
            conv.append(median_ms(lambda: model(**long_inputs), repeats=1, warmup=1))
            restore(model)
    base_ms, conv_ms = statistics.median(base), statistics.median(conv)
    kinds = {}
    for rule in plan.values():
        kinds[type(rule).__name__ + f"({rule.window})"] = kinds.get(type(rule).__name__ + f"({rule.window})", 0) + 1
    print(f"plan: {len(plan)} of {total_heads} heads converted ({args.plan}): "
          + ", ".join(f"{n} x {k}" for k, n in sorted(kinds.items())))
    print(f"quality on {ev['input_ids'].shape[0]} evaluation paragraphs of up to {ev['input_ids'].shape[1]} tokens: "
          f"mean cosine of mean-pooled embeddings to the original = {cosine:.4f}")
    if agreement is not None:
        print(f"next-token agreement with the original = {agreement:.4f}")
    print(f"speed at {long_inputs['input_ids'].shape[1]} tokens (CPU, {torch.get_num_threads()} threads, glocal "
          f"backends {backends.available()}): original {base_ms:.1f} ms, converted {conv_ms:.1f} ms "
          f"(x{base_ms / conv_ms:.2f})")
    print(f"done in {time.perf_counter() - start:.1f} s")
    if args.json:
        result = {"model": path, "heads": total_heads, "converted": len(plan), "plan": plan_to_json(plan),
                  "mean_cosine": cosine, "next_token_agreement": agreement,
                  "speed_tokens": int(long_inputs["input_ids"].shape[1]), "original_ms": base_ms,
                  "converted_ms": conv_ms}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0
