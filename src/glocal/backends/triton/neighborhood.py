"""Triton neighborhood attention: fused kernels for NVIDIA GPUs, forward and backward.

Shapes:
    q: [B, *spatial, H_q, D_qk]   k: [B, *spatial, H_kv, D_qk]   v: [B, *spatial, H_kv, D_v]
    additional_keys: [B, S, H_kv, D_qk]   additional_values: [B, S, H_kv, D_v]
    out: [B, *spatial, H_q, D_v]   lse: [B, *spatial, H_q] float32

Example:
    >>> import torch, glocal  # doctest: +SKIP
    >>> q = k = v = torch.randn(1, 64, 64, 4, 64, device="cuda", dtype=torch.bfloat16)  # doctest: +SKIP
    >>> glocal.na2d(q, k, v, kernel_size=7, backend="triton").shape  # doctest: +SKIP
    torch.Size([1, 64, 64, 4, 64])

Supports 1-D/2-D/3-D grids with any kernel size, stride, dilation and per-axis
causal flag, GQA/MQA, head dims 16..256 (a head dim that is not a power of
two is padded to the next one inside the kernel by masked loads), float16 and
bfloat16, and float32 through TF32 matrix products (inputs rounded to a 10-bit
mantissa: about 3e-3 relative error, like ``torch.backends.cuda.matmul.allow_tf32``).
Extra keys/values are attended by a dense branch and merged by lse.

Triton is imported only inside ``run`` (the kernels and their launch live in ``ops`` and
``kernels``). With ``TRITON_INTERPRET=1`` set before
Triton is first imported, the kernels also run on CPU tensors through Triton's
interpreter (slow; for tests).
"""

from __future__ import annotations

import torch

from ...spec import NeighborhoodSpec
from . import interpreting, triton_installed

NAME = "triton"

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 256


def can_run(spec, tensors: dict) -> list[str]:
    """Reasons this backend cannot run the problem (empty list: it can)."""
    if not isinstance(spec, NeighborhoodSpec):
        return [f"triton implements neighborhood attention only, not {type(spec).__name__}"]
    if not triton_installed():
        return ["triton is not installed: pip install glocal[triton]"]
    reasons = []
    q, k, v = tensors["q"], tensors["k"], tensors["v"]
    extra = [tensors.get("additional_keys"), tensors.get("additional_values")]
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
        if width > _MAX_HEAD_DIM or width % 8 != 0:
            reasons.append(f"triton takes head dims that are multiples of 8 up to {_MAX_HEAD_DIM}; "
                           f"got {name}.shape[-1]={width}")
            break
    per_batch = max(x[0].numel() for x in (q, k, v))
    if per_batch >= 2**31:
        reasons.append(f"triton indexes one batch entry with 32-bit offsets; got {per_batch} elements per "
                       "entry; split the batch or the heads")
    if any(x is not None and x.device != q.device for x in extra):
        reasons.append("additional keys/values must be on q's device")
    return reasons


def run(spec, tensors: dict, scale: float):
    """``(out [B, *spatial, H_q, D_v], lse [B, *spatial, H_q] float32)``; differentiable w.r.t. all inputs."""
    from .ops import neighborhood

    return neighborhood(spec, tensors["q"], tensors["k"], tensors["v"], scale, tensors.get("additional_keys"),
                        tensors.get("additional_values"))
