"""Neighborhood attention in 1-D, 2-D and 3-D (DESIGN.md §1): ``neighborhood_attention``, ``na1d``, ``na2d``, ``na3d``.

Shapes: q, k, v [B, *spatial, H, D] (heads-last); see each function's docstring.

Example:
    >>> import torch, glocal
    >>> q = k = v = torch.randn(1, 16, 16, 2, 32)
    >>> glocal.na2d(q, k, v, kernel_size=5, dilation=2).shape
    torch.Size([1, 16, 16, 2, 32])
"""

from __future__ import annotations

from .. import checks
from ..backends import choose_backend
from ..numerics import resolve_scale
from ..spec import make_neighborhood_spec

_NA_DOC = """{summary}

    Shapes:
        q: [B, {grid}, H_q, D_qk]     k: [B, {grid}, H_kv, D_qk]     v: [B, {grid}, H_kv, D_v]
        additional_keys: [B, S, H_kv, D_qk]   additional_values: [B, S, H_kv, D_v]
        out: [B, {grid}, H_q, D_v]      lse: [B, {grid}, H_q] (float32; float64 for float64 inputs)
        H_q must be a multiple of H_kv (GQA/MQA: query head h reads kv head h // (H_q // H_kv)).

    Args:
        kernel_size, stride, dilation: int, or one int per spatial axis.
            Valid when 1 <= K, K * d <= L and 1 <= s <= K on every axis.
        is_causal: bool, or one bool per axis. A causal axis never attends a later key.
        scale: softmax scale; None means D_qk ** -0.5 (an explicit 0.0 is honoured).
        additional_keys, additional_values: extra tokens every query attends, never masked;
            the result is one softmax over the neighborhood and the extra tokens.
        return_lse: also return the natural-log sum of exp(scale * q.k) over the attended keys.
        backend: None chooses the fastest that can run; or name one of glocal.backends.available().

    Each query attends the K keys around it on every axis (the window shifts inward at
    borders, never truncated); see the README's "Semantics" section or DESIGN.md §1.

    Example:
        >>> import torch, glocal
        >>> q = k = v = torch.randn({example_shape})
        >>> glocal.{name}(q, k, v, kernel_size={example_k}).shape
        torch.Size({example_list})
    """


def _neighborhood(ndim, q, k, v, kernel_size, stride, dilation, is_causal, scale,
                  additional_keys, additional_values, return_lse, backend):
    ndim = checks.neighborhood_tensors(q, k, v, ndim)
    checks.additional_kv(q, k, v, additional_keys, additional_values)
    checks.scale(scale)
    spec = make_neighborhood_spec(tuple(q.shape[1:-2]), kernel_size, stride, dilation, is_causal)
    scale = resolve_scale(scale, q.shape[-1] ** -0.5)
    tensors = {"q": q, "k": k, "v": v, "additional_keys": additional_keys, "additional_values": additional_values}
    out, lse = choose_backend(spec, tensors, backend).run(spec, tensors, scale)
    return (out, lse) if return_lse else out


def neighborhood_attention(q, k, v, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
                           additional_keys=None, additional_values=None, return_lse=False, backend=None):
    return _neighborhood(None, q, k, v, kernel_size, stride, dilation, is_causal, scale,
                         additional_keys, additional_values, return_lse, backend)


def na1d(q, k, v, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
         additional_keys=None, additional_values=None, return_lse=False, backend=None):
    return _neighborhood(1, q, k, v, kernel_size, stride, dilation, is_causal, scale,
                         additional_keys, additional_values, return_lse, backend)


def na2d(q, k, v, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
         additional_keys=None, additional_values=None, return_lse=False, backend=None):
    return _neighborhood(2, q, k, v, kernel_size, stride, dilation, is_causal, scale,
                         additional_keys, additional_values, return_lse, backend)


def na3d(q, k, v, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
         additional_keys=None, additional_values=None, return_lse=False, backend=None):
    return _neighborhood(3, q, k, v, kernel_size, stride, dilation, is_causal, scale,
                         additional_keys, additional_values, return_lse, backend)


neighborhood_attention.__doc__ = _NA_DOC.format(
    summary="Neighborhood attention on a 1-D, 2-D or 3-D grid (the rank of q decides).",
    grid="*spatial", name="neighborhood_attention", example_shape="1, 16, 16, 2, 32", example_k=5,
    example_list="[1, 16, 16, 2, 32]")
na1d.__doc__ = _NA_DOC.format(
    summary="1-D neighborhood (sliding-window) attention.", grid="X", name="na1d",
    example_shape="1, 64, 2, 32", example_k=7, example_list="[1, 64, 2, 32]")
na2d.__doc__ = _NA_DOC.format(
    summary="2-D neighborhood attention.", grid="X, Y", name="na2d",
    example_shape="1, 16, 16, 2, 32", example_k=5, example_list="[1, 16, 16, 2, 32]")
na3d.__doc__ = _NA_DOC.format(
    summary="3-D neighborhood attention.", grid="X, Y, Z", name="na3d",
    example_shape="1, 4, 8, 8, 2, 32", example_k="(3, 5, 5)", example_list="[1, 4, 8, 8, 2, 32]")
