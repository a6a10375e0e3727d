"""Full attention on the CPU through torch's fused flash-attention kernel, forward and backward, lse included.

Shapes: q [B, T_q, H_q, D], k [B, T_kv, H_kv, D], v [B, T_kv, H_kv, D] (D_v == D) -> out [B, T_q, H_q, D],
lse [B, T_q, H_q] (float32; float64 for float64). No T_q x T_kv tensor is made: the kernel tiles the scores.

``aten::_scaled_dot_product_flash_attention_for_cpu`` returns the lse that ``F.scaled_dot_product_attention``
keeps to itself, and its backward takes it; glocal's merges need the lse and its gradient, so the pair runs
inside one autograd Function. Causal cross attention is aligned bottom-right (AttentionSpec): the kernel's
causal mask is top-left, so the keys before the last T_q are attended without a mask and merged, by lse, with
the last T_q keys attended causally. Grouped kv heads are repeated to the query heads before the kernel.

Example:
    >>> import torch
    >>> from glocal.backends.cpu import dense
    >>> from glocal.spec import AttentionSpec
    >>> q = k = v = torch.randn(1, 6, 2, 8)
    >>> out, lse = dense.run(AttentionSpec(6, 6, True), {"q": q, "k": k, "v": v}, 8 ** -0.5)
    >>> out.shape, lse.shape
    (torch.Size([1, 6, 2, 8]), torch.Size([1, 6, 2]))
"""

from __future__ import annotations

import functools

import torch

from ...numerics import dense_attention, merge_lse, repeat_kv
from ...spec import AttentionSpec

FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
FLASH_BACKWARD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
NAME = "cpu"
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def can_run(spec, tensors: dict) -> list[str]:
    if not isinstance(spec, AttentionSpec):
        return [f"cpu does not implement {type(spec).__name__} as dense attention"]
    q, v = tensors["q"], tensors["v"]
    reasons = []
    if FLASH is None or FLASH_BACKWARD is None:
        reasons.append("this torch build has no CPU flash-attention kernel")
    if q.device.type != "cpu":
        reasons.append(f"cpu runs dense attention on CPU tensors; got q.device={q.device}")
    if q.dtype not in _DTYPES:
        reasons.append(f"the CPU flash kernel takes float64/32/16 and bfloat16; got q.dtype={q.dtype}")
    if v.shape[-1] != q.shape[-1]:
        reasons.append(f"the CPU flash kernel needs D_v == D_qk; got D_qk={q.shape[-1]}, D_v={v.shape[-1]}")
    if tensors.get("additional_keys") is not None:
        reasons.append("cpu dense attention takes no additional keys")
    if spec.q_len == 0 or spec.kv_len == 0 or q.shape[0] == 0:
        reasons.append("an empty batch, query or key set (the reference gives its defined result)")
    if spec.is_causal and spec.q_len > spec.kv_len:
        reasons.append(f"causal with T_q={spec.q_len} > T_kv={spec.kv_len} leaves queries with no key")
    return reasons


def flash_backward(dout, q, k, v, out, lse, dlse, causal: bool, scale: float, bias=None):
    """(dq, dk, dv) of the flash kernel's attention from its out and lse, with a gradient ``dlse`` on the lse or None."""
    if dlse is None:
        return FLASH_BACKWARD(dout.contiguous(), q, k, v, out, lse, 0.0, causal, attn_mask=bias, scale=scale)
    # Fold the lse gradient into the kernel's delta = rowsum(dO * O): an extra channel with dO = 1 and
    # O = -dlse, and zero queries, keys and values there (the scores do not change).
    pad = functools.partial(torch.nn.functional.pad, pad=(0, 1))
    grads = FLASH_BACKWARD(torch.cat([dout, torch.ones_like(out[..., :1])], -1), pad(q), pad(k), pad(v),
                           torch.cat([out, -dlse[..., None].to(out.dtype)], -1), lse, 0.0, causal, attn_mask=bias,
                           scale=scale)
    return tuple(g[..., :-1] for g in grads)


class _Flash(torch.autograd.Function):
    """(out, lse) of the flash kernel on [B, H, T, D] tensors, differentiable in both (lse through dlse);
    ``bias`` (constant, [T_q, T_kv], -inf where a key is left out) is added to the scaled scores."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, scale: float, bias=None):
        out, lse = FLASH(q, k, v, 0.0, causal, attn_mask=bias, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale, ctx.bias = causal, scale, bias
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dout = torch.zeros_like(out) if dout is None else dout
        grads = flash_backward(dout, q, k, v, out, lse, dlse, ctx.causal, ctx.scale, ctx.bias)
        return grads[0], grads[1], grads[2], None, None, None


def _flash(q, k, v, causal: bool, scale: float, bias=None):
    """(out, lse) of the kernel; through the autograd Function only when a gradient is wanted (a decoding
    step calls this once per token, where the Function's bookkeeping costs as much as the kernel)."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _Flash.apply(q, k, v, causal, scale, bias)
    return FLASH(q, k, v, 0.0, causal, attn_mask=bias, scale=scale)[:2]


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def run(spec, tensors: dict, scale: float):
    q, k, v = tensors["q"], tensors["k"], tensors["v"]
    heads = q.shape[2]
    # The kernel reads rows of D contiguous channels; any other layout is copied first.
    qh, kh, vh = (_rows(t).transpose(1, 2) for t in (q, repeat_kv(k, heads), repeat_kv(v, heads)))
    prefix = spec.kv_len - spec.q_len
    if spec.is_causal and prefix > 0:
        before = _flash(qh, kh[:, :, :prefix], vh[:, :, :prefix], False, scale)
        last = _flash(qh, kh[:, :, prefix:], vh[:, :, prefix:], True, scale)
        out, lse = merge_lse([before[0], last[0]], [before[1], last[1]])
    else:
        out, lse = _flash(qh, kh, vh, spec.is_causal, scale)
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return out.transpose(1, 2), lse.transpose(1, 2).to(lse_dtype)


def masked_attention(q, k, v, scale: float, allowed: torch.Tensor):
    """(out, lse) of attention with a key mask shared by every batch and head, through the flash kernel.

    Shapes: q [B, T_q, H, D], k, v [B, T_kv, H, D] (one kv head per query head), allowed [T_q, T_kv] bool ->
    out [B, T_q, H, D], lse [B, T_q, H]. A query with no allowed key gets output 0 and lse -inf, as
    :func:`glocal.numerics.dense_attention` (which runs instead where the kernel cannot: not CPU, D_v != D).
    """
    if FLASH is None or q.device.type != "cpu" or v.shape[-1] != q.shape[-1] or q.dtype not in _DTYPES \
            or 0 in allowed.shape:
        return dense_attention(q, k, v, scale, allowed)
    empty = ~allowed.any(-1)
    # A row with no key would be NaN in the kernel: give it every key there, then zero it below.
    bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill_(~(allowed | empty[:, None]),
                                                                                   -float("inf"))
    qh, kh, vh = (_rows(t).transpose(1, 2) for t in (q, k, v))
    out, lse = _flash(qh, kh, vh, False, scale, bias)
    out, lse = out.transpose(1, 2), lse.transpose(1, 2)
    if bool(empty.any()):
        out = torch.where(empty[:, None, None], 0.0, out)
        lse = torch.where(empty[:, None], -float("inf"), lse)
    return out, lse.to(torch.float64 if q.dtype == torch.float64 else torch.float32)
