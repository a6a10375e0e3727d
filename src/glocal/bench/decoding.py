"""Benchmark family ``decoding``: per-token time and memory of every decoding cache against stream length.

CPU, float32, batch 1, 4 heads of 64, under ``torch.no_grad``. Every cache decodes the same stream of
random q, k, v tokens, one cache after the other (a cache that reads 50 MB per token would otherwise
evict the others' buffers from the CPU caches between their steps). The per-token time at a
checkpoint t is the median of the steps t - 32 .. t + 31; memory is ``nbytes()`` of the cache at t
(tensor memory it holds).

| row | what decodes a token |
|---|---|
| ``window`` | ``SlidingWindowCache(1024, sinks=4, positions="cache", rope_theta=1e4)``: bounded, StreamingLLM's re-indexing |
| ``window absolute`` | the same with ``positions="absolute"`` (no sink turn per token) |
| ``dense`` | ``KVCache``: every key (dense decoding with a full cache) |
| ``linear`` | ``LinearAttentionState`` (elu1): fixed size |
| ``rat`` | ``RATCache(16)``: one state per 16 tokens |
| ``moba`` | ``MoBACache(64, top_k=3)``: every key, routed reads |
| ``recompute`` | the window re-encoded from scratch at each token: causal ``glocal.attention`` over the last 1028 tokens (every query of the window, as a model re-encoding its window must) |
| ``model step`` / ``model recompute`` | ``HybridDecoder(256, 4, depth=2, pattern="L")``, window 1024 + 4 sinks: ``step`` with its caches (``positions="cache"``) vs its forward over the 1028 kept tokens (recomputing the window from scratch) |
| ``hf streaming`` | ``StreamingCache(window=256, sinks=4)`` generating 5,000 tokens on a random tiny Llama (``glocal.bench.decoding_hf``: per-token time, cache bytes and peak RSS at checkpoints, every layer checked against a dense reference at re-indexed positions); absent without transformers |

Targets (issue #14, checked by the table's last lines): window memory and time at 20,000 within 10 %
of those at 1,000; decoding >= 20x faster per token than a sliding window recomputed from scratch at
20,000 (the decoder rows: recomputing means re-encoding the window's tokens through every layer, as
StreamingLLM's baseline does; the ``recompute`` row shows one attention layer of it); RAT memory at
20,000 <= 1/10 of the dense cache's. ``glocal.bench.decoding_hf`` adds the StreamingCache run on a tiny Llama.
``--quick`` shrinks the stream (a smoke test; its ratios mean little).

Shapes:
    run(repeats, quick) -> [row dict]; a row: row, tokens (checkpoint), ms (per token), bytes (held), note

Example:
    >>> from glocal.bench import decoding
    >>> rows = decoding.run(repeats=1, quick=True)  # doctest: +SKIP
    >>> sorted({r["row"] for r in rows})[:3]  # doctest: +SKIP
    ['dense', 'linear', 'moba']
"""

from __future__ import annotations

import statistics
import time

import torch

from ..decoding import (
    KVCache,
    LinearAttentionState,
    MoBACache,
    RATCache,
    SlidingWindowCache,
)
from ..nn import HybridDecoder
from ..ops import attention
from . import decoding_hf
from .timing import fmt, median_ms

MIB = 2 ** 20
FULL = dict(checkpoints=(1000, 5000, 10000, 20000), window=1024, sinks=4, heads=4, dim=64, model_dim=256, span=32)
QUICK = dict(checkpoints=(100, 300, 600), window=64, sinks=4, heads=4, dim=64, model_dim=256, span=8)
POOL = 4096  # distinct random tokens, cycled: drawing random numbers is not part of a step
NOTES = {"window": "SlidingWindowCache({window}, sinks={sinks}, positions='cache')",
         "window absolute": "SlidingWindowCache({window}, sinks={sinks}, positions='absolute')", "dense": "KVCache: every key",
         "linear": "LinearAttentionState (elu1)", "rat": "RATCache(16)", "moba": "MoBACache(64, top_k=3)"}


def _caches(c: dict) -> dict:
    return {"window": SlidingWindowCache(c["window"], sinks=c["sinks"], positions="cache", rope_theta=10000.0),
            "window absolute": SlidingWindowCache(c["window"], sinks=c["sinks"], positions="absolute",
                                                  rope_theta=10000.0),
            "dense": KVCache(), "linear": LinearAttentionState(), "rat": RATCache(16),
            "moba": MoBACache(64, top_k=3)}


def _stream_rows(c: dict, progress=None) -> list[dict]:
    """Every cache over the same stream, one cache after the other (so that none reads another's memory
    traffic into its time); per-token times around each checkpoint, memory at it."""
    torch.manual_seed(0)
    pool = torch.randn(POOL, 3, 1, c["heads"], c["dim"])
    gate = torch.full((1, c["heads"], 1), 0.9)
    rows = []
    for index, (name, cache) in enumerate(_caches(c).items()):
        step = (lambda q, k, v: cache.step(q, k, v, gate, gate)) if name == "rat" else cache.step
        rows += _stream(name, lambda t: step(*pool[t % POOL]), cache, c, NOTES[name].format(**c))
        if progress:
            progress(index + 1, len(NOTES))
    return rows


def _stream(name: str, step, cache, c: dict, note: str) -> list[dict]:
    """``step(t)`` for t = 1 .. the last checkpoint (and a half span past it): per checkpoint, the median time of
    the steps within ``span`` of it and ``cache.nbytes()`` there."""
    span = c["span"]
    times = {point: [] for point in c["checkpoints"]}
    memory = {}
    for t in range(1, max(times) + span):
        start = time.perf_counter()
        step(t)
        elapsed = (time.perf_counter() - start) * 1e3
        for point in times:
            if point - span <= t < point + span:
                times[point].append(elapsed)
        if t in times:
            memory[t] = cache.nbytes()
    return [{"row": name, "tokens": point, "ms": statistics.median(times[point]), "bytes": memory[point],
             "note": note} for point in times]


def _recompute_rows(c: dict, repeats: int) -> list[dict]:
    """The window re-encoded at each token: causal attention of the kept tokens over themselves."""
    kept = c["window"] + c["sinks"]
    rows = []
    for point in c["checkpoints"]:
        n = min(point, kept)
        q, k, v = (torch.randn(1, n, c["heads"], c["dim"]) for _ in range(3))
        ms = median_ms(lambda: attention(q, k, v, is_causal=True), repeats=max(3, repeats))
        rows.append({"row": "recompute", "tokens": point, "ms": ms, "bytes": 2 * k.nbytes,
                     "note": f"causal attention over the last {n} tokens"})
    return rows


def _model_rows(c: dict, repeats: int, progress=None) -> list[dict]:
    """A decoder of sliding-window + sinks layers: its step with its caches (StreamingLLM's re-indexed positions)
    at each checkpoint vs its forward over the kept tokens (recomputing the window from scratch)."""
    torch.manual_seed(1)
    dim, window, sinks = c["model_dim"], c["window"], c["sinks"]
    model = HybridDecoder(dim, c["heads"], depth=2, pattern="L", settings={"L": {"window": window, "sinks": sinks}})
    model.eval()
    cache = model.new_cache(1, positions="cache")
    pool = torch.randn(POOL, 1, dim)
    name = f"HybridDecoder({dim}, {c['heads']} heads, depth 2, 'L' window {window} + {sinks} sinks)"
    rows = _stream("model step", lambda t: model.step(pool[t % POOL], cache), cache, c,
                   f"{name}.step, positions='cache'")
    x = torch.randn(1, window + sinks, dim)
    recompute = median_ms(lambda: model(x), repeats=max(3, repeats))
    return rows + [{"row": "model recompute", "tokens": max(c["checkpoints"]), "ms": recompute, "bytes": x.nbytes,
                    "note": f"its forward over the last {window + sinks} tokens"}]


def _streaming_rows(quick: bool, progress=None) -> list[dict]:
    """The StreamingCache run on a tiny random Llama (glocal.bench.decoding_hf); none without transformers."""
    try:
        result = decoding_hf.run_streaming(**({"tokens": 400, "window": 32} if quick else {}), progress=progress)
    except ModuleNotFoundError:
        return []
    note = f"StreamingCache({result['window']}, sinks={result['sinks']}), tiny random Llama (2 layers, hidden 256)"
    return [{"row": "hf streaming", "tokens": point, "ms": result["per_token_ms"][point],
             "bytes": result["cache_bytes"][point], "peak_rss_mib": result["peak_rss_mib"][point], "note": note,
             "reference_error": result["reference_error"], "plain_cache_error": result["plain_cache_error"]}
            for point in sorted(result["per_token_ms"])]


def run(repeats: int, quick: bool, progress=None) -> list[dict]:
    """Measure the family; one dict per (row, checkpoint). ``progress(done, total)``."""
    c = QUICK if quick else FULL
    with torch.no_grad():
        rows = _stream_rows(c, progress)
        rows += _recompute_rows(c, repeats)
        rows += _model_rows(c, repeats, progress)
        rows += _streaming_rows(quick, progress)
    return rows


def _at(rows, name, tokens):
    return next(r for r in rows if r["row"] == name and r["tokens"] == tokens)


def targets(rows) -> list[str]:
    """The issue's targets, each as a line with the figures it reads and whether they hold."""
    points = sorted({r["tokens"] for r in rows if r["row"] == "window"})
    first, last = points[0], points[-1]
    w1 = _at(rows, "window", last)
    rec, dense, rat = _at(rows, "recompute", last), _at(rows, "dense", last), _at(rows, "rat", last)
    lines = []
    for name in ("window", "window absolute"):
        a, b, full = _at(rows, name, first), _at(rows, name, last), _at(rows, name, points[1])
        time_drift, memory_drift = b["ms"] / a["ms"] - 1, b["bytes"] / a["bytes"] - 1
        lines.append(f"{name} at {last} vs {first}: time {time_drift:+.1%}, memory {memory_drift:+.1%} (target within "
                     f"10 %: {'met' if abs(time_drift) <= 0.1 and abs(memory_drift) <= 0.1 else 'missed'}); "
                     f"at {last} vs {points[1]}: time {b['ms'] / full['ms'] - 1:+.1%}")
    lines += [
        f"rat vs dense memory at {last}: {rat['bytes'] / dense['bytes']:.3f} (target <= 0.1: "
        f"{'met' if rat['bytes'] / dense['bytes'] <= 0.1 else 'missed'})",
        f"one attention layer: the window cache's step vs re-encoding the window's {rec['note'].split()[-2]} tokens "
        f"at {last}: {rec['ms'] / w1['ms']:.1f}x",
    ]
    model = [r for r in rows if r["row"] == "model step" and r["tokens"] == last]
    if model:
        step, again = model[0], _at(rows, "model recompute", last)
        ratio = again["ms"] / step["ms"]
        lines.append(f"decoder: step {step['ms']:.2f} ms vs recomputing the window from scratch {again['ms']:.1f} ms "
                     f"per token at {step['tokens']}: {ratio:.1f}x (target >= 20x: {'met' if ratio >= 20 else 'missed'})")
    hf = sorted((r for r in rows if r["row"] == "hf streaming"), key=lambda r: r["tokens"])
    if hf:
        flat = len({r["bytes"] for r in hf}) == 1
        lines.append(f"hf streaming: cache {hf[-1]['bytes'] / MIB:.3f} MiB at every checkpoint ({'flat' if flat else 'NOT flat'}), "
                     f"peak RSS {hf[0]['peak_rss_mib']:.1f} -> {hf[-1]['peak_rss_mib']:.1f} MiB, "
                     f"dense reference error {hf[0]['reference_error']:.1e} (target: flat memory, equal to the reference)")
    return lines


def format_table(rows) -> str:
    """The family's rows as a plain-text table, then the targets."""
    head = f"{'row':16s} {'tokens':>7s} {'ms/token':>9s} {'held MiB':>9s}  what"
    lines = ["decoding family: CPU float32, batch 1, 4 heads of 64, one token per step", head, "-" * len(head)]
    hf = [r for r in rows if r["row"] == "hf streaming"]
    for r in rows:
        rss = f"  (peak RSS {r['peak_rss_mib']:.1f} MiB)" if "peak_rss_mib" in r else ""
        lines.append(f"{r['row']:16s} {r['tokens']:7d} {fmt(r['ms'], '.3f'):>9s} {r['bytes'] / MIB:9.3f}  {r['note']}{rss}")
    lines.append("ms/token: median over 64 steps around the checkpoint (recompute rows: median of repeats); "
                 "held: tensor memory the cache holds at that token" + ("; hf streaming runs on 1 thread." if hf else "."))
    return "\n".join(lines + targets(rows))


def plot(rows, path: str, title: str) -> None:
    """Per-token time and held memory vs stream length, one line per cache (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("window", "window absolute", "dense", "linear", "rat", "moba", "recompute", "model step",
                 "hf streaming"):
        series = sorted((r for r in rows if r["row"] == name), key=lambda r: r["tokens"])
        tokens = [r["tokens"] for r in series]
        ax_t.plot(tokens, [r["ms"] for r in series], "o-", label=name)
        ax_m.plot(tokens, [max(r["bytes"], 1) / MIB for r in series], "o-", label=name)
    for ax, what in ((ax_t, "ms per token"), (ax_m, "held MiB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("stream position (tokens)")
        ax.set_ylabel(what)
    fig.legend(*ax_t.get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
