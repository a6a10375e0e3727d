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

import torch

NAME = "triton"


def interpreting() -> bool:
    """Whether Triton's interpreter is switched on (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 256


def tensor_reasons(q, k, v) -> list[str]:
    """What both families' kernels refuse in q, k, v (device, dtype, head dims, 32-bit offsets); empty: none."""
    reasons = []
    if q.device.type != "cuda" and not interpreting():
        reasons.append(f"triton needs CUDA tensors (got device {q.device.type!r}); "
                       "set TRITON_INTERPRET=1 to run its kernels on the CPU through the interpreter")
    if q.dtype not in _DTYPES:
        reasons.append(f"triton runs float16, bfloat16 and float32 (as TF32), not {q.dtype}")
    elif q.dtype == torch.bfloat16 and q.device.type != "cuda" and interpreting():
        # Seen with Triton 3.6 and 3.9: the interpreter's bfloat16 tl.dot returns garbage.
        reasons.append("Triton's interpreter (TRITON_INTERPRET=1) computes bfloat16 matrix products wrongly; "
                       "run bfloat16 on a GPU, or pass float16 or float32 tensors to the interpreter")
    for name, x in (("q", q), ("k", k), ("v", v)):
        width = x.shape[-1]
        if width == 0 or width > _MAX_HEAD_DIM or width % 8 != 0:
            reasons.append(f"triton takes head dims that are multiples of 8 up to {_MAX_HEAD_DIM}; "
                           f"got {name}.shape[-1]={width}")
            break
    per_batch = max(x[0].numel() for x in (q, k, v)) if q.shape[0] else 0
    if per_batch >= 2**31:
        reasons.append(f"triton indexes one batch entry with 32-bit offsets; got {per_batch} elements per "
                       "entry; split the batch or the heads")
    return reasons


def describe() -> str:
    if not triton_installed():
        return "triton: not installed (pip install glocal[triton])"
    import triton  # noqa: F401  # describe() is called by `glocal info` only

    where = "CUDA" + (" and CPU (TRITON_INTERPRET=1)" if interpreting() else "")
    return f"triton {triton.__version__}: fused neighborhood and MoBA kernels on {where}; fp16/bf16, fp32 via TF32"
