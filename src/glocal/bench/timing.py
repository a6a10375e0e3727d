"""Timing and memory helpers shared by every benchmark family.

A figure is the median of ``repeats`` timed calls after ``warmup`` untimed
ones, measured in the same process as its baseline (DESIGN.md §5).
"""

from __future__ import annotations

import gc
import os
import statistics
import time

import torch


def median_ms(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in milliseconds (device events on CUDA)."""
    for _ in range(warmup):
        fn()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_cpu_bytes(fn) -> int:
    """Peak bytes of tensors allocated by ``fn()`` on the CPU and live at once, beyond those live before it.

    PyTorch's CPU allocator is invisible to tracemalloc, so this replays the
    profiler's per-allocation ``[memory]`` records (positive on allocation,
    negative on free) in time order. Op-level "self" memory would charge a
    tensor freed inside a Python autograd Function to the Function at its
    start and hide the transient peak.
    """
    gc.collect()
    # torch 2.13's profiler logs every trace start and stop to stderr, through the progress bar; level 6
    # silences that (a level the caller set is kept).
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                     key=lambda e: e.start_ns())
    live = peak = 0
    for e in records:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def matmul_gflops(dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """Matmul rate (GFLOP/s) of a 1024² product in ``dtype`` on this CPU now: the best of the
    repeats, since a FLOP floor is what the hardware can do, not what a busy moment allows."""
    a = torch.randn(1024, 1024).to(dtype)
    b = torch.randn(1024, 1024).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(max(3, repeats)):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * 1024 ** 3 / best / 1e9


def interleaved_ms(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Median milliseconds of each callable, timed in turns (a, b, c, a, b, c, ...).

    On a shared machine the load drifts within seconds; taking turns makes every
    implementation see the same load, so their ratios hold even when the times do not.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def fmt(x, spec: str = ".1f") -> str:
    """A table cell: ``x`` formatted by ``spec``, or "-" for a figure that was not measured."""
    return "-" if x is None else format(x, spec)
