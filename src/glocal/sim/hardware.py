"""Measuring a machine's peak matmul rate and memory bandwidth once, saving and reading the figures.

Legend: ``peak_gflops`` = 2·n³ / seconds of the best of several ``n x n`` float32 matmuls;
``bandwidth_gbs`` = 2·bytes / seconds of the best of several copies of a large tensor (read + write).

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "hw.json")
    >>> _ = save_hardware(Hardware(200.0, 20.0, "example"), path)
    >>> load_hardware(path)
    Hardware(peak_gflops=200.0, bandwidth_gbs=20.0, name='example')
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from ..checks import sim as checks
from .model import Hardware

DEFAULT_PATH = "~/.cache/glocal/hardware.json"


def default_path() -> Path:
    """Where calibrated figures live: ``$GLOCAL_HARDWARE`` if set, else ``~/.cache/glocal/hardware.json``."""
    return Path(os.environ.get("GLOCAL_HARDWARE") or DEFAULT_PATH).expanduser()


def _machine_name(device: str) -> str:
    if device != "cpu":
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
            else:
                model = platform.processor() or platform.machine()
    except OSError:
        model = platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} threads"


def _best_seconds(fn, repeats: int, sync) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def calibrate(repeats: int = 5, size: int = 1024, copy_bytes: int = 1 << 27, device: str = "cpu") -> Hardware:
    """Measure this machine: the best of ``repeats`` float32 ``size``² matmuls and of ``repeats`` copies of
    ``copy_bytes`` (choose it well above the last-level cache). Takes about a second on a CPU.

    Example:
        >>> hw = calibrate(repeats=2, size=128, copy_bytes=1 << 20)
        >>> hw.peak_gflops > 0 and hw.bandwidth_gbs > 0
        True
    """
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    c = torch.empty(size, size, device=device)
    mm = _best_seconds(lambda: torch.mm(a, b, out=c), repeats, sync)
    src = torch.ones(max(1, copy_bytes // 4), device=device)
    dst = torch.empty_like(src)
    cp = _best_seconds(lambda: dst.copy_(src), repeats, sync)
    return Hardware(2 * size ** 3 / mm / 1e9, 2 * src.numel() * 4 / cp / 1e9, _machine_name(device))


def save_hardware(hardware: Hardware, path=None) -> Path:
    """Write ``hardware`` as JSON to ``path`` (default :func:`default_path`), creating its folder."""
    path = Path(path).expanduser() if path is not None else default_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dict(name=hardware.name, peak_gflops=hardware.peak_gflops, bandwidth_gbs=hardware.bandwidth_gbs,
                measured=time.strftime("%Y-%m-%dT%H:%M:%S"), torch=torch.__version__)
    path.write_text(json.dumps(data, indent=2))
    return path


def load_hardware(path=None) -> Hardware:
    """Read figures written by :func:`save_hardware` (default :func:`default_path`); an error if absent."""
    path = Path(path).expanduser() if path is not None else default_path()
    checks.hardware_file(path, path.is_file())
    data = json.loads(path.read_text())
    checks.hardware_json(path, data)
    return Hardware(float(data["peak_gflops"]), float(data["bandwidth_gbs"]), str(data.get("name", "")))
