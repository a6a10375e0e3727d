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

from ...spec import NeighborhoodSpec
from . import tensor_reasons, triton_installed

NAME = "triton"


def can_run(spec, tensors: dict) -> list[str]:
    """Reasons this backend cannot run the problem (empty list: it can)."""
    if not isinstance(spec, NeighborhoodSpec):
        return [f"triton implements neighborhood attention only, not {type(spec).__name__}"]
    if not triton_installed():
        return ["triton is not installed: pip install glocal[triton]"]
    reasons = []
    q, k, v = tensors["q"], tensors["k"], tensors["v"]
    extra = [tensors.get("additional_keys"), tensors.get("additional_values")]
    reasons += tensor_reasons(q, k, v)
    if any(x is not None and x.device != q.device for x in extra):
        reasons.append("additional keys/values must be on q's device")
    return reasons


def run(spec, tensors: dict, scale: float):
    """``(out [B, *spatial, H_q, D_v], lse [B, *spatial, H_q] float32)``; differentiable w.r.t. all inputs."""
    from .ops import neighborhood

    return neighborhood(spec, tensors["q"], tensors["k"], tensors["v"], scale, tensors.get("additional_keys"),
                        tensors.get("additional_values"))
