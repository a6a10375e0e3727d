"""Triton block-routed attention (MoBA) over sequences: fused kernels for NVIDIA GPUs, forward and backward.

Shapes:
    q: [B, T_q, H_q, D_qk]   k: [B, T_kv, H_kv, D_qk]   v: [B, T_kv, H_kv, D_v]
    selection: bool [B, H_q, T_q, n_blocks], n_blocks = ceil(T_kv / block_size)
    out: [B, T_q, H_q, D_v]   lse: [B, T_q, H_q] float32

Example:
    >>> import torch  # doctest: +SKIP
    >>> from glocal.spec import BlockSparseSpec  # doctest: +SKIP
    >>> q = k = v = torch.randn(1, 4096, 8, 128, device="cuda", dtype=torch.bfloat16)  # doctest: +SKIP
    >>> sel = torch.ones(1, 8, 4096, 8, dtype=torch.bool, device="cuda")  # doctest: +SKIP
    >>> spec = BlockSparseSpec(grid=(4096,), block_shape=(512,), q_len=4096, is_causal=True)  # doctest: +SKIP
    >>> out, lse = run(spec, {"q": q, "k": k, "v": v, "selection": sel}, 128 ** -0.5)  # doctest: +SKIP

Query i (position p_i = T_kv - T_q + i) of head h attends key y iff
``selection[b, h, i, y // block_size]`` and, when ``spec.is_causal``, ``y <= p_i``; one softmax
over those keys. A query that attends nothing gets output 0 and lse -inf. The kernels work for
any selection (they do not rely on each query picking its own block or on ``top_k``).

Supports 1-D grids (sequences) with any block size (the last block may be partial) and any
T_q <= T_kv (decoding-like queries at the end), causal or not, GQA/MQA, head dims that are
multiples of 8 up to 256 (padded to a power of two inside the kernels by masked loads), float16
and bfloat16, and float32 through TF32 matrix products (about 3e-3 relative error on a GPU).

Triton is imported only inside ``run`` (the kernels and their launch live in
``block_sparse_kernels`` and ``block_sparse_ops``). With ``TRITON_INTERPRET=1`` set before Triton
is first imported, the kernels also run on CPU tensors through Triton's interpreter (slow; for tests).
"""

from __future__ import annotations

import torch

from ...spec import BlockSparseSpec
from . import tensor_reasons, triton_installed

NAME = "triton"


def can_run(spec, tensors: dict) -> list[str]:
    """Reasons this backend cannot run the problem (empty list: it can)."""
    if not isinstance(spec, BlockSparseSpec):
        return [f"triton's block_sparse kernels take a BlockSparseSpec, not {type(spec).__name__}"]
    if not triton_installed():
        return ["triton is not installed: pip install glocal[triton]"]
    reasons = []
    q, k, v, selection = tensors["q"], tensors["k"], tensors["v"], tensors["selection"]
    if len(spec.grid) != 1:
        reasons.append(f"triton runs block-routed attention over sequences (1-D grids) only; got grid={spec.grid}; "
                       "use the cpu or reference backend for N-D grids (VMoBA)")
    reasons += tensor_reasons(q, k, v)
    if selection.dtype != torch.bool or selection.device != q.device:
        reasons.append(f"triton reads the selection as a bool tensor on q's device; got "
                       f"selection.dtype={selection.dtype}, selection.device={selection.device}, q.device={q.device}")
    return reasons


def run(spec, tensors: dict, scale: float):
    """``(out [B, T_q, H_q, D_v], lse [B, T_q, H_q] float32)``; differentiable w.r.t. q, k and v."""
    from .block_sparse_ops import moba

    return moba(spec, tensors["q"], tensors["k"], tensors["v"], tensors["selection"], scale)
