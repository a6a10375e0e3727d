"""Triton backend: fused GPU kernels per family (neighborhood and block-routed attention), imported lazily.

``import glocal`` never imports Triton: only a family module's ``run`` does. With
``TRITON_INTERPRET=1`` set before Triton is first imported, the kernels also run on CPU tensors
through Triton's interpreter (slow; for tests).

Example:
    >>> from glocal.backends import triton
    >>> triton.NAME
    'triton'
"""

from __future__ import annotations

import importlib.util
import os

NAME = "triton"


def interpreting() -> bool:
    """Whether Triton's interpreter is switched on (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def describe() -> str:
    if not triton_installed():
        return "triton: not installed (pip install glocal[triton])"
    import triton  # noqa: F401  # describe() is called by `glocal info` only

    where = "CUDA" + (" and CPU (TRITON_INTERPRET=1)" if interpreting() else "")
    return f"triton {triton.__version__}: fused neighborhood and MoBA kernels on {where}; fp16/bf16, fp32 via TF32"
