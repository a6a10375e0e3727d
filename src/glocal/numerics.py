"""Numerical building blocks every layer shares: softmax with lse, the lse merge, one dense masked attention.

This is a leaf module (it imports nothing from glocal), so references, backends, ops and
analysis all compute these the same way.

Shapes:
    dense_attention: q [B, T_q, H_q, D], k [B, T_kv, H_kv, D], v [B, T_kv, H_kv, D_v],
        allowed [T_q, T_kv] or [B, 1 or H_q, T_q, T_kv] bool  ->  out [B, T_q, H_q, D_v], lse [B, T_q, H_q]
    merge_lse: outputs list of [..., D_v], lses list of [...]  ->  (out [..., D_v], lse [...])

Example:
    >>> import torch
    >>> from glocal.numerics import dense_attention
    >>> q = k = v = torch.randn(1, 5, 2, 8)
    >>> out, lse = dense_attention(q, k, v, 8 ** -0.5)
    >>> torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(
    ...     q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2), atol=1e-6)
    True
"""

from __future__ import annotations

import torch


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype glocal computes ``x`` in: float64 stays float64, everything else runs in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def lse_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of a returned lse: float64 for float64 inputs, else float32."""
    return compute_dtype(x)


def resolve_scale(scale, default: float) -> float:
    """``scale`` as a float, or the family's default when it is None (an explicit 0.0 is kept)."""
    return float(default) if scale is None else float(scale)


FEATURE_MAPS = ("elu1", "relu", "identity")


def feature_map(name_or_fn):
    """The callable behind a linear-attention feature-map name (``FEATURE_MAPS``), or the callable itself."""
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn == "elu1":
        return lambda x: torch.nn.functional.elu(x) + 1.0
    if name_or_fn == "relu":
        return torch.nn.functional.relu
    return lambda x: x


def safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with 0 where den == 0 (no key seen, or every score zeroed by relu); finite gradients."""
    zero = den == 0
    return (num / den.masked_fill(zero, 1.0)).masked_fill(zero, 0.0)


def softmax_with_lse(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last axis and its natural-log normaliser.

    A row with no attended key (all ``-inf``) gets probabilities 0 and lse
    ``-inf``, with finite gradients, instead of NaN.
    """
    if scores.shape[-1] == 0:  # no keys at all (e.g. T_kv = 0): amax cannot reduce an empty axis
        row_max = scores.new_zeros(*scores.shape[:-1], 1)
    else:
        row_max = scores.amax(-1, keepdim=True)
    row_max = torch.where(torch.isinf(row_max) & (row_max < 0), torch.zeros_like(row_max), row_max)
    e = torch.exp(scores - row_max)
    total = e.sum(-1, keepdim=True)
    empty = total == 0
    total_safe = torch.where(empty, torch.ones_like(total), total)
    lse = torch.where(empty, torch.full_like(total, -float("inf")), torch.log(total_safe) + row_max)
    return e / total_safe, lse.squeeze(-1)


def masked_softmax(scores: torch.Tensor, allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`softmax_with_lse` of ``scores`` with the entries where ``allowed`` is False left out."""
    if allowed is not None:
        scores = scores.masked_fill(~allowed, -float("inf"))
    return softmax_with_lse(scores)


def merge_lse(outputs, lses) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact merge of results over disjoint key sets: ``lse = logsumexp(lses)``, ``out = sum exp(lse_i - lse) out_i``.

    A query no part attended (every lse -inf) gets output 0 and lse -inf. Computed in float32
    (float64 for float64 outputs); returns the dtypes of ``outputs[0]`` and ``lses[0]``.
    """
    compute = compute_dtype(outputs[0])
    stacked = torch.stack([lse.to(compute) for lse in lses], dim=-1)
    weights, lse = softmax_with_lse(stacked)
    out = outputs[0].to(compute) * weights[..., 0, None]
    for i, o in enumerate(outputs[1:], 1):  # one fused multiply-add per part (sum() would add to 0 first)
        out.addcmul_(o.to(compute), weights[..., i, None])
    return out.to(outputs[0].dtype), lse.to(lses[0].dtype)


def repeat_kv(x: torch.Tensor, heads: int, dim: int = 2) -> torch.Tensor:
    """GQA: repeat the kv heads of ``x`` along ``dim`` to ``heads`` (query head h reads kv head h // group)."""
    group = heads // x.shape[dim]
    return x if group == 1 else x.repeat_interleave(group, dim=dim)


def dense_attention(q, k, v, scale: float, allowed=None, bias=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention from the full score matrix, with a key mask; heads-last, GQA.

    Shapes: q [B, T_q, H_q, D], k [B, T_kv, H_kv, D], v [B, T_kv, H_kv, D_v]; ``allowed`` (True =
    attended) and ``bias`` (added to the scaled scores) broadcast to [B, H_q, T_q, T_kv]; returns
    ``out [B, T_q, H_q, D_v]`` in q's dtype and ``lse [B, T_q, H_q]`` (float32, float64 for float64).

    Computed in float32 (float64 for float64). Memory O(T_q * T_kv) per batch and head: for
    references, tests and analysis. A query that attends nothing gets output 0 and lse -inf. A
    non-finite value reaches only the queries that attend it (0 * NaN is not allowed to leak).
    """
    compute = compute_dtype(q)
    hq = q.shape[2]
    qf, kf, vf = q.to(compute), repeat_kv(k.to(compute), hq), repeat_kv(v.to(compute), hq)
    scores = torch.einsum("bqhd,bkhd->bhqk", qf, kf) * scale
    if bias is not None:
        scores = scores + bias.to(compute)
    probs, lse = masked_softmax(scores, allowed)
    finite = torch.isfinite(vf)
    if bool(finite.all()):
        out = torch.einsum("bhqk,bkhd->bqhd", probs, vf)
    else:
        # The dense product multiplies every value, attended or not, and 0 * NaN = NaN would let a
        # NaN/inf value reach queries that never attend it. Multiply finite values only, then give
        # each output what its attended non-finite values make of a sum: +-inf, or NaN.
        out = torch.einsum("bhqk,bkhd->bqhd", probs, torch.where(finite, vf, torch.zeros_like(vf)))
        attended = torch.ones_like(probs, dtype=torch.bool) if allowed is None else \
            torch.broadcast_to(allowed, probs.shape)
        attended = attended.to(compute)

        def hits(bad):
            return torch.einsum("bhqk,bkhd->bqhd", attended, bad.to(compute)) > 0

        pos, neg, nan = hits(vf == float("inf")), hits(vf == -float("inf")), hits(torch.isnan(vf))
        out = torch.where(pos, float("inf"), out)
        out = torch.where(neg, -float("inf"), out)
        out = torch.where(nan | (pos & neg), float("nan"), out)
    return out.to(q.dtype), lse.permute(0, 2, 1)


def merge_extra_tokens(q, out, lse, additional_keys, additional_values, scale: float):
    """Add extra tokens to a neighborhood result: dense attention of every query over them, merged by lse.

    Shapes: q: [B, *grid, H_q, D]; out: [B, *grid, H_q, D_v]; lse: [B, *grid, H_q];
    additional_keys / additional_values: [B, S, H_kv, D] / [B, S, H_kv, D_v]. Returns (out, lse)
    of one softmax over the neighborhood and the extra tokens. The S extra tokens cost
    O(N·S) memory (one score matrix). Fast backends use this for their extra-token branch.
    """
    flat_q = q.flatten(1, -3)
    out_e, lse_e = dense_attention(flat_q, additional_keys, additional_values, scale)
    return merge_lse([out, out_e.reshape(out.shape).to(out.dtype)], [lse, lse_e.reshape(lse.shape)])
