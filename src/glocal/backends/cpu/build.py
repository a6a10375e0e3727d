"""The compiled CPU kernels: one C++ extension (``kernels/*.cpp``) built on first use, or None.

Built with ``torch.utils.cpp_extension.load`` (needs a C++ compiler and ninja; about a minute the
first time, cached afterwards) with ``-march=native``, so the build is keyed by a hash of the
processor's model name. Any build failure is kept as a message and the callers fall back to
their pure-PyTorch paths.

Example:
    >>> from glocal.backends.cpu import build
    >>> build.kernels() is None or hasattr(build.kernels(), "forward_blocked")
    True
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

SOURCES = ("neighborhood.cpp", "block_sparse.cpp")
_build = {"module": None, "error": None, "tried": False}


def _processor_tag() -> str:
    """A short hash of this processor's model name, to key the -march=native build."""
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return hashlib.sha1(model.encode()).hexdigest()[:8]


def kernels():
    """The compiled extension module, building it on first call; None when it cannot be built."""
    if not _build["tried"]:
        _build["tried"] = True
        try:
            from torch.utils.cpp_extension import load

            folder = Path(__file__).parent / "kernels"
            _build["module"] = load(
                # -march=native code must not be shared between processor models through the build cache.
                name=f"glocal_cpu_kernels_{_processor_tag()}",
                sources=[str(folder / name) for name in SOURCES],
                # -fopenmp: ATen's parallel_for is an OpenMP pragma in a header, compiled here.
                extra_cflags=["-O3", "-march=native", "-fopenmp", "-fno-math-errno"],
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
        except Exception as err:  # any build failure (no compiler, no ninja, ...) falls back to PyTorch
            text = str(err).strip()
            _build["error"] = f"{type(err).__name__}: {text.splitlines()[-1] if text else ''}"
    return _build["module"]


def build_error() -> str | None:
    """Why the build failed (None if it did not, or was not tried)."""
    return _build["error"]
