"""Parallax and Local Linear Attention (LLA): softmax attention with a first-order correction along a probe r.

Shapes (sequences, heads-last; self attention: queries and keys are the same T tokens):
    q, r: [B, T, H_q, D]   k: [B, T, H_kv, D]   v: [B, T, H_kv, D_v]
    out: [B, T, H_q, D_v]   lse: [B, T, H_q] (float32; float64 for float64 inputs)

Definitions (per query i over its attended keys j, see docs/local_linear.md):
    s_ij  = softmax_j(scale * q_i . k_j),   mu_i = sum_j s_ij k_j
    out_i = sum_j s_ij v_j (1 - r_i . (k_j - mu_i))
Parallax (Zuo et al. 2026) learns r; LLA (Zuo et al. 2025) solves it per query,
r_i = (Sigma_i + ridge I)^-1 (mu_i - q_i) with Sigma_i = sum_j s_ij (k_j - mu_i)(k_j - mu_i)^T, which makes
out_i the intercept of a kernel-weighted local linear regression of v on k around q_i.
The fast paths (tiles of queries against strided key spans) are ``glocal.backends.cpu.local_linear``,
the dense references ``glocal.backends.reference.local_linear``.

Example:
    >>> import torch, glocal
    >>> q = r = k = v = torch.randn(1, 100, 4, 16)
    >>> glocal.parallax_attention(q, r, k, v, window_size=32).shape
    torch.Size([1, 100, 4, 16])
"""

from __future__ import annotations

from .. import checks
from ..backends import choose_backend
from ..numerics import resolve_scale
from ..spec import LocalLinearSpec


def parallax_attention(q, r, k, v, window_size=None, is_causal=True, scale=None, return_lse=False, backend=None):
    """Parallax attention: softmax attention plus a learned probe r that reads the keys' covariance.

    Shapes:
        q, r: [B, T, H_q, D]   k: [B, T, H_kv, D]   v: [B, T, H_kv, D_v]
        out: [B, T, H_q, D_v]  lse: [B, T, H_q] (float32; float64 for float64 inputs)
        H_q a multiple of H_kv (GQA/MQA: query head h reads kv head h // (H_q // H_kv)).

    out_i = sum_j s_ij v_j (1 - r_i . (k_j - mu_i)) with s_ij = softmax_j(scale * q_i . k_j) over
    the keys query i attends and mu_i = sum_j s_ij k_j ("Parallax: Parameterized Local Linear
    Attention for Language Modeling", Zuo et al. 2026, Algorithm 1). r is not scaled; r = 0 is
    softmax attention. Equivalently out_i = o_i (1 + r_i . mu_i) - sum_j s_ij (r_i . k_j) v_j with
    o_i = sum_j s_ij v_j, the form flash-linear-attention's naive_parallax computes.

    Which keys query i attends (glocal's 1-D neighborhood window, DESIGN.md §1, with K = window_size):
        causal:     keys max(0, i - K + 1) .. i     (window_size=None: keys 0 .. i)
        non-causal: K keys centred on i, shifted inward at the borders (K // 2 before, the rest
                    after; window_size=None: every key). flash-linear-attention has causal only.
    A window of T keys or more covers the whole sequence (as window_size=None).
    Self attention only: q, k and v are one sequence of T tokens (a window needs one); for
    cross attention use glocal.attention.

    Args:
        window_size: None (every key / every earlier key) or an int >= 1.
        is_causal: never attend a later key.
        scale: softmax scale of q . k; None means D ** -0.5 (an explicit 0.0 is honoured).
        return_lse: also return lse_i = log sum_j exp(scale * q_i . k_j), the softmax's log-normaliser.
        backend: None (the fast path; plain PyTorch, any device) or a name, e.g. "reference".

    Example:
        >>> import torch, glocal
        >>> q, k, v = (torch.randn(1, 64, 2, 16) for _ in range(3))
        >>> out, lse = glocal.parallax_attention(q, torch.zeros_like(q), k, v, window_size=8, return_lse=True)
        >>> torch.allclose(out, glocal.na1d(q, k, v, kernel_size=8, is_causal=True), atol=1e-5)  # r = 0
        True
    """
    checks.local_linear_tensors("parallax_attention", q, k, v, r, with_probe=True)
    checks.window_size(window_size)
    checks.causal_flag(is_causal)
    checks.scale(scale)
    spec = LocalLinearSpec(window_size, is_causal, None)
    tensors = {"q": q, "r": r, "k": k, "v": v}
    out, lse = choose_backend(spec, tensors, backend).run(spec, tensors, resolve_scale(scale, q.shape[-1] ** -0.5))
    return (out, lse) if return_lse else out


def local_linear_attention(q, k, v, window_size=None, is_causal=True, ridge=1e-2, scale=None, return_lse=False,
                           backend=None):
    """Local Linear Attention: the intercept of a softmax-weighted local linear regression of v on k at q.

    Shapes:
        q: [B, T, H_q, D]   k: [B, T, H_kv, D]   v: [B, T, H_kv, D_v]
        out: [B, T, H_q, D_v]  lse: [B, T, H_q] (float32; float64 for float64 inputs)

    Per query i, with s_ij = softmax_j(scale * q_i . k_j) over its attended keys (the windows of
    :func:`parallax_attention`), mu_i = sum_j s_ij k_j and Sigma_i = sum_j s_ij (k_j - mu_i)(k_j - mu_i)^T:
        rho_i = (Sigma_i + ridge * I)^-1 (mu_i - q_i),   out_i = sum_j s_ij v_j (1 - rho_i . (k_j - mu_i)),
    which is a_i of  min_{a, b} sum_j s_ij |v_j - a - b^T (k_j - q_i)|^2 + ridge * |b|^2  ("Local Linear
    Attention", Zuo et al. 2025). ridge -> infinity gives softmax attention.

    The ridge is relative to the normalised weights s_ij. The paper writes the fit with the
    unnormalised kernel weights w_ij = exp(scale * q_i . k_j): sum_j w_ij |...|^2 + lambda |b|^2 is
    Z_i times ours with ridge = lambda / Z_i, where Z_i = sum_j w_ij = exp(lse_i). So a fixed
    ``ridge`` here is a per-query lambda_i = ridge * exp(lse_i) there (with the paper's 1/2 on the
    data term only, lambda_i = ridge * exp(lse_i) / 2).

    Costs O(T * K * D^2) time for the per-query covariances and a batched D x D solve; gradients
    flow through the solve. ``scale=None`` means D ** -0.5; ``ridge`` is a finite number > 0.

    Example:
        >>> import torch, glocal
        >>> q, k, v = (torch.randn(1, 64, 2, 16) for _ in range(3))
        >>> out = glocal.local_linear_attention(q, k, v, window_size=8, ridge=1e6)  # huge ridge: softmax
        >>> torch.allclose(out, glocal.na1d(q, k, v, kernel_size=8, is_causal=True), atol=1e-4)
        True
    """
    checks.local_linear_tensors("local_linear_attention", q, k, v)
    checks.window_size(window_size)
    checks.causal_flag(is_causal)
    checks.ridge(ridge)
    checks.scale(scale)
    spec = LocalLinearSpec(window_size, is_causal, float(ridge))
    tensors = {"q": q, "k": k, "v": v}
    out, lse = choose_backend(spec, tensors, backend).run(spec, tensors, resolve_scale(scale, q.shape[-1] ** -0.5))
    return (out, lse) if return_lse else out
