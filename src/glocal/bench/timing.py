"""Timing and memory helpers shared by every benchmark family.

A figure is the median of ``repeats`` timed calls after ``warmup`` untimed
ones, measured in the same process as its baseline (DESIGN.md §5).
"""

from __future__ import annotations

import gc
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
    """Peak bytes allocated by ``fn()`` on the CPU beyond what was live before it.

    PyTorch's CPU allocator is invisible to tracemalloc, so this uses the
    profiler's memory accounting of tensor allocations.
    """
    gc.collect()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    # Each allocation is charged to the innermost op ("self"); frees appear as "[memory]" events.
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage != 0), key=lambda e: e.time_range.start)
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak
