"""The compiler's report of glocal's Triton kernels: registers, spills, shared memory, programs per SM.

Read from the compiled kernels of the latest launches (``kernel_report``, beside every timing) or
from kernels compiled for an ``sm_90`` GPU on a machine without one (``offline_report``,
``--compile-only``). Shapes of the compiled configs: q, k, v: [1, *spatial, 8 heads, 128] bfloat16.

Example:
    >>> from glocal.bench.gpu import report
    >>> report._report_line({"fwd_kernel": {"error": "KeyError: 'cubin'"}})
    "fwd_kernel: KeyError: 'cubin'"
    >>> report.print_offline(report.offline_report(variants=False, only="3-D"), 90)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from collections import Counter

import torch

from ... import config
from ...spec import make_neighborhood_spec
from .configs import CONFIGS, VARIANTS

_SM90 = dict(regs=65536, shared=233472, block_reserved=1024, threads=2048, programs=32)  # per multiprocessor


def kernel_report() -> dict:
    """The compiler's report (:func:`_resources`) of each kernel of the latest glocal launches; a kernel
    whose report cannot be read gets ``{"error": ...}`` (the timings never depend on it)."""
    from ...backends.triton import ops  # imports Triton

    report = {}
    for name, compiled in ops.last_compiled.items():
        try:
            report[name.strip("_")] = _resources(compiled, compiled.metadata.num_warps)
        except Exception as err:  # e.g. no cuobjdump beside this Triton
            report[name.strip("_")] = dict(error=f"{type(err).__name__}: {err}"[:200])
    return report


def _report_line(report: dict) -> str:
    """One line of a :func:`kernel_report`: each kernel's registers, spills, shared memory and instructions."""
    return "; ".join(f"{name}: {r['error']}" if "error" in r else
                     f"{name}: {r['regs']} regs, {'spills' if r['local_bytes'] + r['spill_ld_st'] else 'no spills'}, "
                     f"{r['shared_kb']:.0f} KB shared, {r['per_sm']} per SM, {r['wgmma']} HGMMA, {r['tma_loads']} TMA"
                     for name, r in report.items())


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
    from ...backends.triton import ops  # imports Triton

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
                    with config.triton_tiles(**opts):
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
    """The rows of :func:`offline_report` as a table."""
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
