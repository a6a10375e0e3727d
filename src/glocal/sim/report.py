"""Predicted next to measured: the model's speedup bounds for rows of ``glocal bench --json``.

Legend: per row, ``measured`` = dense SDPA time / glocal time (a CPU bench row's ``speedup_vs_dense``;
a GPU suite row's ``sdpa_ms / glocal_ms``), ``predicted`` = :attr:`glocal.sim.Prediction.speedup_bound`
of the row's problem under the tiling of the kernel that ran it (:func:`glocal.sim.cpu_tiling` for
``glocal bench`` rows, :func:`glocal.sim.triton_tiling` for GPU suite rows, ``backend="triton"``);
``spearman`` = rank correlation of the two over rows with both.

Example:
    >>> spearman([1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0])
    0.8
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from ..checks import sim as checks
from .hardware import load_hardware
from .kernels import cpu_tiling, triton_tiling
from .model import Hardware, Problem, predict
from .parse import parse_config


def ranks(values) -> list[float]:
    """Ranks 1..n of ``values``, ties given the average of the ranks they span.

    Example:
        >>> ranks([3.0, 1.0, 3.0, 2.0])
        [3.5, 1.0, 3.5, 2.0]
    """
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            out[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x, y) -> float:
    """Spearman's rank correlation of ``x`` and ``y`` (Pearson's of their average ranks); NaN when a side is
    constant or there are fewer than two values."""
    if len(x) != len(y) or len(x) < 2:
        return float("nan")
    rx, ry = ranks(list(x)), ranks(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return float("nan")
    return sxy / math.sqrt(sxx * syy)


@dataclass(frozen=True)
class Report:
    """``rows``: ``(config, measured, predicted)`` per bench row (measured None where dense did not run);
    ``spearman`` over the rows with both; ``hardware``: the figures used."""

    rows: list
    spearman: float
    hardware: Hardware

    def table(self) -> str:
        lines = [("config", "measured x dense", "predicted x dense (bound)", "measured / predicted")]
        for config, measured, predicted in self.rows:
            ratio = "-" if measured is None else f"{measured / predicted:.2f}"
            lines.append((config, "-" if measured is None else f"{measured:.1f}", f"{predicted:.1f}", ratio))
        widths = [max(len(line[i]) for line in lines) for i in range(4)]
        out = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
               for line in lines]
        out.insert(1, "-" * len(out[0]))
        rho = "n/a (fewer than two rows, or a constant column)" if math.isnan(self.spearman) else f"{self.spearman:.3f}"
        out.append(f"Spearman rank correlation (measured vs predicted, {sum(m is not None for _, m, _ in self.rows)} "
                   f"rows): {rho}; hardware: {self.hardware.name or 'unnamed'} ({self.hardware.peak_gflops:.0f} "
                   f"GFLOP/s, {self.hardware.bandwidth_gbs:.1f} GB/s)")
        return "\n".join(out)


def _axes(value):
    """A JSON per-axis list as the tuple a Problem takes (an int or bool stays as it is)."""
    return tuple(value) if isinstance(value, list) else value


def _problem(row: dict) -> Problem:
    dtype = row.get("dtype") or "float32"
    if "spatial" in row and row.get("spatial") is not None:
        causal = _axes(row["is_causal"])
        return Problem(tuple(row["spatial"]), int(row.get("heads", 4)), int(row.get("head_dim", 64)),
                       _axes(row["kernel_size"]), _axes(row.get("stride", 1)), _axes(row.get("dilation", 1)),
                       tuple(map(bool, causal)) if isinstance(causal, tuple) else bool(causal), dtype=dtype,
                       batch=int(row.get("batch", 1)), backward=bool(row.get("backward", False)))
    return parse_config(row["config"], dtype=dtype)


def _measured(row: dict):
    """Dense time over glocal time: a CPU bench row's ``speedup_vs_dense``, a GPU row's ``sdpa_ms / glocal_ms``."""
    if "sdpa_ms" in row:
        ok = row.get("sdpa_ms") is not None and row.get("glocal_ms")
        return float(row["sdpa_ms"]) / float(row["glocal_ms"]) if ok else None
    return None if row.get("speedup_vs_dense") is None else float(row["speedup_vs_dense"])


def report(rows, hardware: Hardware | None = None, show: bool = True, file=None) -> Report:
    """Print measured speedups over dense next to the model's bounds (the tiling of the kernel that ran each
    row: CPU, or Triton for GPU suite rows) and their Spearman rank correlation (to ``file``, default stdout; nothing with ``show=False``); returns the :class:`Report`.
    ``hardware=None`` reads the calibrated figures (:func:`glocal.sim.load_hardware`). Rows that recorded an
    ``error`` (a config the GPU suite could not time) are left out.

    Example:
        >>> rows = [{"config": "1d:4096,k64,h1,dim64", "speedup_vs_dense": 9.0},
        ...         {"config": "1d:4096,k16,h1,dim64", "speedup_vs_dense": 20.0}]
        >>> r = report(rows, Hardware(200.0, 20.0, "example"), show=False)
        >>> r.spearman
        1.0
    """
    checks.report_rows([row for row in rows if not row.get("error")] if isinstance(rows, list) else rows)
    hardware = load_hardware() if hardware is None else hardware
    out = []
    for row in (row for row in rows if not row.get("error")):  # a config the GPU suite could not time
        problem = _problem(row)
        tiling = triton_tiling(problem) if row.get("backend") == "triton" else cpu_tiling(problem)
        out.append((row.get("config") or row["name"], _measured(row), predict(problem, tiling, hardware).speedup_bound))
    pairs = [(m, p) for _, m, p in out if m is not None]
    result = Report(out, spearman([m for m, _ in pairs], [p for _, p in pairs]), hardware)
    if show:
        print(result.table(), file=file if file is not None else sys.stdout)
    return result
