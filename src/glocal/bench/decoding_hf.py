"""StreamingCache rows of ``glocal bench --family decoding``: a long greedy stream through a tiny Hugging Face Llama.

``run_streaming`` builds a randomly initialised Llama from a config (no download: 2 layers, hidden 256, 4 heads
of 64, vocabulary 1024, float32, SDPA attention, ``torch.manual_seed(0)``), feeds it an 8-token prompt and then
generates ``tokens`` tokens greedily, one forward per token, with a
``StreamingCache(model, window, sinks)`` (StreamingLLM: the first ``sinks`` tokens and the last ``window`` ones;
docs/streaming_cache.md). It measures, at a few checkpoints along the stream:

- the wall time of one decoding step (``time.perf_counter`` around ``model(...)``), as the median of the 64
  steps around the checkpoint: with a bounded cache it should not grow with the stream;
- ``cache.nbytes()`` and the process's peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``): both should stay flat
  once the window has filled (the cache's buffers are allocated at the first update and only written in place).

and checks correctness two ways:

- ``reference_error``: at each step of ``checks``, every attention layer's output against an independent dense
  reference. Forward hooks capture the layer's q/k/v projections (before RoPE) and its ``self_attn`` output; the
  bench keeps the pre-RoPE keys and values of the tokens the cache keeps (the sinks and the last ``window``, in
  buffers of its own written in place, so the checker's memory is bounded too). At a checked step it places the
  kept tokens at slots ``0..n-1`` (sinks, then the window oldest to newest, the query at ``n - 1``:
  StreamingLLM's re-indexing), rotates q and the keys by their slots with its own float64 rotate-half RoPE (the
  config's ``rope_theta``), runs dense softmax attention and the layer's ``o_proj``, and reports
  ``max |ref - out| / max |ref|``, the largest over layers and checked steps.
- ``plain_cache_error``: while nothing has been evicted (the stream fits in ``sinks + window + 1`` tokens) the
  streaming cache must be exactly the default one: a second loop feeds the same tokens through a ``DynamicCache``
  and the largest absolute logit difference over those steps (and the prompt's) is reported.

Steps count from 0: step ``s`` feeds the ``s + 1``-th generated token, at stream position ``8 + s``; checkpoint
``c`` is the state after ``c`` steps. The timed step includes the four hooks per layer (each only stores a
reference to a tensor: microseconds); the checker's own bookkeeping and the references run outside the timing.
The float32 model rotates q and k by absolute positions (the cache rotates only the sinks forward), so far along
the stream its RoPE angles carry float32 rounding of the position (about ``position * 6e-8`` rad), which the
float64 slot reference does not: ``reference_error`` grows slowly with the stream for that reason alone.

Shapes (the returned dict):
    config: str                                  the model, dtype and attention implementation, in words
    tokens, window, sinks: int                   the arguments
    prompt: int                                  prompt length (8)
    per_token_ms: {checkpoint: float}            median ms of one step, the 64 steps around the checkpoint
    cache_bytes: {checkpoint: int}               cache.nbytes() after the checkpoint's step
    peak_rss_mib: {checkpoint: float}            process peak RSS (MiB) after the checkpoint's step
    reference_error: float                       max relative error of the layers' outputs at the checked steps
    plain_cache_error: float                     max abs logit difference to DynamicCache before any eviction
    plain_steps: int                             steps compared with DynamicCache (after the prompt)
    checked_steps: tuple[int, ...]               the steps of ``checks`` inside the stream
    threads: int                                 torch intra-op threads during the run
    wall_s: float                                wall time of the whole run

Example:
    >>> from glocal.bench.decoding_hf import format_streaming, run_streaming
    >>> result = run_streaming(tokens=120, window=16, sinks=2, checks=(8, 40, 119))  # doctest: +SKIP
    >>> result["reference_error"] < 1e-4  # doctest: +SKIP
    True
    >>> print(format_streaming(result))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import resource
import statistics
import sys
import time
import warnings

import torch

from ..integrations import require
from ..integrations import transformers as hf_integration

MIB = 2 ** 20
PROMPT = 8
TIMING_SPAN = 64  # steps in each checkpoint's median


def _peak_rss_mib() -> float:
    """The process's peak resident set size in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def _rope64(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """x [H, n, D] (float64) rotated by positions [n], Llama's rotate-half layout (channel i pairs with i + D/2).

    Our own float64 frequencies ``theta ** (-2i / D)``, not the model's rotary module: the check is independent.
    """
    dim = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angle = positions.to(torch.float64)[:, None] * inv_freq  # [n, D/2]
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x[..., :dim // 2], x[..., dim // 2:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class _Reference:
    """Hooks on every attention layer and the pre-RoPE keys/values of the tokens a StreamingCache keeps.

    Per layer, keys and values [sinks + window, H_kv, D] (float32, preallocated): token ``p`` of the stream in row
    ``p`` if ``p < sinks``, else in row ``sinks + (p - sinks) % window`` (the last ``window`` tokens overwrite one
    another in turn), before RoPE: the cache's own bound, whatever the stream length. Preallocated and written in
    place, not a deque of per-step tensors: those stay alive among the step's transient allocations and fragment
    the heap, and the process RSS then creeps up by tens of MiB over a long stream, which would hide the flat
    memory this bench is there to show. The hooks only stash the latest projections (they run inside the timed
    step); ``commit`` files them after the step, ``error`` checks the step before that.
    """

    def __init__(self, model, window: int, sinks: int):
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        parameters = getattr(config, "rope_parameters", None) or {}
        self.theta = float(parameters.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
        self.window, self.sinks = window, sinks
        self.layers = [layer.self_attn for layer in model.model.layers]
        self.stash = [{} for _ in self.layers]
        shape = (sinks + window, self.kv_heads, self.head_dim)
        self.kept = [(torch.zeros(shape), torch.zeros(shape)) for _ in self.layers]
        self.seen = 0
        self.handles = []
        for stash, attn in zip(self.stash, self.layers):
            for name in ("q_proj", "k_proj", "v_proj"):
                self.handles.append(getattr(attn, name).register_forward_hook(self._keep(stash, name)))
            self.handles.append(attn.register_forward_hook(self._keep(stash, "out")))

    @staticmethod
    def _keep(stash: dict, name: str):
        def hook(module, args, output):
            stash[name] = output[0] if isinstance(output, tuple) else output  # self_attn returns (out, weights)
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def _row(self, p: int) -> int:
        return p if p < self.sinks else self.sinks + (p - self.sinks) % self.window

    def _order(self) -> list[int]:
        """Rows of the kept tokens in cache order: the sinks, then the last ``window`` tokens oldest to newest."""
        sinks = range(min(self.seen, self.sinks))
        recent = range(max(self.sinks, self.seen - self.window), self.seen)
        return [self._row(p) for p in (*sinks, *recent)]

    def commit(self) -> None:
        """File the stashed chunk's pre-RoPE keys and values: its tokens are the stream's next ones."""
        for stash, (keys, values) in zip(self.stash, self.kept):
            new_k = stash["k_proj"][0].view(-1, self.kv_heads, self.head_dim)
            new_v = stash["v_proj"][0].view(-1, self.kv_heads, self.head_dim)
            for t in range(new_k.shape[0]):
                row = self._row(self.seen + t)
                keys[row].copy_(new_k[t])
                values[row].copy_(new_v[t])
        self.seen += new_k.shape[0]

    def error(self) -> float:
        """Max relative error over layers of the stashed one-token step's attention output, before ``commit``."""
        worst, order = 0.0, torch.tensor(self._order(), dtype=torch.long)
        for stash, attn, (kept_k, kept_v) in zip(self.stash, self.layers, self.kept):
            q = stash["q_proj"][0, -1].double().view(self.heads, 1, self.head_dim)
            k_new = stash["k_proj"][0, -1:].double().view(1, self.kv_heads, self.head_dim)
            v_new = stash["v_proj"][0, -1:].double().view(1, self.kv_heads, self.head_dim)
            keys = torch.cat((kept_k[order].double(), k_new)).transpose(0, 1)  # [H_kv, n, D], the query's last
            values = torch.cat((kept_v[order].double(), v_new)).transpose(0, 1)
            n = keys.shape[1]
            # StreamingLLM's re-indexing: slots 0..n-1 in cache order, the query (the newest token) at n - 1.
            slots = torch.arange(n)
            q, keys = _rope64(q, slots[-1:], self.theta), _rope64(keys, slots, self.theta)
            group = self.heads // self.kv_heads  # GQA: query head h reads kv head h // group
            keys, values = keys.repeat_interleave(group, 0), values.repeat_interleave(group, 0)
            scores = (q @ keys.transpose(-1, -2)) / math.sqrt(self.head_dim)  # [H, 1, n]
            mixed = (scores.softmax(-1) @ values).reshape(1, -1)  # [1, H * D]
            bias = attn.o_proj.bias.double() if attn.o_proj.bias is not None else None
            ref = torch.nn.functional.linear(mixed, attn.o_proj.weight.double(), bias)[0]
            got = stash["out"][0, -1].double()
            worst = max(worst, ((ref - got).abs().max() / ref.abs().max().clamp_min(1e-30)).item())
        return worst


def _checkpoints(tokens: int, window: int, sinks: int) -> tuple:
    """(window + sinks, 1000, 2500, tokens) where they fit; for short streams the midpoint stands in for the two."""
    filled = min(window + sinks, tokens)
    middle = [c for c in (1000, 2500) if filled < c < tokens] or ([(filled + tokens) // 2] if filled < tokens else [])
    return tuple(sorted({filled, *middle, tokens}))


def _median_around(times: list, checkpoint: int) -> float:
    """Median ms of the TIMING_SPAN steps centred on step checkpoint - 1, shifted to stay inside the stream."""
    start = max(0, min(checkpoint - 1 - TIMING_SPAN // 2, len(times) - TIMING_SPAN))
    return statistics.median(times[start:start + TIMING_SPAN])


def run_streaming(tokens: int = 5000, window: int = 256, sinks: int = 4, checks: tuple | None = None,
                  checkpoints: tuple | None = None, threads: int | None = 1, progress=None) -> dict:
    """Stream ``tokens`` greedy tokens through a tiny random Llama with a StreamingCache (see the module docstring).

    ``checks``: steps (0-based) at which every layer's attention output is compared with the dense slot reference;
    default ``(window // 2, window + sinks + 50, tokens // 2, tokens - 1)`` (steps outside the stream are dropped).
    ``checkpoints``: counts of generated tokens to report at; default ``(window + sinks, 1000, 2500, tokens)``
    where they fit. ``threads``: torch's intra-op threads for the run (restored after; ``None`` keeps the
    caller's). One by default: a step of this model is ~1 ms of tiny ops, too small to split, and with several
    threads on a busy machine (any other process on the cores) OpenMP's hand-offs stall and a step can take
    100x longer, which would time the machine's load, not the cache. ``progress(done, total)``: called every 64
    steps and at the end. Needs transformers.
    """
    require("transformers", purpose="glocal bench --family decoding (StreamingCache rows)")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        result = _stream(tokens, window, sinks, checks, checkpoints, progress)
    finally:
        torch.set_num_threads(before)
    result["threads"] = torch.get_num_threads() if threads is None else threads
    return result


def _stream(tokens: int, window: int, sinks: int, checks, checkpoints, progress) -> dict:
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    StreamingCache = hf_integration.StreamingCache  # built on first access, now that transformers is there
    if checks is None:
        checks = (window // 2, window + sinks + 50, tokens // 2, tokens - 1)
    checked = tuple(sorted({int(s) for s in checks if 0 <= int(s) < tokens}))
    points = tuple(sorted({int(c) for c in (checkpoints or _checkpoints(tokens, window, sinks)) if 1 <= c <= tokens}))
    check_at, report_at = set(checked), set(points)
    started = time.perf_counter()

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' notes about random configs; the result says what ran
        config = LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4, attn_implementation="sdpa",
                             max_position_embeddings=PROMPT + tokens + 64)
        model = LlamaForCausalLM(config).to(torch.float32).eval()
    prompt = torch.randint(0, config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(1))

    # Nothing is evicted while every attended past fits: the step at stream position p attends min(p, n_kept).
    plain_steps = max(0, min(tokens, window + sinks - PROMPT + 1))
    fed, stream_logits = [], []
    times = [0.0] * tokens
    cache_bytes, peak_rss, worst = {}, {}, 0.0
    cache = StreamingCache(model, window, sinks)
    reference = _Reference(model, window, sinks)
    try:
        with torch.no_grad():
            logits = model(input_ids=prompt, cache=cache, use_cache=True).logits[:, -1]
            reference.commit()
            stream_logits.append(logits[0].clone())
            for step in range(tokens):
                token = logits.argmax(-1, keepdim=True)  # [1, 1]
                begin = time.perf_counter()
                logits = model(input_ids=token, cache=cache, use_cache=True).logits[:, -1]
                times[step] = (time.perf_counter() - begin) * 1e3
                # Outside the timing: the reference's check (before the token joins the kept ones) and filing.
                if step in check_at:
                    worst = max(worst, reference.error())
                reference.commit()
                if step < plain_steps:
                    fed.append(token)
                    stream_logits.append(logits[0].clone())
                if step + 1 in report_at:
                    cache_bytes[step + 1], peak_rss[step + 1] = cache.nbytes(), _peak_rss_mib()
                if progress and ((step + 1) % 64 == 0 or step + 1 == tokens):
                    progress(step + 1, tokens)
    finally:
        reference.remove()

    # The same tokens through the default cache: before any eviction the two caches attend the same keys.
    plain = DynamicCache(config=config)
    plain_error = 0.0
    with torch.no_grad():
        for i, ids in enumerate([prompt, *fed]):
            out = model(input_ids=ids, cache=plain, use_cache=True).logits[0, -1]
            plain_error = max(plain_error, (out - stream_logits[i]).abs().max().item())

    described = (f"LlamaForCausalLM (random init) {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
                 f"{config.num_attention_heads} heads ({config.num_key_value_heads} kv) of {reference.head_dim}, "
                 f"vocab {config.vocab_size}, float32, sdpa, prompt {PROMPT}, {torch.get_num_threads()} thread(s)")
    return {
        "config": described, "tokens": tokens, "window": window, "sinks": sinks, "prompt": PROMPT,
        "per_token_ms": {c: _median_around(times, c) for c in points},
        "cache_bytes": cache_bytes, "peak_rss_mib": peak_rss,
        "reference_error": worst, "plain_cache_error": plain_error, "plain_steps": plain_steps,
        "checked_steps": checked, "wall_s": time.perf_counter() - started,
    }


def format_streaming(result: dict) -> str:
    """A plain-text table of ``run_streaming``'s result: one line per checkpoint, then the two errors."""
    title = f"StreamingCache window={result['window']} sinks={result['sinks']}, {result['tokens']} tokens"
    lines = [f"{title}: {result['config']}",
             f"{'token':>8} {'ms/token':>9} {'cache MiB':>10} {'peak RSS MiB':>13}"]
    for c, ms in result["per_token_ms"].items():
        lines.append(f"{c:>8} {ms:>9.3f} {result['cache_bytes'][c] / MIB:>10.3f} {result['peak_rss_mib'][c]:>13.1f}")
    lines.append(f"reference error (max rel, steps {', '.join(map(str, result['checked_steps']))}): "
                 f"{result['reference_error']:.2e}; plain DynamicCache error (max abs logit, "
                 f"{result.get('plain_steps', '?')} steps before eviction): {result['plain_cache_error']:.2e}")
    return "\n".join(lines)
