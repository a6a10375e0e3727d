"""Global context without quadratic cost: global tokens, compressed keys/values, channel attention.

Shapes (heads-last, grids of 1 to 3 spatial axes):
    q: [B, *spatial_q, H_q, D_k]   k: [B, *spatial_kv, H_kv, D_k]   v: [B, *spatial_kv, H_kv, D_v]

- global_token_attention: every token attends its K-neighborhood plus G global tokens (one
  softmax over the union); the global tokens' queries attend every token (GC ViT, Longformer).
- compressed_attention: keys and values average-pooled by a factor per axis, then full
  attention over them (PVT's spatial-reduction attention, UltraGen's global branch).
- channel_attention: attention across the channels of a head instead of across tokens, linear
  in the number of tokens (XCiT's cross-covariance attention, DaViT's channel attention).

Each op has a ``*_reference`` beside it: the same result from dense scores and masks, for tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import checks
from .backends.reference import softmax_with_lse
from .functional import attention, neighborhood_attention
from .masks import dense_mask
from .spec import make_neighborhood_spec

GLOBAL_TOKEN_PATTERNS = ("non-causal self", "causal self")
COMPRESSED_PATTERNS = ("non-causal self", "non-causal cross")
CHANNEL_PATTERNS = ("non-causal self",)


def _compute_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _is_cross(q, k) -> bool:
    """Whether queries and keys live on different grids (checks q and k are tensors first)."""
    checks.is_tensor("q", q)
    checks.is_tensor("k", k)
    return tuple(q.shape[1:-2]) != tuple(k.shape[1:-2])


def _flatten(x):
    """[B, *spatial, H, D] -> [B, N, H, D] (row-major tokens)."""
    return x.reshape(x.shape[0], -1, x.shape[-2], x.shape[-1])


def pool_tokens(x, factors):
    """Average-pool a heads-last grid by ``factors`` per axis; a partial window at the end averages what it holds.

    Shapes: x: [B, *spatial, H, D] -> [B, *ceil(spatial / factors), H, D]

    Example:
        >>> import torch, glocal.global_attention as ga
        >>> ga.pool_tokens(torch.randn(1, 10, 7, 2, 8), (4, 2)).shape
        torch.Size([1, 3, 4, 2, 8])
    """
    ndim = x.dim() - 3
    factors = checks.reduction(factors, ndim)
    batch, heads, dim = x.shape[0], x.shape[-2], x.shape[-1]
    # avg_pool wants channels first; with padding 0 and ceil_mode, a window past the end is
    # clipped and divided by the elements it covers (no zeros counted).
    channels = x.movedim((-2, -1), (1, 2)).reshape(batch, heads * dim, *x.shape[1:-2])
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[ndim - 1]
    pooled = pool(channels, factors, factors, ceil_mode=True)
    return pooled.reshape(batch, heads, dim, *pooled.shape[2:]).movedim((1, 2), (-2, -1))


def _pool_reference(x, factors):
    """pool_tokens by zero-padding each axis to a multiple of its factor and dividing by the count."""
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


# ---------------------------------------------------------------------------------------------
# Global tokens.
# ---------------------------------------------------------------------------------------------


def _global_inputs(q, k, v, global_k, global_v, global_q, pool, is_causal, return_global):
    checks.pattern_supported("global_token_attention", is_causal, _is_cross(q, k), GLOBAL_TOKEN_PATTERNS)
    checks.neighborhood_tensors(q, k, v, None)
    checks.global_tokens(q, k, v, global_q, global_k, global_v, pool)
    if pool is not None:
        # Pooled tokens summarise the whole input, so in a causal sequence they would leak the future.
        checks.pattern_supported("global_token_attention with pooled global tokens", is_causal, False,
                                 ("non-causal self",))
        global_k, global_v = _flatten(pool_tokens(k, pool)), _flatten(pool_tokens(v, pool))
        if global_q is None:
            global_q = _flatten(pool_tokens(q, pool))
    checks.global_queries(return_global, global_q)
    return global_k, global_v, global_q


def global_token_attention(q, k, v, kernel_size, global_k=None, global_v=None, global_q=None, pool=None,
                           dilation=1, is_causal=False, scale=None, return_global=False, backend=None):
    """Neighborhood attention plus G global tokens that every token attends and that attend every token.

    Shapes:
        q: [B, *spatial, H_q, D_k]   k: [B, *spatial, H_kv, D_k]   v: [B, *spatial, H_kv, D_v]
        global_k: [B, G, H_kv, D_k]  global_v: [B, G, H_kv, D_v]  global_q: [B, G, H_q, D_k] (optional)
        out: [B, *spatial, H_q, D_v]      global_out (return_global=True): [B, G, H_q, D_v]

    Every token's output is one softmax over its K-neighborhood (kernel_size, dilation, is_causal
    as glocal.neighborhood_attention) and the G global keys, exact, through neighborhood attention
    with extra keys/values. Global query g attends all N tokens and all G global tokens, one
    softmax (Longformer's symmetric global attention; GC ViT's global queries). The global tokens
    come from ``global_k``/``global_v`` (learned, or projected from learned embeddings) or, with
    ``pool`` (an int or one factor per axis), from average-pooling k, v (and q for the global
    queries) over windows of that size, as GC ViT's global token generator does.

    Patterns: non-causal self and causal self (is_causal, a bool, makes every axis causal) on
    1-, 2-, 3-D grids; in causal self the given global tokens are prefix tokens every position
    may read. Cross patterns raise (the neighborhood
    needs queries and keys on one grid), as do pooled tokens with is_causal (they see the future).

    Example:
        >>> import torch, glocal
        >>> x = torch.randn(1, 8, 8, 2, 16); g = torch.randn(1, 4, 2, 16)
        >>> glocal.global_token_attention(x, x, x, 3, global_k=g, global_v=g).shape
        torch.Size([1, 8, 8, 2, 16])
    """
    global_k, global_v, global_q = _global_inputs(q, k, v, global_k, global_v, global_q, pool, is_causal,
                                                  return_global)
    out = neighborhood_attention(q, k, v, kernel_size, dilation=dilation, is_causal=is_causal, scale=scale,
                                 additional_keys=global_k, additional_values=global_v, backend=backend)
    if not return_global:
        return out
    keys = torch.cat([_flatten(k), global_k], dim=1)
    values = torch.cat([_flatten(v), global_v], dim=1)
    return out, attention(global_q, keys, values, scale=scale, backend=backend)


def global_token_attention_reference(q, k, v, kernel_size, global_k=None, global_v=None, global_q=None, pool=None,
                                     dilation=1, is_causal=False, scale=None, return_global=False):
    """Dense reference of :func:`global_token_attention`: one masked score matrix over tokens and globals.

    Example:
        >>> import torch, glocal.global_attention as ga
        >>> x = torch.randn(1, 12, 2, 8); g = torch.randn(1, 2, 2, 8)
        >>> ga.global_token_attention_reference(x, x, x, 3, global_k=g, global_v=g).shape
        torch.Size([1, 12, 2, 8])
    """
    if pool is not None:
        global_k, global_v = _flatten(_pool_reference(k, pool)), _flatten(_pool_reference(v, pool))
        global_q = _flatten(_pool_reference(q, pool)) if global_q is None else global_q
    compute = _compute_dtype(q)
    spec = make_neighborhood_spec(tuple(q.shape[1:-2]), kernel_size, 1, dilation, is_causal)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    hq, hkv = q.shape[-2], k.shape[-2]
    n, g = spec.num_tokens, global_k.shape[1]
    qs = torch.cat([_flatten(q)] + ([global_q] if global_q is not None else []), dim=1).to(compute)
    keys = torch.cat([_flatten(k), global_k], dim=1).to(compute).repeat_interleave(hq // hkv, dim=2)
    values = torch.cat([_flatten(v), global_v], dim=1).to(compute).repeat_interleave(hq // hkv, dim=2)
    mask = torch.ones(qs.shape[1], n + g, dtype=torch.bool, device=q.device)
    mask[:n, :n] = dense_mask(spec, device=q.device)
    scores = torch.einsum("bqhd,bkhd->bhqk", qs, keys) * scale
    probs, _ = softmax_with_lse(scores.masked_fill(~mask, -math.inf))
    out_all = torch.einsum("bhqk,bkhd->bqhd", probs, values).to(q.dtype)
    out = out_all[:, :n].reshape(*q.shape[:-1], v.shape[-1])
    return (out, out_all[:, n:]) if return_global else out


# ---------------------------------------------------------------------------------------------
# Spatially compressed global attention.
# ---------------------------------------------------------------------------------------------


def _compressed_inputs(q, k, v, reduction, is_causal, scale):
    checks.grid_tensors("compressed_attention", q, k, v)
    is_cross = tuple(q.shape[1:-2]) != tuple(k.shape[1:-2])
    checks.pattern_supported("compressed_attention", is_causal, is_cross, COMPRESSED_PATTERNS)
    checks.scale(scale)
    return checks.reduction(reduction, k.dim() - 3)


def compressed_attention(q, k, v, reduction, is_causal=False, scale=None, backend=None):
    """Full attention of every query over average-pooled keys and values (PVT spatial reduction).

    Shapes:
        q: [B, *spatial_q, H_q, D_k]   k: [B, *spatial_kv, H_kv, D_k]   v: [B, *spatial_kv, H_kv, D_v]
        out: [B, *spatial_q, H_q, D_v];  1-D, 2-D or 3-D grids; reduction: int or one factor per kv axis

    Keys and values are average-pooled over non-overlapping windows of ``reduction`` tokens per axis
    (a partial window at the end averages the tokens it holds), giving prod(ceil(L_i / r_i)) keys,
    and every query attends all of them (glocal.attention, scale as there). Cost
    O(N_q * N_kv / prod(r)). PVT ("Pyramid Vision Transformer", Wang et al. 2021) reduces with a
    strided convolution (see glocal.nn.global_modules.CompressedAttention, mode="conv");
    UltraGen's global branch pools. Patterns: non-causal self and non-causal cross (q may live on
    another grid than k, v); causal raises, since a pooled key mixes later tokens into it.

    Example:
        >>> import torch, glocal
        >>> x = torch.randn(1, 16, 16, 2, 32)
        >>> glocal.compressed_attention(x, x, x, reduction=4).shape
        torch.Size([1, 16, 16, 2, 32])
    """
    factors = _compressed_inputs(q, k, v, reduction, is_causal, scale)
    kp, vp = _flatten(pool_tokens(k, factors)), _flatten(pool_tokens(v, factors))
    out = attention(_flatten(q), kp, vp, scale=scale, backend=backend)
    return out.reshape(*q.shape[:-1], v.shape[-1])


def compressed_attention_reference(q, k, v, reduction, scale=None):
    """Reference of :func:`compressed_attention`: pooling by padding and counting, dense softmax.

    Example:
        >>> import torch, glocal.global_attention as ga
        >>> x = torch.randn(1, 10, 2, 8)
        >>> ga.compressed_attention_reference(x, x, x, reduction=3).shape
        torch.Size([1, 10, 2, 8])
    """
    compute = _compute_dtype(q)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    hq, hkv = q.shape[-2], k.shape[-2]
    kp = _flatten(_pool_reference(k.to(compute), reduction)).repeat_interleave(hq // hkv, dim=2)
    vp = _flatten(_pool_reference(v.to(compute), reduction)).repeat_interleave(hq // hkv, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", _flatten(q).to(compute), kp) * scale
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), vp)
    return out.reshape(*q.shape[:-1], v.shape[-1]).to(q.dtype)


# ---------------------------------------------------------------------------------------------
# Channel attention.
# ---------------------------------------------------------------------------------------------


def _channel_inputs(q, k, v, is_causal, scale):
    checks.channel_tensors(q, k, v)
    is_cross = tuple(q.shape[1:-2]) != tuple(k.shape[1:-2])
    checks.pattern_supported("channel_attention", is_causal, is_cross, CHANNEL_PATTERNS)
    checks.scale(scale)
    n = 1
    for length in q.shape[1:-2]:
        n *= length
    return n ** -0.5 if scale is None else float(scale)


def channel_attention(q, k, v, scale=None, is_causal=False):
    """Attention across the channels of each head ("transposed" attention), linear in tokens.

    Shapes:
        q: [B, *spatial, H_q, D_k]   k: [B, *spatial, H_kv, D_k]   v: [B, *spatial, H_kv, D_k]
        out: [B, *spatial, H_q, D_k]  (H_q a multiple of H_kv; v has k's head dim)

    Per head, channel i of q and channel j of k are compared over all N tokens,
    A_ij = softmax_j(scale * sum_n q[n, i] k[n, j]), and out[n, i] = sum_j A_ij v[n, j]:
    a D x D attention map, cost O(N * D^2) (XCiT, "Cross-Covariance Image Transformers",
    El-Nouby et al. 2021; DaViT's channel group attention, Ding et al. 2022). ``scale=None``
    means N ** -0.5 (the dot products run over the N tokens). XCiT L2-normalises q and k along
    the tokens and learns a per-head temperature: that is glocal.nn.global_modules.ChannelAttention.
    Supports non-causal self only: every channel summary reads every token.

    Example:
        >>> import torch, glocal
        >>> x = torch.randn(1, 14, 14, 4, 32)
        >>> glocal.channel_attention(x, x, x).shape
        torch.Size([1, 14, 14, 4, 32])
    """
    scale = _channel_inputs(q, k, v, is_causal, scale)
    compute = _compute_dtype(q)
    hkv = k.shape[-2]
    qf = _flatten(q).to(compute).unflatten(2, (hkv, -1))  # [B, N, H_kv, G, D]
    kf, vf = _flatten(k).to(compute), _flatten(v).to(compute)
    probs = (torch.einsum("bnhgi,bnhj->bhgij", qf, kf) * scale).softmax(-1)
    out = torch.einsum("bhgij,bnhj->bnhgi", probs, vf).flatten(2, 3)
    return out.reshape(q.shape).to(q.dtype)


def channel_attention_reference(q, k, v, scale=None):
    """Naive reference of :func:`channel_attention`: every channel pair's products materialised.

    Example:
        >>> import torch, glocal.global_attention as ga
        >>> x = torch.randn(1, 20, 2, 8)
        >>> ga.channel_attention_reference(x, x, x).shape
        torch.Size([1, 20, 2, 8])
    """
    compute = _compute_dtype(q)
    hq, hkv = q.shape[-2], k.shape[-2]
    qf = _flatten(q).to(compute)
    kf = _flatten(k).to(compute).repeat_interleave(hq // hkv, dim=2)
    vf = _flatten(v).to(compute).repeat_interleave(hq // hkv, dim=2)
    scale = qf.shape[1] ** -0.5 if scale is None else float(scale)
    products = qf[..., :, None] * kf[..., None, :]  # [B, N, H, D_i, D_j]
    probs = (products.sum(1) * scale).softmax(-1)  # [B, H, D_i, D_j]
    out = (probs[:, None] * vf[..., None, :]).sum(-1)  # [B, N, H, D_i]
    return out.reshape(q.shape).to(q.dtype)
