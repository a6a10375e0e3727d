"""Global context without quadratic cost: global tokens, compressed keys/values, channel attention.

Shapes (heads-last, grids of 1 to 3 spatial axes):
    q: [B, *spatial_q, H_q, D_k]   k: [B, *spatial_kv, H_kv, D_k]   v: [B, *spatial_kv, H_kv, D_v]

- global_token_attention: every token attends its K-neighborhood plus G global tokens (one
  softmax over the union); the global tokens' queries attend every token (GC ViT, Longformer).
  It combines the neighborhood family (with extra keys/values) and the dense family.
- compressed_attention: keys and values average-pooled by a factor per axis, then full
  attention over them (PVT's spatial-reduction attention, UltraGen's global branch).
- channel_attention: attention across the channels of a head instead of across tokens, linear
  in the number of tokens (XCiT's cross-covariance attention, DaViT's channel attention); its
  own family.

Each op's dense oracle is in ``glocal.backends.reference`` (``global_tokens``, ``channel``).

Example:
    >>> import torch, glocal
    >>> x = torch.randn(1, 16, 16, 2, 32)
    >>> glocal.compressed_attention(x, x, x, reduction=4).shape
    torch.Size([1, 16, 16, 2, 32])
"""

from __future__ import annotations

import math

import torch

from .. import checks
from ..backends import choose_backend
from ..masks import pool_tokens
from ..numerics import resolve_scale
from ..spec import ChannelSpec
from .dense import attention
from .neighborhood import neighborhood_attention

GLOBAL_TOKEN_PATTERNS = ("non-causal self", "causal self")
COMPRESSED_PATTERNS = ("non-causal self", "non-causal cross")
CHANNEL_PATTERNS = ("non-causal self",)


def _is_cross(q, k) -> bool:
    """Whether queries and keys live on different grids (checks q and k are tensors first)."""
    checks.is_tensor("q", q)
    checks.is_tensor("k", k)
    return tuple(q.shape[1:-2]) != tuple(k.shape[1:-2])


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
        global_k, global_v = pool_tokens(k, pool).flatten(1, -3), pool_tokens(v, pool).flatten(1, -3)
        if global_q is None:
            global_q = pool_tokens(q, pool).flatten(1, -3)
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
    ``scale=None`` means D_k ** -0.5; ``backend`` goes to the neighborhood and the dense parts.

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
    keys = torch.cat([k.flatten(1, -3), global_k], dim=1)
    values = torch.cat([v.flatten(1, -3), global_v], dim=1)
    return out, attention(global_q, keys, values, scale=scale, backend=backend)


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
    ``scale=None`` means D_k ** -0.5; ``backend`` goes to the dense attention over the pooled tokens.

    Example:
        >>> import torch, glocal
        >>> x = torch.randn(1, 16, 16, 2, 32)
        >>> glocal.compressed_attention(x, x, x, reduction=4).shape
        torch.Size([1, 16, 16, 2, 32])
    """
    factors = _compressed_inputs(q, k, v, reduction, is_causal, scale)
    kp, vp = pool_tokens(k, factors).flatten(1, -3), pool_tokens(v, factors).flatten(1, -3)
    out = attention(q.flatten(1, -3), kp, vp, scale=scale, backend=backend)
    return out.reshape(*q.shape[:-1], v.shape[-1])


# ---------------------------------------------------------------------------------------------
# Channel attention.
# ---------------------------------------------------------------------------------------------


def _channel_inputs(q, k, v, is_causal, scale):
    checks.channel_tensors(q, k, v)
    is_cross = tuple(q.shape[1:-2]) != tuple(k.shape[1:-2])
    checks.pattern_supported("channel_attention", is_causal, is_cross, CHANNEL_PATTERNS)
    checks.scale(scale, "N ** -0.5, N the number of tokens")
    return resolve_scale(scale, math.prod(q.shape[1:-2]) ** -0.5)


def channel_attention(q, k, v, scale=None, is_causal=False, backend=None):
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
    spec = ChannelSpec()
    tensors = {"q": q, "k": k, "v": v}
    return choose_backend(spec, tensors, backend).run(spec, tensors, scale)[0]
