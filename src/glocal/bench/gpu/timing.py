"""The GPU suite's timings: glocal's Triton kernels next to compiled FlexAttention and dense SDPA.

Shapes (every timed config): q, k, v: [1, *spatial, 8 heads, 128] bfloat16; Flex and SDPA get the
same tensors as [1, 8, N, 128] row-major tokens (their native layout, so the transposes are not timed).

Example (on a CUDA machine):
    >>> from glocal.bench.gpu import configs, timing               # doctest: +SKIP
    >>> row = timing.time_config(configs.CONFIGS[0], rep_ms=100)   # doctest: +SKIP
    >>> timing.print_table([row], "H100", timing.matmul_tflops(100))  # doctest: +SKIP

Method (DESIGN.md §5): every figure is a median of ``triton.testing.do_bench`` (device events).
Useful FLOPs count only attended (query, key) pairs: 4·D per pair forward (QK and PV), 3.5x that
forward+backward. The FLOP floor is useful FLOPs over the measured bf16 matmul rate of the same card.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import config
from ...backends import flex
from ...masks import attended_pairs
from ...spec import make_neighborhood_spec
from .configs import VARIANTS, problem_fields
from .correctness import _rel
from .report import _report_line, kernel_report


def _bench(fn, rep_ms: int) -> float:
    """Median milliseconds of ``fn`` over ``rep_ms`` of ``triton.testing.do_bench``."""
    import triton

    return float(triton.testing.do_bench(fn, warmup=max(10, rep_ms // 4), rep=rep_ms, return_mode="median"))


def matmul_tflops(rep_ms: int) -> float:
    """The card's bf16 matmul rate (8192^3), in TFLOP/s."""
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = _bench(lambda: a @ b, rep_ms)
    return 2 * n**3 / ms / 1e9


def copy_gbs(rep_ms: int, nbytes: int = 1 << 30) -> float:
    """The card's copy bandwidth (one 1 GiB device-to-device copy, reads plus writes), in GB/s: the other
    figure glocal.sim's report needs (``glocal sim --report``)."""
    src = torch.ones(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src), rep_ms)
    return 2 * nbytes / ms / 1e6


def time_config(cfg: dict, rep_ms: int, variants=None, save=None) -> dict:
    """One table row: glocal (triton), compiled Flex and dense SDPA on the same random bf16 inputs.

    ``variants``: None, or a set of VARIANTS keys ("1", "2", "3", "bwd") whose tile options are also timed.
    ``save``: called with the row whenever it gains a figure, so a run stopped later keeps them.
    """
    from ...backends.triton import ops  # imports Triton

    heads, dim = 8, 128
    spec = make_neighborhood_spec(cfg["spatial"], cfg["kernel_size"], 1, 1, cfg["causal"])
    shape = (1, *cfg["spatial"], heads, dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    scale = dim ** -0.5
    n = spec.num_tokens
    qt, kt, vt = (x.reshape(1, n, heads, dim).transpose(1, 2).contiguous() for x in (q, k, v))
    # glocal's kernels compile before any torch.compile work in this process (the order of the
    # run that produced docs/gpu.md; a run in the other order stalled, cause unknown).
    with torch.no_grad():
        go, _ = ops.neighborhood(spec, q, k, v, scale)
    torch.cuda.synchronize()
    torch._dynamo.reset()
    bm = flex.block_mask(spec, n, n, 0, q.device)
    flex_fn = torch.compile(flex._flex_module().flex_attention, dynamic=False)
    back = cfg["backward"]
    if back:
        for x in (q, k, v, qt, kt, vt):
            x.requires_grad_()
        dout = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
        dout_t = dout.reshape(1, n, heads, dim).transpose(1, 2).contiguous()

    def glocal_fn():
        if not back:
            with torch.no_grad():
                return ops.neighborhood(spec, q, k, v, scale)
        out, _ = ops.neighborhood(spec, q, k, v, scale)
        return torch.autograd.grad(out, (q, k, v), dout)

    def flex_run():
        if not back:
            with torch.no_grad():
                return flex_fn(qt, kt, vt, block_mask=bm, scale=scale)
        out = flex_fn(qt, kt, vt, block_mask=bm, scale=scale)
        return torch.autograd.grad(out, (qt, kt, vt), dout_t)

    def sdpa_fn():
        if not back:
            with torch.no_grad():
                return F.scaled_dot_product_attention(qt, kt, vt, is_causal=cfg["causal"], scale=scale)
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=cfg["causal"], scale=scale)
        return torch.autograd.grad(out, (qt, kt, vt), dout_t)

    # Same function before timing: glocal against Flex on these inputs (bf16 vs bf16).
    with torch.no_grad():
        fo = flex_fn(qt.detach(), kt.detach(), vt.detach(), block_mask=bm, scale=scale)
    agree = _rel(go.reshape(1, n, heads, dim).transpose(1, 2), fo)

    row = dict(name=cfg["name"], target=cfg["target"], agree_vs_flex=agree, **problem_fields(cfg, heads, dim))
    ops.last_compiled.clear()
    row["glocal_ms"] = _bench(glocal_fn, rep_ms)
    row["kernels"] = kernel_report()
    print(f"  kernels: {_report_line(row['kernels'])}", flush=True)
    row["flex_ms"] = _bench(flex_run, rep_ms)
    row["sdpa_ms"] = _bench(sdpa_fn, rep_ms)
    flops = 4.0 * attended_pairs(spec) * dim * heads * (3.5 if back else 1.0)
    row["useful_gflop"] = flops / 1e9
    row["glocal_tflops"] = flops / row["glocal_ms"] / 1e9
    row["flex_tflops"] = flops / row["flex_ms"] / 1e9
    row["vs_flex"] = row["flex_ms"] / row["glocal_ms"]
    row["vs_sdpa"] = row["sdpa_ms"] / row["glocal_ms"]
    key = "bwd" if back else str(spec.ndim)
    if save:
        save(row)
    if variants and key in variants:
        row["variants"] = []
        for opts in VARIANTS[key]:
            print(f"    variant {opts}: ...", flush=True)
            try:
                ops.last_compiled.clear()
                with config.triton_tiles(**opts):
                    with torch.no_grad():  # same function first: the variant's output against Flex's
                        vo, _ = ops.neighborhood(spec, q, k, v, scale)
                    agree_v = _rel(vo.reshape(1, n, heads, dim).transpose(1, 2), fo)
                    ms = _bench(glocal_fn, rep_ms)
                report = kernel_report()
                row["variants"].append(dict(options=str(opts), ms=ms, vs_flex=row["flex_ms"] / ms,
                                            agree_vs_flex=agree_v, kernels=report))
                print(f"    variant {opts}: {ms:.3f} ms ({row['flex_ms'] / ms:.2f}x Flex, rel. diff vs Flex "
                      f"{agree_v:.1e}); {_report_line(report)}", flush=True)
            except Exception as err:  # a variant that does not compile is reported, not fatal
                row["variants"].append(dict(options=str(opts), error=f"{type(err).__name__}: {str(err)[:200]}"))
                print(f"    variant {opts}: failed: {type(err).__name__}: {str(err)[:200]}", flush=True)
            if save:
                save(row)
    return row


def print_table(rows: list, card: str, mm_tflops: float | None) -> None:
    """The timings as a table, then each config's fastest tile variant."""
    print(f"\ncard: {card}; bf16, batch 1, 8 heads, head dim 128; medians of triton.testing.do_bench")
    if mm_tflops:
        print(f"bf16 matmul (8192^3): {mm_tflops:.0f} TFLOP/s (FLOP floor = useful FLOPs / this rate)")
    head = (f"{'config':32s} {'glocal ms':>9s} {'flex ms':>8s} {'sdpa ms':>8s} {'vs flex':>8s} {'target':>6s} "
            f"{'vs sdpa':>8s} {'glocal TF/s':>11s} {'flex TF/s':>9s} {'floor':>6s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['name']:32s} error: {r['error']}")
            continue
        floor = r["useful_gflop"] / mm_tflops if mm_tflops else float("nan")
        met = "ok" if r["vs_flex"] >= r["target"] else "MISS"
        print(f"{r['name']:32s} {r['glocal_ms']:9.3f} {r['flex_ms']:8.3f} {r['sdpa_ms']:8.3f} "
              f"{r['vs_flex']:7.2f}x {r['target']:4.1f}{met:>4s} {r['vs_sdpa']:7.2f}x {r['glocal_tflops']:11.0f} "
              f"{r['flex_tflops']:9.0f} {floor:5.3f}ms")
    for r in rows:
        timed = [v for v in r.get("variants", []) if "ms" in v]
        if timed:
            best = min(timed, key=lambda v: v["ms"])
            print(f"fastest variant of {r['name']}: {best['options']} {best['ms']:.3f} ms "
                  f"({best['vs_flex']:.2f}x Flex, rel. diff vs Flex {best.get('agree_vs_flex', float('nan')):.1e}; "
                  f"default {r['glocal_ms']:.3f} ms, {r['agree_vs_flex']:.1e})")
