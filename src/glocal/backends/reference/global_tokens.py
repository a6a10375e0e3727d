"""Oracles of the composite global ops: global-token and compressed attention from one dense score matrix.

These are not dispatched (the ops compose the neighborhood and dense families, which have their
own references); tests compare the ops with them. Pooling is computed independently of
:func:`glocal.masks.pool_tokens`: by zero-padding and counting.

Shapes: as :func:`glocal.global_token_attention` and :func:`glocal.compressed_attention`.

Example:
    >>> import torch
    >>> from glocal.backends.reference.global_tokens import compressed_attention_reference
    >>> x = torch.randn(1, 10, 2, 8)
    >>> compressed_attention_reference(x, x, x, reduction=3).shape
    torch.Size([1, 10, 2, 8])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import checks
from ...masks import dense_mask
from ...numerics import compute_dtype, dense_attention
from ...spec import make_neighborhood_spec


def pool_reference(x, factors):
    """Average pooling per axis by zero-padding each axis to a multiple of its factor and dividing by the count.

    Shapes: x [B, *spatial, H, D] -> [B, *ceil(spatial / factors), H, D]
    """
    ndim = x.dim() - 3
    factors = checks.reduction(factors, ndim)
    ones = torch.ones(x.shape[1:-2], dtype=x.dtype, device=x.device)
    pad = []
    for length, f in zip(reversed(x.shape[1:-2]), reversed(factors)):
        pad += [0, (-length) % f]
    xs = F.pad(x.movedim((-2, -1), (1, 2)), pad)
    counts = F.pad(ones, pad)
    for axis, f in enumerate(factors):
        xs = xs.unflatten(3 + 2 * axis, (-1, f))
        counts = counts.unflatten(2 * axis, (-1, f))
    sum_axes = tuple(4 + 2 * a for a in range(ndim))
    total = xs.sum(sum_axes)
    count = counts.sum(tuple(1 + 2 * a for a in range(ndim)))
    return (total / count).movedim((1, 2), (-2, -1))


def global_token_attention_reference(q, k, v, kernel_size, global_k=None, global_v=None, global_q=None, pool=None,
                                     dilation=1, is_causal=False, scale=None, return_global=False):
    """Dense reference of :func:`glocal.global_token_attention`: one masked score matrix over tokens and globals.

    Example:
        >>> import torch
        >>> x = torch.randn(1, 12, 2, 8); g = torch.randn(1, 2, 2, 8)
        >>> global_token_attention_reference(x, x, x, 3, global_k=g, global_v=g).shape
        torch.Size([1, 12, 2, 8])
    """
    flat = lambda x: x.flatten(1, -3)  # noqa: E731
    if pool is not None:
        global_k, global_v = flat(pool_reference(k, pool)), flat(pool_reference(v, pool))
        global_q = flat(pool_reference(q, pool)) if global_q is None else global_q
    spec = make_neighborhood_spec(tuple(q.shape[1:-2]), kernel_size, 1, dilation, is_causal)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    n, g = spec.num_tokens, global_k.shape[1]
    qs = torch.cat([flat(q)] + ([global_q] if global_q is not None else []), dim=1)
    keys = torch.cat([flat(k), global_k], dim=1)
    values = torch.cat([flat(v), global_v], dim=1)
    mask = torch.ones(qs.shape[1], n + g, dtype=torch.bool, device=q.device)
    mask[:n, :n] = dense_mask(spec, device=q.device)
    out_all, _ = dense_attention(qs, keys, values, scale, allowed=mask)
    out = out_all[:, :n].reshape(*q.shape[:-1], v.shape[-1])
    return (out, out_all[:, n:]) if return_global else out


def compressed_attention_reference(q, k, v, reduction, scale=None):
    """Reference of :func:`glocal.compressed_attention`: pooling by padding and counting, dense softmax.

    Example:
        >>> import torch
        >>> x = torch.randn(1, 10, 2, 8)
        >>> compressed_attention_reference(x, x, x, reduction=3).shape
        torch.Size([1, 10, 2, 8])
    """
    compute = compute_dtype(q)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    kp = pool_reference(k.to(compute), reduction).flatten(1, -3)
    vp = pool_reference(v.to(compute), reduction).flatten(1, -3)
    out, _ = dense_attention(q.flatten(1, -3).to(compute), kp, vp, scale)
    return out.reshape(*q.shape[:-1], v.shape[-1]).to(q.dtype)
