"""Linear attention and the vision papers' fixes to it: InLine and L2ViT local concentration.

Shapes (sequences, heads-last as everywhere in glocal):
    q: [B, T_q, H_q, D_k]   k: [B, T_kv, H_kv, D_k]   v: [B, T_kv, H_kv, D_v]   out: [B, T_q, H_q, D_v]
    state: (kv [B, H_kv, D_k, D_v], ksum [B, H_kv, D_k]), float32 (float64 for float64 inputs)

Definitions (phi is the feature map, applied to q and k; ``scale`` multiplies phi(q)):
    a_t = scale * phi(q_t),  b_s = phi(k_s)
    num_t = sum_s (a_t . b_s) v_s   +  a_t . kv0          (kv0, ksum0: the initial state, zeros by default)
    den_t = sum_s (a_t . b_s)       +  a_t . ksum0
    out_t = num_t / den_t if normalize (0 where den_t == 0), else num_t
over the keys s query t sees: all of them (non-causal), or s <= t + (T_kv - T_q) (causal, aligned
bottom-right as in glocal.attention). The state after a call is kv0 + sum_s b_s v_s^T and
ksum0 + sum_s b_s over every key; feeding it back as ``initial_state`` continues the sequence.
The fast paths (matmuls, chunked causal scans) are ``glocal.backends.cpu.linear``; the quadratic
references ``glocal.backends.reference.linear``, ``.inline`` and ``.local_concentration``.

Example:
    >>> import torch, glocal
    >>> x = torch.randn(1, 100, 4, 16)
    >>> glocal.linear_attention(x, x, x, is_causal=True).shape
    torch.Size([1, 100, 4, 16])
"""

from __future__ import annotations

import torch

from .. import checks
from ..backends import choose_backend
from ..numerics import FEATURE_MAPS, resolve_scale
from ..spec import InlineSpec, LinearSpec
from .neighborhood import neighborhood_attention

INLINE_PATTERNS = ("non-causal self", "non-causal cross")
LOCAL_CONCENTRATION_PATTERNS = ("non-causal self",)


def linear_attention(q, k, v, feature_map="elu1", is_causal=False, normalize=True, scale=None, chunk_size=64,
                     initial_state=None, return_state=False, backend=None):
    """Kernelised linear attention, self or cross, causal or not (Katharopoulos et al. 2020).

    Shapes:
        q: [B, T_q, H_q, D_k]   k: [B, T_kv, H_kv, D_k]   v: [B, T_kv, H_kv, D_v]
        out: [B, T_q, H_q, D_v]  (H_q a multiple of H_kv: query head h reads kv head h // (H_q // H_kv))
        initial_state / returned state: (kv [B, H_kv, D_k, D_v], ksum [B, H_kv, D_k]),
            float32 (float64 for float64 inputs)

    out_t = sum_s (a_t . b_s) v_s / sum_s (a_t . b_s) with a_t = scale * phi(q_t), b_s = phi(k_s),
    over the keys query t sees (all, or j <= t + T_kv - T_q when causal: bottom-right aligned);
    ``normalize=False`` drops the division. A query whose denominator is exactly 0 (it sees no key,
    or a relu map zeroed every score) gets output 0. ``scale=None`` applies no scale; a scale only
    matters with ``normalize=False`` or a zero denominator, since it cancels in the ratio.

    Args:
        feature_map: "elu1" (elu(x) + 1, always positive), "relu", "identity", or a callable
            taking a [..., D_k] tensor to a tensor of the same shape (applied to q and k).
        is_causal: causal masking; computed by chunks of ``chunk_size`` queries with a running
            state, in memory independent of T (forward and backward).
        initial_state: a state from an earlier call (or :func:`linear_attention_step`); its keys
            are seen by every query.
        return_state: also return the state after the last key.
        backend: None (the chunked/matmul path, on any device) or a name, e.g. "reference"
            (the quadratic form).

    Example:
        >>> import torch, glocal
        >>> q = k = v = torch.randn(1, 100, 4, 16)
        >>> out, state = glocal.linear_attention(q, k, v, is_causal=True, return_state=True)
        >>> out.shape, state[0].shape, state[1].shape
        (torch.Size([1, 100, 4, 16]), torch.Size([1, 4, 16, 16]), torch.Size([1, 4, 16]))
    """
    checks.linear_inputs(q, k, v, is_causal, feature_map, FEATURE_MAPS, scale, chunk_size, initial_state)
    spec = LinearSpec(feature_map, is_causal, bool(normalize), int(chunk_size))
    tensors = {"q": q, "k": k, "v": v, "initial_state": initial_state}
    out, state = choose_backend(spec, tensors, backend).run(spec, tensors, resolve_scale(scale, 1.0))
    return (out, state) if return_state else out


def linear_attention_step(q_t, k_t, v_t, state=None, feature_map="elu1", normalize=True, scale=None, backend=None):
    """One decoding step of causal linear attention: add token t to the state, then read it.

    Shapes:
        q_t: [B, H_q, D_k]   k_t: [B, H_kv, D_k]   v_t: [B, H_kv, D_v]   out_t: [B, H_q, D_v]
        state: (kv [B, H_kv, D_k, D_v], ksum [B, H_kv, D_k]) or None (empty)

    Fed token by token from ``state=None`` (or from a state returned by
    :func:`linear_attention`), it reproduces the causal forward with the same arguments.
    The returned state is a new tensor pair; the input state is not modified. ``scale=None``
    means 1, as in :func:`linear_attention`.

    Example:
        >>> import torch, glocal
        >>> x = torch.randn(1, 6, 2, 8)
        >>> state = None
        >>> for t in range(6):
        ...     out_t, state = glocal.linear_attention_step(x[:, t], x[:, t], x[:, t], state)
        >>> torch.allclose(out_t, glocal.linear_attention(x, x, x, is_causal=True)[:, -1], atol=1e-5)
        True
    """
    checks.step_tensors(q_t, k_t, v_t)
    checks.feature_map(feature_map, FEATURE_MAPS)
    checks.scale(scale, "1")
    q4, k4, v4 = q_t[:, None], k_t[:, None], v_t[:, None]
    checks.linear_state("state", state, q4, k4, v4)
    spec = LinearSpec(feature_map, True, bool(normalize))
    tensors = {"q": q4, "k": k4, "v": v4, "initial_state": state}
    out, state = choose_backend(spec, tensors, backend).run(spec, tensors, resolve_scale(scale, 1.0))
    return out[:, 0], state


def inline_attention(q, k, v, feature_map="identity", scale=None, is_causal=False, backend=None):
    """InLine attention: linear attention made injective by centring the scores (Han et al. 2024).

    Shapes (1-D, 2-D or 3-D grids are flattened to tokens in row-major order):
        q: [B, *spatial_q, H_q, D_k]   k: [B, *spatial_kv, H_kv, D_k]   v: [B, *spatial_kv, H_kv, D_v]
        out: [B, *spatial_q, H_q, D_v]

    out_t = sum_s (s_ts - mean_s' s_ts' + 1/N) v_s with s_ts = scale * phi(q_t) . phi(k_s) and N the
    number of keys ("Bridging the Divide: Reconsidering Softmax and Linear Attention", NeurIPS 2024,
    eq. 5). The weights of a query sum to 1 without a division, and no two queries with different
    scores get the same weights. Computed as a_t . (KV - ksum vmean^T) + vmean in O(N * D_k * D_v).
    ``scale=None`` means 1; the published models use ``D_k ** -0.5 / N`` with the identity map.
    The paper defines InLine for images (non-causal): supports non-causal self and non-causal cross;
    ``is_causal=True`` raises.

    Example:
        >>> import torch, glocal
        >>> x = torch.randn(1, 8, 8, 2, 16)
        >>> glocal.inline_attention(x, x, x).shape
        torch.Size([1, 8, 8, 2, 16])
    """
    checks.grid_tensors("inline_attention", q, k, v)
    checks.pattern_supported("inline_attention", is_causal, tuple(q.shape[1:-2]) != tuple(k.shape[1:-2]),
                             INLINE_PATTERNS)
    checks.feature_map(feature_map, FEATURE_MAPS)
    checks.scale(scale, "1")
    checks.nonempty_keys("inline_attention", k)
    spec = InlineSpec(feature_map)
    tensors = {"q": q, "k": k, "v": v}
    return choose_backend(spec, tensors, backend).run(spec, tensors, resolve_scale(scale, 1.0))[0]


def local_concentration_attention(q, k, v, kernel_size, dilation=1, temperature=None, denominator_min=100.0,
                                  scale=None, is_causal=False, backend=None):
    """L2ViT-style linear global attention with a K-neighborhood softmax branch beside it.

    Shapes (1-D, 2-D or 3-D grid):
        q: [B, *spatial, H_q, D_k]   k: [B, *spatial, H_kv, D_k]   v: [B, *spatial, H_kv, D_v]
        temperature: None, a float or [H_q]       out: [B, *spatial, H_q, D_v]

    out = temperature * relu(q_t) . sum_s relu(k_s) v_s^T / max(relu(q_t) . sum_s relu(k_s), denominator_min)
          + neighborhood_attention(q, k, v, kernel_size, dilation, scale)
    The global branch is L2ViT's enhanced linear attention ("The Linear Attention Resurrection in
    Vision Transformer", Zheng 2025): ReLU features for non-negative scores, a clamped denominator
    (the published code clamps at 100) and a learned per-head temperature on its output. L2ViT
    restores the concentration softmax has and linear attention lacks with a local branch whose
    result is added as another residual; here that branch is exact K-neighborhood softmax
    attention (glocal.neighborhood_attention), the two summed. Supports non-causal self only.
    ``scale`` is the neighborhood branch's softmax scale (None means D_k ** -0.5); the linear branch
    is unscaled. ``backend`` goes to both branches (the linear family with a clamped denominator,
    and the neighborhood family).

    Example:
        >>> import torch, glocal
        >>> x = torch.randn(1, 8, 8, 2, 16)
        >>> glocal.local_concentration_attention(x, x, x, kernel_size=3).shape
        torch.Size([1, 8, 8, 2, 16])
    """
    checks.is_tensor("q", q)
    checks.is_tensor("k", k)
    checks.pattern_supported("local_concentration_attention", is_causal, tuple(q.shape[1:-2]) != tuple(k.shape[1:-2]),
                             LOCAL_CONCENTRATION_PATTERNS)
    checks.neighborhood_tensors(q, k, v, None)
    checks.l2vit_args(q, temperature, denominator_min)
    checks.scale(scale)
    # Linear branch: relu features, the denominator clamped from below (the linear family's option).
    spec = LinearSpec("relu", False, True, denominator_min=float(denominator_min))
    tensors = {"q": q.flatten(1, -3), "k": k.flatten(1, -3), "v": v.flatten(1, -3), "initial_state": None}
    linear, _ = choose_backend(spec, tensors, backend).run(spec, tensors, 1.0)
    linear = linear.reshape(*q.shape[:-1], v.shape[-1])
    if temperature is not None:
        t = temperature.to(linear.dtype)[:, None] if isinstance(temperature, torch.Tensor) else float(temperature)
        linear = linear * t
    local = neighborhood_attention(q, k, v, kernel_size, dilation=dilation, scale=scale, backend=backend)
    return linear + local
