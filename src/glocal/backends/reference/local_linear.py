"""Reference of Parallax and Local Linear Attention: dense masked scores, the formulas as written, plain autograd.

For query i with attended keys J_i (glocal's 1-D neighborhood window, DESIGN.md §1):
    s_ij  = softmax_j(scale * q_i . k_j)                  over j in J_i
    mu_i  = sum_j s_ij k_j
    out_i = sum_j s_ij v_j (1 - r_i . (k_j - mu_i))
Parallax takes r from ``tensors["r"]``; Local Linear Attention (``spec.ridge`` a number) solves it:
    Sigma_i = sum_j s_ij (k_j - mu_i)(k_j - mu_i)^T,   r_i = (Sigma_i + ridge * I)^-1 (mu_i - q_i).
The window is the dense mask of ``make_neighborhood_spec((T,), K)`` with K = min(window_size, T)
(None: K = T): non-causal, K keys centred and shifted inward at the borders; causal, keys
max(0, i - K + 1) .. i. Memory O(T^2 * D) per batch and head: for tests.

Shapes:
    q, r: [B, T, H_q, D]   k: [B, T, H_kv, D]   v: [B, T, H_kv, D_v]
    returns (out [B, T, H_q, D_v], lse [B, T, H_q])

Example:
    >>> import torch
    >>> from glocal.backends.reference import local_linear
    >>> from glocal.spec import LocalLinearSpec
    >>> q = k = v = torch.randn(1, 6, 2, 8)
    >>> out, lse = local_linear.run(LocalLinearSpec(3), {"q": q, "r": 0 * q, "k": k, "v": v}, 8 ** -0.5)
    >>> out.shape, lse.shape
    (torch.Size([1, 6, 2, 8]), torch.Size([1, 6, 2]))
"""

from __future__ import annotations

import torch

from ...masks import dense_mask
from ...numerics import compute_dtype, masked_softmax, repeat_kv
from ...spec import LocalLinearSpec, make_neighborhood_spec

NAME = "reference"


def can_run(spec, tensors: dict) -> list[str]:
    if not isinstance(spec, LocalLinearSpec):
        return [f"reference does not implement {type(spec).__name__} as local linear attention"]
    return []


def window_mask(spec: LocalLinearSpec, length: int, device=None) -> torch.Tensor:
    """``[T, T]`` bool, True where query i attends key j: glocal's 1-D neighborhood window of K keys."""
    if length == 0:
        return torch.zeros(0, 0, dtype=torch.bool, device=device)
    kernel = length if spec.window_size is None else min(spec.window_size, length)
    return dense_mask(make_neighborhood_spec((length,), kernel, 1, 1, spec.is_causal), device=device)


def run(spec: LocalLinearSpec, tensors: dict, scale: float):
    """``(out, lse)``; see the module docstring."""
    q, k, v = tensors["q"], tensors["k"], tensors["v"]
    compute = compute_dtype(q)
    hq = q.shape[2]
    qf = q.to(compute)
    kf, vf = repeat_kv(k.to(compute), hq), repeat_kv(v.to(compute), hq)
    allowed = window_mask(spec, q.shape[1], q.device)
    scores = torch.einsum("bihd,bjhd->bhij", qf, kf) * scale
    probs, lse = masked_softmax(scores, allowed)  # [B, H, T, T], [B, H, T]
    mu = torch.einsum("bhij,bjhd->bihd", probs, kf)
    if spec.ridge is None:
        r = tensors["r"].to(compute)
    else:
        r = _lla_probe(probs, qf, kf, mu, spec.ridge)
    # r_i . (k_j - mu_i) for every pair
    centred_rk = torch.einsum("bihd,bjhd->bhij", r, kf) - (r * mu).sum(-1).permute(0, 2, 1)[..., None]
    out = torch.einsum("bhij,bjhe->bihe", probs * (1 - centred_rk), vf)
    return out.to(q.dtype), lse.permute(0, 2, 1)


def _lla_probe(probs, q, k, mu, ridge: float):
    """r_i = (Sigma_i + ridge I)^-1 (mu_i - q_i) with Sigma_i the softmax-weighted key covariance: [B, T, H, D]."""
    centred = k[:, None] - mu[:, :, None]  # [B, T_q, T_kv, H, D]: k_j - mu_i
    sigma = torch.einsum("bhij,bijhd,bijhe->bihde", probs, centred, centred)
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    return torch.linalg.solve(sigma + ridge * eye, (mu - q)[..., None])[..., 0]
