"""An independent brute-force oracle, written from the text of DESIGN.md §1.

It shares no code with glocal (no glocal.spec, no glocal.masks): each query's
key set is built per axis by following §1 sentence by sentence, the grid
neighborhood is their Cartesian product, and the output is one softmax over the
neighborhood plus the extra tokens, computed by a Python loop over queries.
Only for tiny grids (it is O(N · K) Python work).
"""

from __future__ import annotations

import itertools
import math

import torch


def axis_keys(x: int, length: int, kernel: int, stride: int, dilation: int, causal: bool) -> list[int]:
    """Key coordinates a query at coordinate ``x`` attends along one axis (§1, per axis)."""
    # Dilation: only keys of the query's group g = x mod d, in group coordinates.
    g = x % dilation
    xg = x // dilation
    group_len = math.ceil((length - g) / dilation)
    if causal:
        # The leader is the last query of the stride group; never a key after the query.
        lead = min((xg // stride) * stride + stride - 1, group_len - 1)
        first, last = max(0, lead - kernel + 1), xg
    else:
        left = kernel // 2
        right = kernel - 1 - left
        lead = min((xg // stride) * stride + stride // 2, group_len - 1)
        centre = max(left, min(lead, group_len - 1 - right))
        first, last = centre - left, centre + right
    return [y * dilation + g for y in range(first, last + 1)]


def key_set(coord, spatial, kernel, stride, dilation, causal) -> list[int]:
    """Row-major flat indices of the keys a query at grid ``coord`` attends (Cartesian product of axes)."""
    per_axis = [
        axis_keys(x, spatial[i], kernel[i], stride[i], dilation[i], causal[i]) for i, x in enumerate(coord)
    ]
    flat = []
    for key in itertools.product(*per_axis):
        index = 0
        for length, y in zip(spatial, key):
            index = index * length + y
        flat.append(index)
    return flat


def _attend(qrow, keys, values, scale, group):
    """One query token, all heads: ``qrow [B, H_q, D]``, ``keys [B, n, H_kv, D]``, ``values [B, n, H_kv, D_v]``."""
    head_of = torch.arange(qrow.shape[1]) // group  # query head h reads kv head h // (H_q / H_kv)
    keys = keys[:, :, head_of]
    values = values[:, :, head_of]
    scores = torch.einsum("bhd,bnhd->bhn", qrow, keys) * scale
    if scores.shape[-1] == 0:
        out = torch.zeros(qrow.shape[0], qrow.shape[1], values.shape[-1], dtype=qrow.dtype)
        return out, torch.full(qrow.shape[:2], -math.inf, dtype=qrow.dtype)
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse[..., None])
    return torch.einsum("bhn,bnhd->bhd", probs, values), lse


def neighborhood_attention(q, k, v, kernel, stride, dilation, causal, scale,
                           additional_keys=None, additional_values=None):
    """``q, k: [B, *spatial, H, D]``, ``v: [B, *spatial, H_kv, D_v]``; per-axis tuples. Returns ``(out, lse)``."""
    spatial = tuple(q.shape[1:-2])
    group = q.shape[-2] // k.shape[-2]
    qf, kf, vf = q.flatten(1, -3), k.flatten(1, -3), v.flatten(1, -3)
    outs, lses = [], []
    for n, coord in enumerate(itertools.product(*[range(length) for length in spatial])):
        idx = key_set(coord, spatial, kernel, stride, dilation, causal)
        keys, values = kf[:, idx], vf[:, idx]
        if additional_keys is not None:
            keys = torch.cat([keys, additional_keys], dim=1)
            values = torch.cat([values, additional_values], dim=1)
        out, lse = _attend(qf[:, n], keys, values, scale, group)
        outs.append(out)
        lses.append(lse)
    out = torch.stack(outs, dim=1).reshape(*q.shape[:-1], v.shape[-1])
    return out, torch.stack(lses, dim=1).reshape(q.shape[:-1])


def attention(q, k, v, is_causal, scale):
    """Dense attention ``q: [B, T_q, H, D]``; causal is bottom-right aligned: key j visible iff j <= i + T_kv - T_q."""
    t_q, t_kv = q.shape[1], k.shape[1]
    group = q.shape[-2] // k.shape[-2]
    outs, lses = [], []
    for i in range(t_q):
        idx = [j for j in range(t_kv) if not is_causal or j <= i + t_kv - t_q]
        out, lse = _attend(q[:, i], k[:, idx], v[:, idx], scale, group)
        outs.append(out)
        lses.append(lse)
    return torch.stack(outs, dim=1), torch.stack(lses, dim=1)


def dense_mask(spatial, kernel, stride, dilation, causal) -> torch.Tensor:
    """Boolean ``[N, N]``: row = query, column = key, from :func:`key_set`."""
    n = math.prod(spatial)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for row, coord in enumerate(itertools.product(*[range(length) for length in spatial])):
        mask[row, key_set(coord, spatial, kernel, stride, dilation, causal)] = True
    return mask


PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59)


def random_problem(rng, max_tokens: int = 60) -> dict:
    """A random valid neighborhood problem for seeded sweeps (``rng`` is a ``random.Random``).

    Lengths mix primes, exact fits (K·d = L) and arbitrary values; K odd or
    even, 1 <= s <= K, dilation 1 to 3, causal per axis, GQA/MQA, D_v != D_qk,
    extra keys/values and explicit scales. Grids stay at most ``max_tokens``
    tokens so the brute-force loop is quick.
    """
    ndim = rng.choices((1, 2, 3), weights=(4, 3.5, 2.5))[0]
    max_len = {1: max_tokens, 2: 10, 3: 5}[ndim]
    while True:
        spatial, kernel, dilation = [], [], []
        for _ in range(ndim):
            mode = rng.random()
            if mode < 0.3:  # exact fit K * d = L
                d = rng.choice((1, 1, 2, 3))
                k = rng.randint(1, max(1, max_len // d))
                length = k * d
            else:
                if mode < 0.55:
                    length = rng.choice([p for p in PRIMES if p <= max_len])
                else:
                    length = rng.randint(1, max_len)
                d = min(rng.choice((1, 1, 2, 3)), length)
                k = rng.randint(1, length // d)
            spatial.append(length)
            kernel.append(k)
            dilation.append(d)
        if math.prod(spatial) <= max_tokens:
            break
    stride = [rng.randint(1, k) for k in kernel]
    causal = [rng.random() < 0.35 for _ in range(ndim)]
    heads_kv = rng.choice((1, 2))
    extra = rng.randint(1, 3) if rng.random() < 0.35 else 0
    scale = rng.choice((None, None, 0.0, round(rng.uniform(0.1, 2.0), 3), round(rng.uniform(0.1, 2.0), 3)))
    return dict(
        spatial=tuple(spatial), kernel=tuple(kernel), stride=tuple(stride), dilation=tuple(dilation),
        causal=tuple(causal), batch=rng.choice((1, 2)), heads_q=heads_kv * rng.choice((1, 2, 3)),
        heads_kv=heads_kv, dim_qk=rng.randint(1, 6), dim_v=rng.randint(1, 6), extra=extra, scale=scale,
    )
