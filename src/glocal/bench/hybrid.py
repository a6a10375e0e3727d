"""Benchmark family ``hybrid``: hybrid layers and layer schedules against dense attention of the same size.

CPU, float32, batch 1, forward under ``torch.no_grad``. Each row times a glocal module and its dense twin
in turns in one process (``timing.interleaved_ms``, median of the repeats) and measures the extra peak
memory of one forward of each (``timing.peak_cpu_bytes``, an untimed run). Rows and targets (dense / glocal):

| row | glocal | dense twin | target |
|---|---|---|---|
| ``modernbert`` | ``HybridEncoder.modernbert(dim=512, num_heads=8, depth=6)``: global every third layer, band of 129 keys otherwise | the same weights with every layer global, attention by ``F.scaled_dot_product_attention`` | >= 1.6x at 8192 tokens |
| ``decoder`` | ``HybridDecoder(512, 8, depth=4, pattern="LLLG")``, window 1024 | every layer causal global through SDPA | none (shown) |
| ``moh`` | ``MoHAttention(768, 12 heads, 4 shared, 2 of 8 routed)``, T=4096 | its ``forward_dense`` (all 12 heads for every token, then the gates) | >= 1.4x |
| ``hybrid 2-D`` | ``HybridAttention`` 7x7 neighborhood + compressed global (reduction 4), 64x64, 4 heads of 64: the attention (q, k, v given) | SDPA over the 4,096 tokens | >= 8x |
| ``hybrid 2-D layer`` | the same layer with its projections | the layer with SDPA in place of its attention | none (shown) |

The ``hybrid 2-D`` row also prints the largest difference to a dense reference of the same layer (one
masked softmax over the union of the 4,096 tokens and the 256 pooled blocks), relative to its largest value.
``--quick`` shrinks every size (a smoke test; its ratios mean little).

Shapes:
    run(repeats, quick) -> [row dict]; a row: row, config, tokens, glocal_ms, dense_ms, speedup, target,
    glocal_peak_mib, dense_peak_mib, error

Example:
    >>> from glocal.bench import hybrid
    >>> rows = hybrid.run(repeats=1, quick=True)  # doctest: +SKIP
    >>> sorted({r["row"] for r in rows})  # doctest: +SKIP
    ['decoder', 'hybrid 2-D', 'hybrid 2-D layer', 'modernbert', 'moh']
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..masks import dense_mask, pool_tokens
from ..nn import HybridAttention, HybridDecoder, HybridEncoder, MoHAttention
from ..nn.hybrid import compressed_keys_allowed
from ..nn.schedules import ScheduledAttention
from ..numerics import dense_attention
from ..spec import make_neighborhood_spec
from .timing import fmt, interleaved_ms, peak_cpu_bytes

MIB = 2 ** 20
FULL = dict(lengths=(1024, 2048, 4096, 8192), dim=512, heads=8, depth=6, decoder_t=8192, window=1024,
            moh_t=4096, grid=(64, 64), grid_heads=4)
QUICK = dict(lengths=(256, 512), dim=64, heads=4, depth=3, decoder_t=512, window=64, moh_t=256, grid=(16, 16),
             grid_heads=2)
TARGETS = {"modernbert": 1.6, "decoder": None, "moh": 1.4, "hybrid 2-D": 8.0, "hybrid 2-D layer": None}


def _sdpa_attend(module: ScheduledAttention):
    """``module``'s attention replaced by torch's SDPA over every (earlier) token: the dense twin's layer."""

    def attend(q, k, v):
        flat = [t.flatten(1, -3).transpose(1, 2) for t in (q, k, v)]
        return F.scaled_dot_product_attention(*flat, is_causal=module.is_causal).transpose(1, 2).reshape(q.shape)

    return attend


def dense_twin(model):
    """A copy of a schedule with the same weights whose every L/G/M layer attends every token through SDPA."""
    twin = copy.deepcopy(model)
    for layer in twin.layers:
        attn = layer.attn
        if not isinstance(attn, ScheduledAttention):
            raise TypeError(f"dense_twin replaces L, G and M layers only; layer kinds are {model.kinds!r}")
        attn.kind = "G"
        attn._attend = _sdpa_attend(attn)
    return twin


def _pair(name, config, tokens, fn, dense_fn, repeats, target, error=None) -> dict:
    times = interleaved_ms({"glocal": fn, "dense": dense_fn}, repeats)
    return {"row": name, "config": config, "tokens": tokens, "glocal_ms": times["glocal"], "dense_ms": times["dense"],
            "speedup": times["dense"] / times["glocal"], "target": target,
            "glocal_peak_mib": peak_cpu_bytes(fn) / MIB, "dense_peak_mib": peak_cpu_bytes(dense_fn) / MIB,
            "error": error}


def _schedule_rows(c: dict, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    rows = []
    model = HybridEncoder.modernbert(dim=c["dim"], num_heads=c["heads"], depth=c["depth"]).eval()
    twin = dense_twin(model)
    for t in c["lengths"]:
        x = torch.randn(1, t, c["dim"])
        rows.append(_pair("modernbert", f"dim {c['dim']}, {c['heads']} heads, {c['depth']} layers {model.kinds}",
                          t, lambda: model(x), lambda: twin(x), repeats if t < 8192 else max(1, repeats - 2),
                          TARGETS["modernbert"]))
    decoder = HybridDecoder(c["dim"], c["heads"], depth=4, pattern="LLLG",
                            settings={"L": {"window": c["window"]}}).eval()
    twin = dense_twin(decoder)
    t = c["decoder_t"]
    x = torch.randn(1, t, c["dim"])
    rows.append(_pair("decoder", f"dim {c['dim']}, {c['heads']} heads, LLLG, window {c['window']}", t,
                      lambda: decoder(x), lambda: twin(x), max(1, repeats - 2), None))
    return rows


def _moh_row(c: dict, repeats: int) -> dict:
    torch.manual_seed(1)
    dim = 768 if c is FULL else 96
    layer = MoHAttention(dim, 12, shared_heads=4, routed_top_k=2).eval()
    x = torch.randn(1, c["moh_t"], dim)
    return _pair("moh", f"dim {dim}, 12 heads: 4 shared, 2 of 8 routed", c["moh_t"], lambda: layer(x),
                 lambda: layer.forward_dense(x), repeats, TARGETS["moh"])


def _union_reference(layer: HybridAttention, q, k, v) -> torch.Tensor:
    """The merged layer's attention as one dense masked softmax over the tokens and the pooled blocks."""
    grid = tuple(q.shape[1:-2])
    local = dense_mask(make_neighborhood_spec(grid, layer.kernel_size, 1, layer.dilation, False))
    blocks = compressed_keys_allowed(grid, layer.kernel_size, layer.dilation, layer.reduction, False, True, "cpu")
    keys = torch.cat([k.flatten(1, -3), pool_tokens(k, layer.reduction).flatten(1, -3)], 1)
    values = torch.cat([v.flatten(1, -3), pool_tokens(v, layer.reduction).flatten(1, -3)], 1)
    out, _ = dense_attention(q.flatten(1, -3).double(), keys.double(), values.double(), q.shape[-1] ** -0.5,
                             torch.cat([local, blocks], 1))
    return out.reshape(q.shape)


def _grid_rows(c: dict, repeats: int) -> list[dict]:
    torch.manual_seed(2)
    heads = c["grid_heads"]
    dim = 64 * heads
    layer = HybridAttention(dim, heads, 7, "compressed", ndim=2, reduction=4).eval()
    x = torch.randn(1, *c["grid"], dim)
    with torch.no_grad():
        q, k, v = layer._qkv(x)
        ref = _union_reference(layer, q, k, v)
        got = layer._merged(x, q, k, v, slice(None))
        error = float((got.double() - ref).abs().max() / ref.abs().max())
    flat = [t.flatten(1, -3).transpose(1, 2) for t in (q, k, v)]
    tokens = c["grid"][0] * c["grid"][1]
    grid = "x".join(map(str, c["grid"]))
    rows = [_pair("hybrid 2-D", f"{grid}, 7x7 + compressed r4, {heads} heads of 64 (attention)", tokens,
                  lambda: layer._merged(x, q, k, v, slice(None)), lambda: F.scaled_dot_product_attention(*flat),
                  repeats, TARGETS["hybrid 2-D"], error)]

    def dense_layer():
        qd, kd, vd = (t.flatten(1, -3).transpose(1, 2) for t in layer._qkv(x))
        return layer._out(F.scaled_dot_product_attention(qd, kd, vd).transpose(1, 2).reshape(*x.shape[:-1], heads, 64))

    rows.append(_pair("hybrid 2-D layer", f"{grid}, the layer with its projections", tokens, lambda: layer(x),
                      dense_layer, repeats, None))
    return rows


def run(repeats: int, quick: bool, progress=None) -> list[dict]:
    """Measure the family; one dict per row (see the module docstring). ``progress(done, total)``."""
    c = QUICK if quick else FULL
    rows = []
    parts = (_grid_rows, _moh_row, _schedule_rows)
    with torch.no_grad():
        for i, measure in enumerate(parts):
            made = measure(c, repeats)
            rows.extend(made if isinstance(made, list) else [made])
            if progress:
                progress(i + 1, len(parts))
    return rows


def format_table(rows) -> str:
    """The family's rows as a plain-text table."""
    head = (f"{'row':17s} {'config':62s} {'tokens':>7s} {'glocal ms':>10s} {'dense ms':>9s} {'x dense':>8s} "
            f"{'target':>7s} {'peak MiB':>9s} {'dense MiB':>10s} {'rel err':>8s}")
    lines = ["hybrid family: CPU float32, batch 1, forward", head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['row']:17s} {r['config']:62s} {r['tokens']:7d} {r['glocal_ms']:10.1f} {r['dense_ms']:9.1f} "
            f"{r['speedup']:8.2f} {fmt(r['target']):>7s} {r['glocal_peak_mib']:9.1f} {r['dense_peak_mib']:10.1f} "
            f"{fmt(r['error'], '.1e'):>8s}")
    lines.append("x dense = dense time / glocal time, in the same run; peak = extra memory of one forward; rel err = "
                 "max |glocal - dense reference| / max |reference| (one softmax over the union of the key sets).")
    return "\n".join(lines)


def plot(rows, path: str, title: str) -> None:
    """Time and peak memory vs length of the ModernBERT schedule and its all-global twin (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [r for r in rows if r["row"] == "modernbert"]
    tokens = [r["tokens"] for r in series]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label, color in (("glocal", "HybridEncoder.modernbert", "#2a9d8f"), ("dense", "every layer global (SDPA)",
                                                                                   "#e76f51")):
        ax_t.plot(tokens, [r[f"{key}_ms"] for r in series], "o-", color=color, label=label)
        ax_m.plot(tokens, [r[f"{key}_peak_mib"] for r in series], "o-", color=color, label=label)
    for ax, what in ((ax_t, "forward ms"), (ax_m, "extra peak MiB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_ylabel(what)
        ax.legend()
    others = ", ".join(f"{r['row']} {r['speedup']:.2f}x" for r in rows if r["row"] != "modernbert")
    fig.suptitle(f"{title}\n(also: {others})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
