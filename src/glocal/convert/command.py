"""``glocal convert``: convert a model's local heads to local attention, then measure quality and speed.

Steps: capture attention on calibration text → ``plan_from_report`` (measured greedy by default) →
``glocal.convert`` → on evaluation text, the mean cosine of mean-pooled embeddings to the original model's
(and, for causal language models, next-token agreement) → forward time of original vs converted at the
longest input the model takes (its ``max_position_embeddings``).

``glocal convert --accelerate [MODEL_DIR]`` plans nothing: it runs the layers whose window the model's
configuration already sets with glocal's ops (``glocal.accelerate``, exact), prints the report, the largest
relative error of the outputs on a short padded batch, and original vs accelerated forward time at ``--tokens``.

Example:
    glocal convert                                 # all-MiniLM-L6-v2, built-in calibration/evaluation text
    glocal convert --model DIR --min-cosine 0.995 --json result.json
    glocal convert --accelerate DIR --tokens 8192 --json accelerate.json
"""

from __future__ import annotations

import json
import statistics
import time
import warnings

from .. import backends
from ..analysis import capture, samples
from ..analysis.command import default_model_path, load, paragraphs
from ..bench.timing import median_ms
from .accelerate import accelerate
from .apply import convert, restore
from .plan import mean_cosine, mean_pooled, plan_from_report
from .rules import Hybrid

HELP = "convert full-attention heads of a transformers model to local attention; report quality and speed"


def add_arguments(parser) -> None:
    parser.add_argument("--model", default=None, help="Hugging Face model directory (default: all-MiniLM-L6-v2)")
    parser.add_argument("--calibration", default=None, help="calibration text file (default: built-in)")
    parser.add_argument("--evaluation", default=None, help="evaluation text file (default: built-in, other text)")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per paragraph (default: %(default)s)")
    parser.add_argument("--windows", default="17,65", help="candidate windows in tokens (default: %(default)s)")
    parser.add_argument("--sinks", default="0,-1", help="sink positions (default: %(default)s: first, last token)")
    parser.add_argument("--hybrid", type=int, default=16,
                        help="block length of the pooled global branch of Hybrid candidates; 0 = none "
                             "(default: %(default)s)")
    parser.add_argument("--min-cosine", type=float, default=0.98,
                        help="quality floor: a measured plan must keep min-cosine + margin on held-out calibration "
                             "paragraphs (default: %(default)s)")
    parser.add_argument("--margin", type=float, default=0.005, help="margin above --min-cosine (default: %(default)s)")
    parser.add_argument("--max-heads", type=int, default=None, help="convert at most this many heads")
    parser.add_argument("--plan", choices=("measured", "report"), default="measured",
                        help="measured: greedy by measured effect per head; report: by locality only")
    parser.add_argument("--speed-repeats", type=int, default=5, help="timed repeats per model (default: %(default)s)")
    parser.add_argument("--json", default=None, help="write the plan and the results to this JSON file")
    parser.add_argument("--accelerate", nargs="?", const="", default=None, metavar="MODEL_DIR",
                        help="instead of converting: run the layers whose window the configuration sets with glocal "
                             "(exact; glocal.accelerate), check and time it (MODEL_DIR, else --model)")
    parser.add_argument("--tokens", type=int, default=None,
                        help="--accelerate: tokens of the timed forward (default: min(max_position_embeddings, 4096))")
    parser.add_argument("--device", default="cpu", help="--accelerate: device to run on (default: %(default)s)")


def _is_causal_lm(path) -> bool:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    return causal or bool(getattr(config, "is_decoder", False))  # some configs (ModernBERT) have no is_decoder


def plan_to_json(plan: dict) -> list:
    return [{"layer": l, "head": h, "kind": type(r).__name__, "window": r.window, "sinks": list(r.sinks),
             **({"global_branch": r.global_branch} if isinstance(r, Hybrid) else {})}
            for (l, h), r in sorted(plan.items())]


def _machine(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        name = ""
    return f"{name or platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _relative_error(out, ref) -> float:
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max())


def accelerate_main(args) -> int:
    """``glocal convert --accelerate``: glocal.accelerate, its exactness, and its speed (random token ids)."""
    import torch

    path = str(args.accelerate or args.model or default_model_path())
    causal_lm = _is_causal_lm(path)
    _, model = load(path, causal_lm=causal_lm, tokenizer=False)
    device = torch.device(args.device)
    model.to(device)
    config = model.config
    with warnings.catch_warnings():  # the report printed below says the same
        warnings.simplefilter("ignore", UserWarning)
        report = accelerate(model)
    print(report)
    result = {"model": path, "accelerated": report.accelerated, "left": {str(k): v for k, v in report.left.items()}}
    if report.accelerated:
        restore(model)
        tokens = args.tokens or min(int(getattr(config, "max_position_embeddings", 4096)), 4096)
        gen = torch.Generator().manual_seed(0)
        vocab = int(config.vocab_size)
        extra = {"use_cache": False} if causal_lm else {}
        forward = lambda inputs: model(**inputs, **extra)[0]  # noqa: E731  (last hidden state; logits)

        # Exactness on two sequences, the second padded (on the left for a decoder, on the right otherwise).
        n = min(tokens, 256)
        ids = torch.randint(3, vocab, (2, n), generator=gen)
        mask = torch.ones(2, n, dtype=torch.long)
        pad = slice(0, n // 4) if causal_lm else slice(n - n // 4, n)
        mask[1, pad] = 0
        ids[1, pad] = getattr(config, "pad_token_id", None) or 0
        short = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        long = {"input_ids": torch.randint(3, vocab, (1, tokens), generator=gen).to(device),
                "attention_mask": torch.ones(1, tokens, dtype=torch.long, device=device)}
        with torch.no_grad():
            reference = forward(short)
            check = accelerate(model)
            check_error = _relative_error(forward(short), reference)
            restore(model)
            # Original and accelerated runs alternate, so load changes on a shared machine hit both alike.
            base, fast, outs = [], [], {}
            for _ in range(args.speed_repeats):
                base.append(median_ms(lambda: outs.__setitem__("original", forward(long)), repeats=1, warmup=1))
                timed = accelerate(model)
                fast.append(median_ms(lambda: outs.__setitem__("accelerated", forward(long)), repeats=1, warmup=1))
                restore(model)
        long_error = _relative_error(outs["accelerated"], outs["original"])
        base_ms, fast_ms = statistics.median(base), statistics.median(fast)
        machine = _machine(device)
        print(f"exactness on 2 sequences of {n} tokens (one padded): max relative error {check_error:.1e}; "
              f"calls {check.calls()}")
        print(f"speed at {tokens} tokens ({machine}; glocal backends {backends.available()}): original "
              f"({report.implementation}) {base_ms:.1f} ms, accelerated {fast_ms:.1f} ms (x{base_ms / fast_ms:.2f}); "
              f"max relative error {long_error:.1e}; calls {timed.calls()} (warm-up and timed run)")
        result.update({"check_tokens": n, "check_relative_error": check_error, "check_calls": check.calls(),
                       "tokens": tokens, "relative_error": long_error, "original_ms": base_ms,
                       "accelerated_ms": fast_ms, "speedup": base_ms / fast_ms, "machine": machine,
                       "calls": timed.calls()})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    return 0


def main(args) -> int:
    import torch

    if args.accelerate is not None:
        return accelerate_main(args)
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
    measured = args.plan == "measured"
    plan = plan_from_report(report, model if measured else None, cal if measured else None, windows=windows,
                            sinks=sinks, min_cosine=args.min_cosine, margin=args.margin, max_heads=args.max_heads,
                            hybrid=args.hybrid or None)
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
    print(f"plan of {total_heads} heads: {plan.summary()}")
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
                  "held_out_mean_cosine": plan.validation_cosine, "planning_s": plan.seconds,
                  "mean_cosine": cosine, "next_token_agreement": agreement,
                  "speed_tokens": int(long_inputs["input_ids"].shape[1]), "original_ms": base_ms,
                  "converted_ms": conv_ms}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0
