"""Benchmark family ``decoding``: per-token time and memory of every decoding cache against stream length.

CPU, float32, batch 1, 4 heads of 64, under ``torch.no_grad``. Every cache decodes the same stream of
random q, k, v tokens; the caches take turns at every token (a step of each, then the next token), so a
load change on the machine reaches them all alike. The per-token time at a checkpoint t is the median
of the steps t - 32 .. t + 31; memory is ``nbytes()`` of the cache at t (tensor memory it holds).

| row | what decodes a token |
|---|---|
| ``window`` | ``SlidingWindowCache(1024, sinks=4, positions="cache", rope_theta=1e4)``: bounded |
| ``dense`` | ``KVCache``: every key (dense decoding with a full cache) |
| ``linear`` | ``LinearAttentionState`` (elu1): fixed size |
| ``rat`` | ``RATCache(16)``: one state per 16 tokens |
| ``moba`` | ``MoBACache(64, top_k=3)``: every key, routed reads |
| ``recompute`` | the window re-encoded from scratch at each token: causal ``glocal.attention`` over the last 1028 tokens (every query of the window, as a model re-encoding its window must) |
| ``model step`` / ``model recompute`` | ``HybridDecoder(256, 4, depth=2, pattern="L", window=1024)``: ``step`` with its caches vs its forward over the last 1024 tokens |

Targets (issue #14, checked by the table's last lines): window memory and time at 20,000 within 10 %
of those at 1,000; window >= 20x faster per token than ``recompute`` at 20,000; RAT memory at 20,000
<= 1/10 of the dense cache's. ``glocal.bench.decoding_hf`` adds the StreamingCache run on a tiny Llama.
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
from .timing import fmt, median_ms

MIB = 2 ** 20
FULL = dict(tokens=20000, checkpoints=(1000, 5000, 10000, 20000), window=1024, sinks=4, heads=4, dim=64,
            model_dim=256, model_tokens=20000, span=32)
QUICK = dict(tokens=600, checkpoints=(100, 300, 600), window=64, sinks=4, heads=4, dim=64, model_dim=64,
             model_tokens=300, span=8)
POOL = 4096  # distinct random tokens, cycled: drawing random numbers is not part of a step


def _caches(c: dict) -> dict:
    return {"window": SlidingWindowCache(c["window"], sinks=c["sinks"], positions="cache", rope_theta=10000.0),
            "dense": KVCache(), "linear": LinearAttentionState(), "rat": RATCache(16),
            "moba": MoBACache(64, top_k=3)}


def _stream_rows(c: dict, progress=None) -> list[dict]:
    """Every cache over one stream, in turns; per-token times around each checkpoint, memory at it."""
    torch.manual_seed(0)
    caches = _caches(c)
    pool = torch.randn(POOL, 3, 1, c["heads"], c["dim"])
    gate = torch.full((1, c["heads"], 1), 0.9)
    steps = {
        "window": lambda cache, q, k, v: cache.step(q, k, v),
        "dense": lambda cache, q, k, v: cache.step(q, k, v),
        "linear": lambda cache, q, k, v: cache.step(q, k, v),
        "rat": lambda cache, q, k, v: cache.step(q, k, v, gate, gate),
        "moba": lambda cache, q, k, v: cache.step(q, k, v),
    }
    span = c["span"]
    wanted = {t: [] for t in c["checkpoints"]}
    times = {name: {t: [] for t in c["checkpoints"]} for name in caches}
    memory = {name: {} for name in caches}
    last = max(c["checkpoints"])
    for t in range(1, last + span):
        q, k, v = pool[t % POOL]
        near = [point for point in wanted if point - span <= t < point + span]
        for name, cache in caches.items():
            start = time.perf_counter()
            steps[name](cache, q, k, v)
            elapsed = (time.perf_counter() - start) * 1e3
            for point in near:
                times[name][point].append(elapsed)
            if t in wanted:
                memory[name][t] = cache.nbytes()
        if progress and t % 500 == 0:
            progress(t, last + span)
    rows = []
    for name in caches:
        for point in c["checkpoints"]:
            rows.append({"row": name, "tokens": point, "ms": statistics.median(times[name][point]),
                         "bytes": memory[name][point], "note": repr(caches[name]).split(";")[0]})
    return rows


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
    """A decoder's step with its caches vs its forward over the last window of tokens (re-encoding)."""
    torch.manual_seed(1)
    dim, window = c["model_dim"], c["window"]
    model = HybridDecoder(dim, c["heads"], depth=2, pattern="L", settings={"L": {"window": window}}).eval()
    cache = model.new_cache(1)
    pool = torch.randn(POOL, 1, dim)
    span, total = c["span"], c["model_tokens"]
    step_ms = []
    for t in range(total + span):
        start = time.perf_counter()
        model.step(pool[t % POOL], cache)
        if t >= total - span:
            step_ms.append((time.perf_counter() - start) * 1e3)
        if progress and t % 1000 == 0:
            progress(t, total + span)
    x = torch.randn(1, window, dim)
    recompute = median_ms(lambda: model(x), repeats=max(3, repeats))
    return [{"row": "model step", "tokens": total, "ms": statistics.median(step_ms), "bytes": cache.nbytes(),
             "note": f"HybridDecoder({dim}, {c['heads']} heads, depth 2, 'L', window {window}).step"},
            {"row": "model recompute", "tokens": total, "ms": recompute, "bytes": x.nbytes,
             "note": f"its forward over the last {window} tokens"}]


def run(repeats: int, quick: bool, progress=None) -> list[dict]:
    """Measure the family; one dict per (row, checkpoint). ``progress(done, total)``."""
    c = QUICK if quick else FULL
    with torch.no_grad():
        rows = _stream_rows(c, progress)
        rows += _recompute_rows(c, repeats)
        rows += _model_rows(c, repeats, progress)
    return rows


def _at(rows, name, tokens):
    return next(r for r in rows if r["row"] == name and r["tokens"] == tokens)


def targets(rows) -> list[str]:
    """The issue's targets, each as a line with the figures it reads and whether they hold."""
    points = sorted({r["tokens"] for r in rows if r["row"] == "window"})
    first, last = points[0], points[-1]
    w0, w1 = _at(rows, "window", first), _at(rows, "window", last)
    rec, dense, rat = _at(rows, "recompute", last), _at(rows, "dense", last), _at(rows, "rat", last)
    time_drift, memory_drift = w1["ms"] / w0["ms"] - 1, w1["bytes"] / w0["bytes"] - 1
    lines = [
        f"window at {last} vs {first}: time {time_drift:+.1%}, memory {memory_drift:+.1%} (target within 10 %: "
        f"{'met' if abs(time_drift) <= 0.1 and abs(memory_drift) <= 0.1 else 'missed'})",
        f"window vs recompute at {last}: {rec['ms'] / w1['ms']:.1f}x faster per token (target >= 20x: "
        f"{'met' if rec['ms'] / w1['ms'] >= 20 else 'missed'})",
        f"rat vs dense memory at {last}: {rat['bytes'] / dense['bytes']:.3f} (target <= 0.1: "
        f"{'met' if rat['bytes'] / dense['bytes'] <= 0.1 else 'missed'})",
    ]
    model = [r for r in rows if r["row"].startswith("model")]
    if model:
        step, again = model
        lines.append(f"model: step {step['ms']:.2f} ms vs re-encoding the window {again['ms']:.1f} ms per token "
                     f"({again['ms'] / step['ms']:.0f}x)")
    return lines


def format_table(rows) -> str:
    """The family's rows as a plain-text table, then the targets."""
    head = f"{'row':16s} {'tokens':>7s} {'ms/token':>9s} {'held MiB':>9s}  what"
    lines = ["decoding family: CPU float32, batch 1, 4 heads of 64, one token per step", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['row']:16s} {r['tokens']:7d} {fmt(r['ms'], '.3f'):>9s} {r['bytes'] / MIB:9.3f}  {r['note']}")
    lines.append("ms/token: median over 64 steps around the checkpoint (recompute rows: median of repeats); "
                 "held: tensor memory the cache holds at that token.")
    return "\n".join(lines + targets(rows))


def plot(rows, path: str, title: str) -> None:
    """Per-token time and held memory vs stream length, one line per cache (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("window", "dense", "linear", "rat", "moba", "recompute"):
        series = sorted((r for r in rows if r["row"] == name), key=lambda r: r["tokens"])
        tokens = [r["tokens"] for r in series]
        ax_t.plot(tokens, [r["ms"] for r in series], "o-", label=name)
        ax_m.plot(tokens, [max(r["bytes"], 1) / MIB for r in series], "o-", label=name)
    for ax, what in ((ax_t, "ms per token"), (ax_m, "held MiB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("stream position (tokens)")
        ax.set_ylabel(what)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
