"""GPU suite: check the Triton kernels against the reference, then time them against FlexAttention and SDPA.

Shapes (every timed config): q, k, v: [1, *spatial, 8 heads, 128] bfloat16.

Example:
    $ PYTHONPATH=src python benchmarks/gpu.py --json gpu.json      # on a CUDA machine
    >>> import argparse, glocal.bench.gpu as gpu                   # doctest: +SKIP
    >>> gpu.main(argparse.Namespace(repeats=100, quick=False, json=None))

Method (DESIGN.md §5): every figure is a median of ``triton.testing.do_bench``
(device events) in one process, glocal next to compiled FlexAttention with
the same mask over row-major tokens (its native [B, H, N, D] layout, so its
transposes are not timed) and dense SDPA (causal when the config is). Useful
FLOPs count only attended (query, key) pairs: 4·D per pair forward (QK and
PV), 3.5x that forward+backward. The FLOP floor is useful FLOPs over the
measured bf16 matmul rate of the same card.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time

import torch

CONFIGS = [
    dict(name="2-D 128x128 K=13 fwd", spatial=(128, 128), kernel_size=13, causal=False, backward=False, target=1.8),
    dict(name="3-D 16x64x64 K=(5,13,13) fwd", spatial=(16, 64, 64), kernel_size=(5, 13, 13), causal=False,
         backward=False, target=1.8),
    dict(name="2-D 128x128 K=13 fwd+bwd", spatial=(128, 128), kernel_size=13, causal=False, backward=True,
         target=1.5),
    dict(name="1-D 32768 K=2048 fwd", spatial=(32768,), kernel_size=2048, causal=False, backward=False, target=1.3),
    dict(name="1-D 32768 K=2048 causal fwd", spatial=(32768,), kernel_size=2048, causal=True, backward=False,
         target=1.3),
]

# Tile variants timed with --variants (glocal only; same Flex baseline). Keys are ops.tiles() options.
_SMALL_1D = dict(fwd_q=(1, 1, 64), fwd_k=(1, 1, 64), fwd_warps=4, fwd_stages=3)
VARIANTS = {
    # 1-D: the split loop (no per-tile branch, core loads without masks), TMA loads and Triton's warp
    # specialisation. With 128-query boxes and 8 warps one program fills an SM (224 KB of shared memory
    # or ~255 registers); 64 x 64 boxes with 4 warps, or TMA with 32-key boxes and 8 warps (128
    # registers, 80 KB), fit two programs per SM, whose softmax and matrix products can overlap.
    # `--compile-only` prints each one's registers, spills, shared memory and programs per SM.
    "1": [dict(fwd_split_1d=True), dict(fwd_split_1d=True, **_SMALL_1D), dict(**_SMALL_1D),
          dict(fwd_tma=True, fwd_k=(1, 1, 64), fwd_stages=2), dict(fwd_tma=True, **_SMALL_1D),
          dict(fwd_tma=True, fwd_k=(1, 1, 32), fwd_stages=3), dict(fwd_tma=True),
          # The next tile's scores computed during this tile's softmax (kernels._fwd_1d_tma_kernel, OVERLAP).
          dict(fwd_tma=True, fwd_overlap=True, fwd_k=(1, 1, 64), fwd_stages=2),
          dict(fwd_tma=True, fwd_overlap=True, **dict(_SMALL_1D, fwd_stages=2)),
          # Last: warp specialisation is the one option a run has not yet shown to finish (with 4 warps
          # Triton 3.6 does not compile it).
          dict(fwd_tma=True, fwd_ws=True, fwd_k=(1, 1, 64), fwd_stages=2)],
    "2": [dict(fwd_q=(1, 8, 16), fwd_k=(1, 4, 16), fwd_warps=8), dict(fwd_k=(1, 4, 16)),
          dict(fwd_k=(1, 8, 16))],
    "3": [dict(fwd_q=(2, 4, 8), fwd_k=(2, 4, 8), fwd_warps=4), dict(fwd_q=(2, 4, 8), fwd_k=(4, 4, 4), fwd_warps=4),
          dict(fwd_q=(2, 8, 8), fwd_k=(2, 4, 8))],
    # The default dK/dV kernel (4 warps) spills registers; with 8 warps it does not (--compile-only).
    "bwd": [dict(dkdv_warps=8), dict(bwd_k=(1, 8, 8), bwd_q=(1, 8, 8), dkdv_warps=8),
            dict(dq_q=(1, 8, 8), dq_k=(1, 8, 8), dq_warps=4), dict(fwd_q=(1, 8, 16), fwd_k=(1, 4, 16), fwd_warps=8)],
}


# Head dims of the random checks (32-256; 96 runs padded to 128). Each power-of-two block is
# one more compile per kernel: 50 checks take about two minutes, mostly compiling.
HEAD_DIMS = (128, 128, 128, 64, 96, 32, 256)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=100, help="do_bench time budget per figure, in ms")
    parser.add_argument("--quick", action="store_true", help="fewer random checks, shorter timing")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--checks", type=int, default=None, help="random correctness problems (default 60)")
    parser.add_argument("--variants", action="store_true", help="also time alternative tile shapes")
    parser.add_argument("--variant-keys", default="1,2,3,bwd",
                        help="which variant lists to time with --variants (1, 2, 3: forward by rank; bwd)")
    parser.add_argument("--head-dims", default=None, help="comma list of head dims for the random checks")
    parser.add_argument("--only", default=None, help="time only configs whose name contains this text")
    parser.add_argument("--budget", type=int, default=150,
                        help="seconds each config may take (the checks get twice that); past it the config's "
                             "process prints its Python stack and is stopped, and the run goes on")
    parser.add_argument("--in-process", action="store_true",
                        help="run everything in this process (no per-config time limit)")
    parser.add_argument("--compile-only", action="store_true",
                        help="no GPU needed: compile every config's kernels (and with --variants the variants) "
                             "for sm_90 here and print registers, spills, shared memory, programs per SM and "
                             "instruction counts")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)


def _useful_pairs(spec) -> int:
    """Attended (query, key) pairs: the neighborhood is a per-axis product, so the count is too."""
    from ..spec import axis_window

    total = 1
    for i in range(spec.ndim):
        length, k, s, d, c = spec.axis(i)
        x = torch.arange(length)
        _, lo, hi = axis_window(x, length, k, s, d, c)
        total *= int((hi - lo).sum())
    return total


def _rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _random_problem(rng: random.Random):
    ndim = rng.choice((1, 2, 2, 3))
    max_len = {1: 300, 2: 24, 3: 10}[ndim]
    spatial, ks, ss, ds, cs = [], [], [], [], []
    for _ in range(ndim):
        length = rng.randint(4, max_len)
        d = rng.choice((1, 1, 1, 2, 3)) if length >= 8 else 1
        k = rng.randint(1, max(1, min(length // d, 9 if ndim > 1 else 40)))
        s = rng.choice((1, 1, rng.randint(1, k)))
        spatial.append(length)
        ks.append(k)
        ss.append(s)
        ds.append(d)
        cs.append(rng.random() < 0.3)
    hkv = rng.choice((1, 2, 4))
    hq = hkv * rng.choice((1, 2))
    d_qk = rng.choice(HEAD_DIMS)
    d_v = d_qk if rng.random() < 0.8 else rng.choice(HEAD_DIMS)
    dtype = rng.choice((torch.bfloat16, torch.bfloat16, torch.float16))
    extra = rng.choice((0, 0, 0, rng.randint(1, 7)))
    return dict(spatial=tuple(spatial), kernel_size=tuple(ks), stride=tuple(ss), dilation=tuple(ds),
                is_causal=tuple(cs), batch=rng.choice((1, 2)), hq=hq, hkv=hkv, d_qk=d_qk, d_v=d_v, dtype=dtype,
                extra=extra)


def check(n_problems: int, seed: int = 0, device: str = "cuda") -> dict:
    """Triton vs the float32 reference on random problems; worst relative errors forward and backward."""
    from ..backends import reference
    from ..backends.triton import ops
    from ..spec import make_neighborhood_spec

    os.environ["GLOCAL_POISON"] = "1"
    rng = random.Random(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    worst = {"fwd": 0.0, "bwd": 0.0}
    failures = []
    start = time.time()
    for i in range(n_problems):
        p = _random_problem(rng)
        spec = make_neighborhood_spec(p["spatial"], p["kernel_size"], p["stride"], p["dilation"], p["is_causal"])
        dev, dt = device, p["dtype"]

        def rand(*shape):
            return torch.randn(*shape, device=dev, generator=gen).to(dt).requires_grad_()

        q = rand(p["batch"], *p["spatial"], p["hq"], p["d_qk"])
        k = rand(p["batch"], *p["spatial"], p["hkv"], p["d_qk"])
        v = rand(p["batch"], *p["spatial"], p["hkv"], p["d_v"])
        ak = rand(p["batch"], p["extra"], p["hkv"], p["d_qk"]) if p["extra"] else None
        av = rand(p["batch"], p["extra"], p["hkv"], p["d_v"]) if p["extra"] else None
        inputs = [x for x in (q, k, v, ak, av) if x is not None]
        scale = p["d_qk"] ** -0.5
        out, lse = ops.neighborhood(spec, q, k, v, scale, ak, av)
        gout = torch.randn(out.shape, device=dev, generator=gen)
        glse = torch.randn(lse.shape, device=dev, generator=gen)
        grads = torch.autograd.grad((out.float() * gout).sum() + (lse * glse).sum(), inputs)
        ref_in = [x.detach().float().requires_grad_() for x in inputs]
        rq, rk, rv = ref_in[:3]
        rak, rav = (ref_in[3], ref_in[4]) if ak is not None else (None, None)
        rout, rlse = reference.run(spec, rq, rk, rv, scale, rak, rav)
        rgrads = torch.autograd.grad((rout * gout).sum() + (rlse * glse).sum(), ref_in)
        fwd = max(_rel(out, rout), _rel(lse, rlse))
        bwd = max(_rel(g, r) for g, r in zip(grads, rgrads))
        tol = 2e-2 if dt == torch.bfloat16 else 1e-2
        worst["fwd"] = max(worst["fwd"], fwd)
        worst["bwd"] = max(worst["bwd"], bwd)
        if not (fwd <= tol and bwd <= tol):
            failures.append(dict(problem={k_: str(v_) for k_, v_ in p.items()}, fwd=fwd, bwd=bwd))
            print(f"  FAIL {i}: {p} fwd={fwd:.2e} bwd={bwd:.2e}", flush=True)
    os.environ.pop("GLOCAL_POISON", None)
    print(f"checked {n_problems} random problems in {time.time() - start:.0f}s: worst relative error "
          f"forward (out, lse) {worst['fwd']:.2e}, backward (dq, dk, dv, extra) {worst['bwd']:.2e}; "
          f"{len(failures)} over tolerance (bf16 2e-2, fp16 1e-2)", flush=True)
    return dict(problems=n_problems, worst_fwd=worst["fwd"], worst_bwd=worst["bwd"], failures=failures)


def _bench(fn, rep_ms: int) -> float:
    import triton

    return float(triton.testing.do_bench(fn, warmup=max(10, rep_ms // 4), rep=rep_ms, return_mode="median"))


def matmul_tflops(rep_ms: int) -> float:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = _bench(lambda: a @ b, rep_ms)
    return 2 * n**3 / ms / 1e9


def kernel_report() -> dict:
    """The compiler's report (:func:`_resources`) of each kernel of the latest glocal launches; a kernel
    whose report cannot be read gets ``{"error": ...}`` (the timings never depend on it)."""
    from ..backends.triton import ops

    report = {}
    for name, compiled in ops.last_compiled.items():
        try:
            report[name.strip("_")] = _resources(compiled, compiled.metadata.num_warps)
        except Exception as err:  # e.g. no cuobjdump beside this Triton
            report[name.strip("_")] = dict(error=f"{type(err).__name__}: {err}"[:200])
    return report


def _report_line(report: dict) -> str:
    return "; ".join(f"{name}: {r['error']}" if "error" in r else
                     f"{name}: {r['regs']} regs, {'spills' if r['local_bytes'] + r['spill_ld_st'] else 'no spills'}, "
                     f"{r['shared_kb']:.0f} KB shared, {r['per_sm']} per SM, {r['wgmma']} HGMMA, {r['tma_loads']} TMA"
                     for name, r in report.items())


def time_config(cfg: dict, rep_ms: int, variants=None, save=None) -> dict:
    """One table row: glocal (triton), compiled Flex and dense SDPA on the same random bf16 inputs.

    ``variants``: None, or a set of VARIANTS keys ("1", "2", "3", "bwd") whose tile options are also timed.
    ``save``: called with the row whenever it gains a figure, so a run stopped later keeps them.
    """
    import torch.nn.functional as F

    from ..backends import flex
    from ..backends.triton import ops
    from ..spec import make_neighborhood_spec

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

    row = dict(name=cfg["name"], target=cfg["target"], agree_vs_flex=agree)
    ops.last_compiled.clear()
    row["glocal_ms"] = _bench(glocal_fn, rep_ms)
    row["kernels"] = kernel_report()
    print(f"  kernels: {_report_line(row['kernels'])}", flush=True)
    row["flex_ms"] = _bench(flex_run, rep_ms)
    row["sdpa_ms"] = _bench(sdpa_fn, rep_ms)
    flops = 4.0 * _useful_pairs(spec) * dim * heads * (3.5 if back else 1.0)
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
                with ops.tiles(**opts):
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


# --- offline: the compiler's report, no GPU needed ----------------------------------------------

_SM90 = dict(regs=65536, shared=233472, block_reserved=1024, threads=2048, programs=32)  # per multiprocessor


@contextlib.contextmanager
def _offline_target(capability: int):
    """Make Triton compile for ``sm_<capability>`` on a machine without a GPU (nothing is launched)."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.driver import CudaDriver
    from triton.runtime import driver

    class OfflineCuda(CudaDriver):
        def __init__(self):  # no CUDA library is loaded: this driver only names a target
            pass

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", capability, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

    saved = driver._active
    driver.set_active(OfflineCuda())
    try:
        yield
    finally:
        driver._active = saved


def _resources(compiled, num_warps: int) -> dict:
    """Registers, local memory, shared memory, programs per SM and instruction counts of a compiled kernel."""
    import re
    import subprocess
    import tempfile
    from collections import Counter

    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([cuobjdump, "--dump-sass", f.name], capture_output=True, text=True).stdout
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    shared = int(compiled.metadata.shared)
    ops = Counter(m.split(".")[0] for m in re.findall(r"\b(HGMMA|HMMA|MUFU\.EX2|LDGSTS|UTMALDG|LDL|STL)\b", sass))
    warp_regs = -(-regs * 32 // 256) * 256  # registers are given per warp in blocks of 256
    per_sm = min(_SM90["regs"] // (warp_regs * num_warps), _SM90["shared"] // (shared + _SM90["block_reserved"]),
                 _SM90["threads"] // (32 * num_warps), _SM90["programs"])
    return dict(regs=regs, local_bytes=int(re.search(r"LOCAL:(\d+)", usage).group(1)), shared_kb=shared / 1024,
                per_sm=per_sm, wgmma=ops["HGMMA"], mma=ops["HMMA"], mufu_ex2=ops["MUFU"], ldgsts=ops["LDGSTS"],
                tma_loads=ops["UTMALDG"], spill_ld_st=ops["LDL"] + ops["STL"])


def offline_report(variants: bool = True, only: str | None = None, capability: int = 90) -> list:
    """Compile each config's kernels (defaults, and with ``variants`` every tile variant) for an
    ``sm_<capability>`` GPU on this machine, no GPU needed, and read the compiler's resource report.
    Needs real kernels: glocal's Triton kernels imported without ``TRITON_INTERPRET=1``.

    Returns one dict per (config, options, kernel): regs, local_bytes (spills), shared_kb, per_sm
    (programs one multiprocessor holds, from registers, shared memory and threads), and SASS
    instruction counts: wgmma (Hopper's warpgroup products, HGMMA), mma (the older HMMA), mufu_ex2
    (exponentials), ldgsts (asynchronous copies), tma_loads (UTMALDG), spill_ld_st (LDL + STL).
    """
    from ..backends.triton import ops
    from ..spec import make_neighborhood_spec

    rows = []
    with _offline_target(capability), ops.compile_only():
        for cfg in CONFIGS:
            if only and only not in cfg["name"]:
                continue
            spec = make_neighborhood_spec(cfg["spatial"], cfg["kernel_size"], 1, 1, cfg["causal"])
            q = k = v = torch.zeros(1, *cfg["spatial"], 8, 128, dtype=torch.bfloat16)
            key = "bwd" if cfg["backward"] else str(spec.ndim)
            for opts in [{}] + (VARIANTS.get(key, []) if variants else []):
                ops.last_compiled.clear()
                try:
                    with ops.tiles(**opts):
                        out, lse = ops.forward(spec, q, k, v, 0.1)
                        if cfg["backward"]:
                            ops.backward(spec, q, k, v, out, lse, torch.zeros_like(out), None, 0.1)
                except Exception as err:  # a variant that does not compile is reported, not fatal
                    rows.append(dict(config=cfg["name"], options=str(opts), error=f"{type(err).__name__}: {err}"[:300]))
                    continue
                for name, compiled in ops.last_compiled.items():
                    warps = compiled.metadata.num_warps
                    rows.append(dict(config=cfg["name"], options=str(opts), kernel=name.strip("_"),
                                     warps=warps, stages=compiled.metadata.num_stages, **_resources(compiled, warps)))
    return rows


def _triton_version() -> str:
    import triton

    return triton.__version__


def print_offline(rows: list, capability: int) -> None:
    print(f"\ncompiled for sm_{capability} on this machine (no GPU) by Triton {_triton_version()}; per SM: programs "
          f"one multiprocessor holds (registers, shared memory, threads); SASS instruction counts per kernel")
    head = (f"{'config':30s} {'options':56s} {'kernel':15s} {'warps':>5s} {'regs':>4s} {'spill':>5s} {'smem KB':>7s} "
            f"{'per SM':>6s} {'HGMMA':>5s} {'HMMA':>4s} {'EX2':>4s} {'LDGSTS':>6s} {'TMA':>4s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['config']:30s} {r['options']:56s} error: {r['error']}")
            continue
        spill = r["local_bytes"] + r["spill_ld_st"]
        print(f"{r['config']:30s} {r['options'][:56]:56s} {r['kernel']:15s} {r['warps']:5d} {r['regs']:4d} "
              f"{'yes' if spill else 'no':>5s} {r['shared_kb']:7.1f} {r['per_sm']:6d} {r['wgmma']:5d} {r['mma']:4d} "
              f"{r['mufu_ex2']:4d} {r['ldgsts']:6d} {r['tma_loads']:4d}")


def print_table(rows: list, card: str, mm_tflops: float | None) -> None:
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


def _options(args) -> dict:
    """The run's options from an argparse namespace (``glocal bench``'s lacks some: defaults)."""
    quick = bool(getattr(args, "quick", False))
    # do_bench's time budget per figure in ms; callers passing a small repeat count still get >= 25 ms.
    rep_ms = max(int(getattr(args, "repeats", 100) or 100), 25)
    checks = getattr(args, "checks", None)
    path = getattr(args, "json", None)
    return dict(
        quick=quick, rep_ms=min(rep_ms, 30) if quick else rep_ms,
        checks=checks if checks is not None else (20 if quick else 60),
        variants=bool(getattr(args, "variants", False)),
        variant_keys=str(getattr(args, "variant_keys", "1,2,3,bwd")),
        head_dims=getattr(args, "head_dims", None), only=getattr(args, "only", None),
        budget=int(getattr(args, "budget", 150) or 150), in_process=bool(getattr(args, "in_process", False)),
        # a boolean --json flag (glocal bench's) means JSON on stdout at the end
        json_stdout=path is True, json=path if isinstance(path, str) and path else None,
    )


def _child_command(opt: dict, task: str, result_path: str) -> list:
    """The command that runs one task ("check" or "config:<index>") of this suite in its own process."""
    cmd = [sys.executable, "-m", "glocal.bench.gpu", "--child", task, "--json", result_path,
           "--repeats", str(opt["rep_ms"]), "--checks", str(opt["checks"]), "--budget", str(opt["budget"]),
           "--variant-keys", opt["variant_keys"]]
    if opt["variants"]:
        cmd.append("--variants")
    if opt["head_dims"]:
        cmd += ["--head-dims", opt["head_dims"]]
    return cmd


def run_isolated(cmd: list, budget_s: float, result_path: str, grace_s: float = 30) -> tuple:
    """Run ``cmd`` (a child of this suite) with a time limit; returns ``(result dict or None, error or None)``.

    The child arms ``faulthandler`` to print its Python stack and exit at ``budget_s``; this process
    kills it ``grace_s`` later if it is still there (a stalled GPU launch may not return to Python). A result
    the child saved before stopping is kept.
    """
    import subprocess

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    error = None
    try:
        proc = subprocess.run(cmd, env=env, timeout=budget_s + grace_s)
        if proc.returncode != 0:
            error = f"stopped with exit code {proc.returncode} (see its output above)"
    except subprocess.TimeoutExpired:
        error = f"killed after {budget_s + grace_s:.0f} s"
    result = None
    if os.path.exists(result_path):
        with open(result_path) as f:
            result = json.load(f)
    return result, error


def _child(opt: dict, task: str) -> int:
    """One task in this process, under a time limit that prints the Python stack when it is reached."""
    import faulthandler

    budget = opt["budget"] * (2 if task == "check" else 1)
    faulthandler.dump_traceback_later(budget, exit=True)
    path = opt["json"]

    def save(result):
        with open(path, "w") as f:
            json.dump(result, f, indent=1, default=str)

    if task == "check":
        result = dict(matmul_tflops=matmul_tflops(opt["rep_ms"]))
        save(result)
        if opt["checks"] > 0:
            result["check"] = check(opt["checks"])
            save(result)
        return 0
    cfg = CONFIGS[int(task.split(":")[1])]
    keys = set(opt["variant_keys"].split(",")) if opt["variants"] else None
    time_config(cfg, opt["rep_ms"], keys, save=save)
    return 0


def _run_task(opt: dict, task: str, budget_s: float) -> tuple:
    """A task's result in a child process (or in this one with --in-process): ``(result, error)``."""
    import tempfile

    if opt["in_process"]:
        if task == "check":
            return dict(matmul_tflops=matmul_tflops(opt["rep_ms"]),
                        check=check(opt["checks"]) if opt["checks"] > 0 else None), None
        cfg = CONFIGS[int(task.split(":")[1])]
        keys = set(opt["variant_keys"].split(",")) if opt["variants"] else None
        try:
            return time_config(cfg, opt["rep_ms"], keys), None
        except Exception as err:  # one broken config must not lose the others' numbers
            return None, f"{type(err).__name__}: {str(err)[:300]}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.json")
        return run_isolated(_child_command(opt, task, path), budget_s, path)


def main(args) -> int:
    """Run the suite; ``args`` needs ``repeats``, ``quick``, ``json`` (others optional). Returns an exit code.

    The checks and each config run in a process of their own with a time limit (``--budget``), so a
    stalled compile or launch costs that config only and leaves its Python stack in the output.
    """
    from ..backends import triton as triton_backend

    if not triton_backend._triton_installed():
        print("triton is not installed: pip install glocal[triton]", file=sys.stderr)
        return 2
    opt = _options(args)
    if getattr(args, "compile_only", False):
        if os.environ.get("TRITON_INTERPRET") == "1":
            print("--compile-only compiles real kernels: unset TRITON_INTERPRET (it is set to 1)", file=sys.stderr)
            return 2
        rows = offline_report(opt["variants"], opt["only"])
        print_offline(rows, 90)
        if opt["json"]:
            with open(opt["json"], "w") as f:
                json.dump(dict(target="sm_90", triton=_triton_version(), rows=rows), f, indent=1)
        return 1 if any("error" in r for r in rows) else 0
    if not torch.cuda.is_available():
        print("the GPU suite needs a CUDA device; none is visible (--compile-only needs none)", file=sys.stderr)
        return 2
    global HEAD_DIMS
    if opt["head_dims"]:
        HEAD_DIMS = tuple(int(x) for x in opt["head_dims"].split(","))
    if getattr(args, "child", None):
        return _child(opt, args.child)
    card = torch.cuda.get_device_name()
    print(f"device: {card}, torch {torch.__version__}", flush=True)
    result = dict(card=card, torch=torch.__version__)
    path = opt["json"]

    def save():  # after every task, so a run cut short keeps what it measured
        if path:
            with open(path, "w") as f:
                json.dump(result, f, indent=1, default=str)

    checked, error = _run_task(opt, "check", 2 * opt["budget"])
    checked = checked or {}
    result["matmul_tflops"] = checked.get("matmul_tflops")
    if checked.get("check"):
        result["check"] = checked["check"]
    elif opt["checks"] > 0:
        result["check"] = dict(problems=opt["checks"], worst_fwd=float("nan"), worst_bwd=float("nan"),
                               failures=[f"the checks did not finish: {error}"])
    save()
    rows = result["rows"] = []
    for index, cfg in enumerate(CONFIGS):
        if opt["only"] and opt["only"] not in cfg["name"]:
            continue
        print(f"timing {cfg['name']} ...", flush=True)
        row, error = _run_task(opt, f"config:{index}", opt["budget"])
        if row is None or "sdpa_ms" not in row:
            row = dict(row or {}, name=cfg["name"], error=error or "no result")
        elif error:
            row["stopped"] = error  # its main figures are in; some variants may be missing
        if "error" in row:
            print(f"  error: {row['error']}", flush=True)
        else:
            print(f"  glocal {row['glocal_ms']:.3f} ms, flex {row['flex_ms']:.3f} ms, sdpa {row['sdpa_ms']:.3f} ms, "
                  f"{row['vs_flex']:.2f}x flex; glocal vs flex rel. diff {row['agree_vs_flex']:.1e}", flush=True)
        rows.append(row)
        save()
    print_table(rows, card, result["matmul_tflops"])
    if "check" in result:
        c = result["check"]
        print(f"checks: {c['problems']} random problems vs the float32 reference, worst relative error "
              f"forward {c['worst_fwd']:.2e}, backward {c['worst_bwd']:.2e}, {len(c['failures'])} over tolerance")
    if path:
        save()
        print(f"wrote {path}")
    if opt["json_stdout"]:
        print(json.dumps(result, default=str))
    bad = result.get("check", {}).get("failures")
    return 1 if bad or any("error" in r for r in rows) else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
