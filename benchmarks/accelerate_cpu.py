"""Speed and exactness of ``glocal.accelerate`` on randomly initialised models, CPU float32 (not a GPU script).

Models (random weights, built offline from transformers' configs):

- ModernBERT: ``ModernBertConfig(num_hidden_layers=6)`` (hidden 768, 12 heads, local_attention 128, a global
  layer every 3rd: layers 1, 2, 4, 5 are local), ``ModernBertModel``, forward at ``--tokens`` tokens;
- Mistral: ``MistralConfig`` with 4 layers, hidden 512, 8 query / 2 kv heads (head dim 64), intermediate 1792,
  vocab 32000, sliding_window 1024, ``MistralForCausalLM``, prefill (one forward, no cache, all logits).

Each figure is the median of interleaved repeats in one process (original, accelerated, original, ...: the
model is accelerated and restored around each accelerated run), after one warm-up of each. The error is
max |accelerated - original| / max |original| over the outputs (last hidden state; logits).

Run: ``.venv/bin/python benchmarks/accelerate_cpu.py --threads 2 --tokens 8192 --repeats 3``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
import warnings

import torch

import glocal

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def modernbert(tokens: int):
    from transformers import ModernBertConfig, ModernBertModel

    config = ModernBertConfig(num_hidden_layers=6, max_position_embeddings=max(8192, tokens))
    model = ModernBertModel(config).eval()
    inputs = {"input_ids": torch.randint(3, config.vocab_size, (1, tokens))}
    return model, inputs, lambda out: out.last_hidden_state


def mistral(tokens: int):
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(num_hidden_layers=4, hidden_size=512, num_attention_heads=8, num_key_value_heads=2,
                           intermediate_size=1792, sliding_window=1024, max_position_embeddings=max(8192, tokens))
    model = MistralForCausalLM(config).eval()
    inputs = {"input_ids": torch.randint(3, config.vocab_size, (1, tokens)), "use_cache": False}
    return model, inputs, lambda out: out.logits


def measure(name: str, build, tokens: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model, inputs, output = build(tokens)
    with torch.no_grad():
        reference = output(model(**inputs))
        report = glocal.accelerate(model)
        accelerated = output(model(**inputs))
        glocal.convert.restore(model)
        error = float((accelerated - reference).abs().max() / reference.abs().max())
        del accelerated, reference
        base, fast = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            model(**inputs)
            base.append(time.perf_counter() - start)
            glocal.accelerate(model)
            start = time.perf_counter()
            model(**inputs)
            fast.append(time.perf_counter() - start)
            glocal.convert.restore(model)
    base_ms, fast_ms = statistics.median(base) * 1e3, statistics.median(fast) * 1e3
    print(f"{name}: {report.summary()}")
    print(f"{name} at {tokens} tokens: original ({report.implementation}) {base_ms:.0f} ms "
          f"[{', '.join(f'{t * 1e3:.0f}' for t in base)}], accelerated {fast_ms:.0f} ms "
          f"[{', '.join(f'{t * 1e3:.0f}' for t in fast)}]: x{base_ms / fast_ms:.2f}; "
          f"max relative error {error:.2e}; calls {report.calls()}")
    return {"model": name, "tokens": tokens, "original_ms": base_ms, "accelerated_ms": fast_ms,
            "speedup": base_ms / fast_ms, "relative_error": error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="modernbert,mistral")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    print(f"{cpu or platform.processor()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"glocal backends {glocal.available_backends()}")
    builders = {"modernbert": modernbert, "mistral": mistral}
    for name in args.models.split(","):
        measure(name, builders[name], args.tokens, args.repeats)


if __name__ == "__main__":
    main()
