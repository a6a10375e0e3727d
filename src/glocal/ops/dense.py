"""Full softmax attention over sequences (``attention``) and the exact merge of results (``merge_attentions``).

Shapes: q [B, T_q, H_q, D], k [B, T_kv, H_kv, D], v [B, T_kv, H_kv, D_v]; see each docstring.

Example:
    >>> import torch, glocal
    >>> x = torch.randn(2, 10, 4, 32)
    >>> glocal.attention(x, x, x, is_causal=True).shape
    torch.Size([2, 10, 4, 32])
"""

from __future__ import annotations

from .. import checks
from ..backends import choose_backend
from ..numerics import resolve_scale
from ..spec import AttentionSpec, MergeSpec


def attention(q, k, v, is_causal=False, scale=None, return_lse=False, backend=None):
    """Full softmax attention over sequences, self or cross.

    Shapes:
        q: [B, T_q, H_q, D_qk]   k: [B, T_kv, H_kv, D_qk]   v: [B, T_kv, H_kv, D_v]
        out: [B, T_q, H_q, D_v]  lse: [B, T_q, H_q] (float32; float64 for float64 inputs)

    Causal cross attention (T_q != T_kv) is aligned to the bottom-right corner, as
    FlashAttention and the CAB benchmark define it: query i sees key j iff
    j <= i + (T_kv - T_q). A query that sees no key (T_q > T_kv) gets output 0 and lse -inf.
    ``scale=None`` means D_qk ** -0.5 (an explicit 0.0 is honoured). ``backend``: None chooses
    the first that can run (on the CPU torch's fused flash kernel, the reference where it cannot run;
    on CUDA FlexAttention), or name one.

    Example:
        >>> import torch, glocal
        >>> q = torch.randn(2, 10, 4, 32); kv = torch.randn(2, 20, 4, 32)
        >>> glocal.attention(q, kv, kv, is_causal=True).shape
        torch.Size([2, 10, 4, 32])
    """
    checks.sequence_tensors(q, k, v)
    checks.causal_flag(is_causal)
    checks.scale(scale)
    spec = AttentionSpec(q.shape[1], k.shape[1], is_causal)
    scale = resolve_scale(scale, q.shape[-1] ** -0.5)
    tensors = {"q": q, "k": k, "v": v, "additional_keys": None, "additional_values": None}
    out, lse = choose_backend(spec, tensors, backend).run(spec, tensors, scale)
    return (out, lse) if return_lse else out


def merge_attentions(outputs, lses, backend=None):
    """Exact, differentiable merge of attention results over disjoint key sets.

    Shapes:
        outputs: list of [B, *, H, D_v]     lses: list of [B, *, H]
        returns (out [B, *, H, D_v], lse [B, *, H])

    ``lse = logsumexp(lses)`` and ``out = sum_i exp(lse_i - lse) * out_i``. A query
    that no part attended (all lse -inf) gets output 0 and lse -inf. There is no scale.

    Example:
        >>> import torch, glocal
        >>> q = torch.randn(1, 8, 2, 16); k = v = torch.randn(1, 12, 2, 16)
        >>> a = glocal.attention(q, k[:, :5], v[:, :5], return_lse=True)
        >>> b = glocal.attention(q, k[:, 5:], v[:, 5:], return_lse=True)
        >>> out, lse = glocal.merge_attentions([a[0], b[0]], [a[1], b[1]])
        >>> torch.allclose(out, glocal.attention(q, k, v), atol=1e-5)
        True
    """
    checks.merge_inputs(outputs, lses)
    spec = MergeSpec()
    tensors = {"outputs": list(outputs), "lses": list(lses)}
    return choose_backend(spec, tensors, backend).run(spec, tensors, 1.0)
