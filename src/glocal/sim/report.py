"""Predicted next to measured: the model's speedup bounds for rows of ``glocal bench --json``.

Legend: per row, ``measured`` = the row's ``speedup_vs_dense`` (dense SDPA time / glocal time),
``predicted`` = :attr:`glocal.sim.Prediction.speedup_bound` of the row's problem under
:func:`glocal.sim.cpu_tiling`; ``spearman`` = rank correlation of the two over rows with both.

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
from .kernels import cpu_tiling
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


def _problem(row: dict) -> Problem:
    dtype = row.get("dtype") or "float32"
    if "spatial" in row and row.get("spatial") is not None:
        return Problem(tuple(row["spatial"]), int(row.get("heads", 4)), int(row.get("head_dim", 64)),
                       tuple(row["kernel_size"]), tuple(row["stride"]), tuple(row["dilation"]),
                       tuple(bool(c) for c in row["is_causal"]), dtype=dtype, batch=int(row.get("batch", 1)))
    return parse_config(row["config"], dtype=dtype)


def report(rows, hardware: Hardware | None = None, show: bool = True, file=None) -> Report:
    """Print measured speedups over dense next to the model's bounds (glocal's CPU tiling) and their Spearman
    rank correlation (to ``file``, default stdout; nothing with ``show=False``); returns the :class:`Report`.
    ``hardware=None`` reads the calibrated figures (:func:`glocal.sim.load_hardware`).

    Example:
        >>> rows = [{"config": "1d:4096,k64,h1,dim64", "speedup_vs_dense": 9.0},
        ...         {"config": "1d:4096,k16,h1,dim64", "speedup_vs_dense": 20.0}]
        >>> r = report(rows, Hardware(200.0, 20.0, "example"), show=False)
        >>> r.spearman
        1.0
    """
    checks.report_rows(rows)
    hardware = load_hardware() if hardware is None else hardware
    out = []
    for row in rows:
        problem = _problem(row)
        predicted = predict(problem, cpu_tiling(problem), hardware).speedup_bound
        measured = row.get("speedup_vs_dense")
        out.append((row["config"], None if measured is None else float(measured), predicted))
    pairs = [(m, p) for _, m, p in out if m is not None]
    result = Report(out, spearman([m for m, _ in pairs], [p for _, p in pairs]), hardware)
    if show:
        print(result.table(), file=file if file is not None else sys.stdout)
    return result
