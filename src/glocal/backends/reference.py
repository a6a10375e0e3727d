"""Reference backend: exact, readable PyTorch; the oracle every other backend is tested against.

It materialises the boolean mask and the scores of every query against every
key, so it needs O(N_q · N_kv) memory per batch and head (N = tokens): for a
64x64 grid with 4 heads that is 4 · 4096² · 4 bytes = 268 MB. It runs on any
device and dtype (half precisions are computed in float32, float64 in float64)
and is differentiable through ordinary autograd.
"""

from __future__ import annotations

import torch

from ..masks import dense_mask
from ..spec import AttentionSpec, NeighborhoodSpec

NAME = "reference"


def can_run(spec, tensors: dict) -> list[str]:
    if not isinstance(spec, (NeighborhoodSpec, AttentionSpec)):
        return [f"reference does not implement {type(spec).__name__}"]
    return []


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


def run(spec, q, k, v, scale: float, additional_keys=None, additional_values=None):
    """``q: [B, *grid, H_q, D]`` (or ``[B, T_q, H_q, D]``) → ``(out [B, *grid, H_q, D_v], lse [B, *grid, H_q])``."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    hq, hkv = q.shape[-2], k.shape[-2]
    # flatten, not reshape(batch, -1, ...): the token count must stay known when the batch is empty.
    qf = q.flatten(1, -3).to(compute)
    kf = k.flatten(1, -3).to(compute)
    vf = v.flatten(1, -3).to(compute)
    mask = dense_mask(spec, device=q.device)
    if additional_keys is not None:
        kf = torch.cat([kf, additional_keys.to(compute)], dim=1)
        vf = torch.cat([vf, additional_values.to(compute)], dim=1)
        extra = torch.ones(mask.shape[0], additional_keys.shape[1], dtype=torch.bool, device=q.device)
        mask = torch.cat([mask, extra], dim=1)
    # GQA: query head h reads kv head h // (H_q / H_kv).
    kf = kf.repeat_interleave(hq // hkv, dim=2)
    vf = vf.repeat_interleave(hq // hkv, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", qf, kf) * scale
    scores = scores.masked_fill(~mask, -float("inf"))
    probs, lse = softmax_with_lse(scores)
    finite = torch.isfinite(vf)
    if bool(finite.all()):
        out = torch.einsum("bhqk,bkhd->bqhd", probs, vf)
    else:
        # The dense product multiplies every value, attended or not, and 0 · NaN = NaN would let a
        # NaN/inf value reach queries that never attend it. Multiply finite values only, then give
        # each output what its attended non-finite values make of a sum: +-inf, or NaN.
        out = torch.einsum("bhqk,bkhd->bqhd", probs, torch.where(finite, vf, torch.zeros_like(vf)))
        attended = mask.to(compute)

        def hits(bad):
            return torch.einsum("qk,bkhd->bqhd", attended, bad.to(compute)) > 0

        pos, neg, nan = hits(vf == float("inf")), hits(vf == -float("inf")), hits(torch.isnan(vf))
        out = torch.where(pos, float("inf"), out)
        out = torch.where(neg, -float("inf"), out)
        out = torch.where(nan | (pos & neg), float("nan"), out)
    out = out.reshape(*q.shape[:-1], v.shape[-1]).to(q.dtype)
    lse = lse.permute(0, 2, 1).reshape(q.shape[:-1])
    return out, lse


def merge_extra_tokens(q, out, lse, additional_keys, additional_values, scale: float):
    """Add the extra tokens to a neighborhood result: dense attention of every query over them, merged by lse.

    Shapes: q: [B, *grid, H_q, D]; out: [B, *grid, H_q, D_v]; lse: [B, *grid, H_q];
    additional_keys / additional_values: [B, S, H_kv, D] / [B, S, H_kv, D_v]. Returns (out, lse)
    of one softmax over the neighborhood and the extra tokens. The S extra tokens cost
    O(N·S) memory (one score matrix). Fast backends use this for their extra-token branch.
    """
    from ..functional import merge_attentions

    flat_q = q.flatten(1, -3)
    spec = AttentionSpec(flat_q.shape[1], additional_keys.shape[1], False)
    out_e, lse_e = run(spec, flat_q, additional_keys, additional_values, scale)
    merged, merged_lse = merge_attentions([out, out_e.reshape(out.shape).to(out.dtype)], [lse, lse_e.reshape(lse.shape)])
    return merged, merged_lse
