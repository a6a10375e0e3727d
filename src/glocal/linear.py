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

Fast paths: non-causal is two matmuls, O(T * D_k * D_v). Causal runs by chunks in the Lightning
Attention manner: masked attention inside a chunk of ``chunk_size`` queries plus a running
key-value state carried across chunks, so its memory does not grow with T beyond inputs and
outputs (when gradients are needed, plus one float per query and head: the denominator, kept
for the backward). Chunks are batched a step of BLOCK_TOKENS at a time (see _CausalLinear). The
backward recomputes step by step: forward over the steps for dq (it needs the state before each
chunk), backward over the steps with a running state gradient for dk and dv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import checks

FEATURE_MAPS = ("elu1", "relu", "identity")


def _feature_map(feature_map):
    """The callable behind a feature-map name (validated by checks.feature_map)."""
    if callable(feature_map):
        return feature_map
    if feature_map == "elu1":
        return lambda x: F.elu(x) + 1.0
    if feature_map == "relu":
        return F.relu
    return lambda x: x


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with 0 where den == 0 (no key seen, or every score zeroed by relu); finite gradients."""
    zero = den == 0
    return (num / den.masked_fill(zero, 1.0)).masked_fill(zero, 0.0)


def _zero_state(batch, hkv, dk, dv, dtype, device):
    return (torch.zeros(batch, hkv, dk, dv, dtype=dtype, device=device),
            torch.zeros(batch, hkv, dk, dtype=dtype, device=device))


def _group(x: torch.Tensor, hkv: int) -> torch.Tensor:
    """[B, T, H_q, D] -> [B, T, H_kv, G, D] (a view): query head h reads kv head h // G."""
    return x.unflatten(2, (hkv, x.shape[2] // hkv))


# ---------------------------------------------------------------------------------------------
# Reference: the quadratic form, plain autograd.
# ---------------------------------------------------------------------------------------------


def linear_attention_reference(q, k, v, feature_map="elu1", is_causal=False, normalize=True, scale=None,
                               initial_state=None, return_state=False):
    """Quadratic reference of :func:`linear_attention`: materialises every score a_t . b_s.

    Shapes: as :func:`linear_attention`. Memory O(T_q * T_kv) per batch and head.

    Example:
        >>> import torch
        >>> from glocal.linear import linear_attention_reference
        >>> q = k = v = torch.randn(1, 10, 2, 8)
        >>> linear_attention_reference(q, k, v, is_causal=True).shape
        torch.Size([1, 10, 2, 8])
    """
    phi = _feature_map(feature_map)
    compute = _compute_dtype(q)
    batch, tq, hq, dk = q.shape
    tkv, hkv, dv = k.shape[1], k.shape[2], v.shape[-1]
    a = _group(phi(q.to(compute)), hkv) * (1.0 if scale is None else float(scale))
    b, vv = phi(k.to(compute)), v.to(compute)
    kv0, ksum0 = initial_state if initial_state is not None else _zero_state(batch, hkv, dk, dv, compute, q.device)
    kv0, ksum0 = kv0.to(compute), ksum0.to(compute)
    scores = torch.einsum("bthgd,bshd->bhgts", a, b)
    if is_causal:
        i = torch.arange(tq, device=q.device)[:, None]
        j = torch.arange(tkv, device=q.device)[None, :]
        scores = scores * (j <= i + (tkv - tq)).to(compute)
    num = torch.einsum("bhgts,bshe->bthge", scores, vv) + torch.einsum("bthgd,bhde->bthge", a, kv0)
    out = num
    if normalize:
        den = scores.sum(-1).permute(0, 3, 1, 2) + torch.einsum("bthgd,bhd->bthg", a, ksum0)
        out = _safe_divide(num, den[..., None])
    out = out.flatten(2, 3).to(q.dtype)
    if not return_state:
        return out
    state = (kv0 + torch.einsum("bshd,bshe->bhde", b, vv), ksum0 + b.sum(1))
    return out, state


# ---------------------------------------------------------------------------------------------
# Causal chunked kernel (custom autograd Function, memory flat in T).
# ---------------------------------------------------------------------------------------------


# The chunks of one step are processed together, so a step issues the same few ops whatever its
# number of chunks (one op per 64-token chunk is dominated by dispatch on a CPU); the tensors of a
# step are bounded by this many tokens, not by T (a few MiB at 4 heads x 64).
BLOCK_TOKENS = 512


def _plan(tq: int, tkv: int, block: int) -> list[tuple]:
    """Steps ``(q0, q1, k0, k1, masked)`` in sequence order for causal attention aligned bottom-right.

    Keys before the first query's horizon only feed the state (no queries); queries before the
    first key see only the initial state (no keys); the rest is a square causal problem cut into
    blocks whose queries and keys are aligned (key k0 + i sits at query q0 + i), masked inside.
    """
    off = tkv - tq
    steps = []
    pre_k = max(off, 0)
    for s in range(0, pre_k, block):
        steps.append((0, 0, s, min(s + block, pre_k), False))
    pre_q = max(-off, 0)
    for s in range(0, pre_q, block):
        steps.append((s, min(s + block, pre_q), 0, 0, False))
    for s in range(pre_q, tq, block):
        e = min(s + block, tq)
        steps.append((s, e, s + off, e + off, True))
    return steps


def _chunked(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """[B, L, ...] -> [B, n, chunk, ...], zero-padded at the end to n * chunk rows."""
    pad = (-x.shape[1]) % chunk
    if pad:
        x = torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], dim=1)
    return x.unflatten(1, (-1, chunk))


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    """Sum of the entries before each along axis 1 (the chunks of a step)."""
    return x.cumsum(1) - x


def _reverse_exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    """Sum of the entries after each along axis 1."""
    return x.sum(1, keepdim=True) - x.cumsum(1)


class _CausalLinear(torch.autograd.Function):
    """Chunked causal linear attention; see the module docstring for the algorithm.

    Inside a step the chunks are batched: chunk c's state is the step's incoming state plus the
    key-value sums of the chunks before it (an exclusive cumulative sum over the step's chunks
    only), and its queries attend its own keys through a lower-triangular score block.
    Index names in the einsums: n chunk, c query and s key inside a chunk, h kv head, g query
    head in its group, d key feature, e value channel.
    """

    @staticmethod
    def forward(ctx, q, k, v, kv0, ksum0, phi, scale, normalize, chunk):
        compute = kv0.dtype
        batch, tq, hq, dk = q.shape
        tkv, hkv, dv = k.shape[1], k.shape[2], v.shape[-1]
        block = chunk * max(1, BLOCK_TOKENS // chunk)
        out = torch.full((batch, tq, hq, dv), float("nan"), dtype=q.dtype, device=q.device)
        # The denominators are kept for the backward only (one float per query and head, like
        # FlashAttention's lse); inference allocates nothing that grows with T.
        keep_den = normalize and any(ctx.needs_input_grad[:5])
        den_all = torch.ones(batch, tq, hkv, hq // hkv, dtype=compute, device=q.device) if keep_den else None
        # The denominator rides along as one more value channel: with v' = [v, 1] the state is
        # [kv, ksum] and each matmul yields numerator and denominator together.
        state = torch.cat([kv0, ksum0[..., None]], dim=-1)  # [B, H_kv, D_k, D_v + 1]
        for q0, q1, k0, k1, masked in _plan(tq, tkv, block):
            if k1 > k0:
                b = phi(k[:, k0:k1].to(compute))
                vc = torch.cat([v[:, k0:k1].to(compute), b.new_ones(*b.shape[:-1], 1)], dim=-1)
            if q1 > q0 and not masked:
                a = _group(phi(q[:, q0:q1].to(compute)), hkv) * scale
                both = torch.einsum("bchgd,bhde->bchge", a, state)
            if masked:
                a = _chunked(_group(phi(q[:, q0:q1].to(compute)), hkv) * scale, chunk)
                bn, vn = _chunked(b, chunk), _chunked(vc, chunk)
                inc = torch.einsum("bnshd,bnshe->bnhde", bn, vn)
                scores = torch.einsum("bnchgd,bnshd->bnhgcs", a, bn).tril_()
                both = (torch.einsum("bnchgd,bnhde->bnchge", a, state[:, None] + _exclusive_cumsum(inc))
                        + torch.einsum("bnhgcs,bnshe->bnchge", scores, vn)).flatten(1, 2)[:, :q1 - q0]
            if q1 > q0:
                num, den = both[..., :dv], both[..., dv]
                if normalize:
                    num = _safe_divide(num, den[..., None])
                    if keep_den:
                        den_all[:, q0:q1] = den
                out[:, q0:q1] = num.flatten(2, 3)
            if masked:
                state += inc.sum(1)
            elif k1 > k0:
                state += torch.einsum("bshd,bshe->bhde", b, vc)
        kv, ksum = state[..., :dv].clone(), state[..., dv].clone()
        ctx.save_for_backward(q, k, v, kv0, ksum0, out, den_all)
        ctx.phi, ctx.scale, ctx.normalize, ctx.chunk = phi, scale, normalize, chunk
        return out, kv, ksum

    @staticmethod
    def backward(ctx, dout, dkv_final, dksum_final):
        q, k, v, kv0, ksum0, out, den_all = ctx.saved_tensors
        phi, scale, normalize, chunk = ctx.phi, ctx.scale, ctx.normalize, ctx.chunk
        compute = kv0.dtype
        tq, hkv, tkv = q.shape[1], k.shape[2], k.shape[1]
        steps = _plan(tq, tkv, chunk * max(1, BLOCK_TOKENS // chunk))
        dq = torch.full_like(q, float("nan"))
        dk = torch.full_like(k, float("nan"))
        dv = torch.full_like(v, float("nan"))

        def features(x, factor):
            # Recompute phi on one step with a graph so any feature map (a callable too) chains.
            x = x.detach().to(compute).requires_grad_(True)
            with torch.enable_grad():
                y = phi(x) * factor
            return x, y

        def output_grads(q0, q1):
            """(dnum, dden) of one query range: [B, L, H_kv, G, D_v], [B, L, H_kv, G] (dden None unnormalised)."""
            g = _group(dout[:, q0:q1].to(compute), hkv)
            if not normalize:
                return g, None
            den = den_all[:, q0:q1]
            zero = den == 0
            safe = torch.where(zero, torch.ones_like(den), den)
            o = _group(out[:, q0:q1].to(compute), hkv)
            dnum = torch.where(zero[..., None], torch.zeros_like(g), g / safe[..., None])
            dden = torch.where(zero, torch.zeros_like(den), -(g * o).sum(-1) / safe)
            return dnum, dden

        def intra(a, bn, vn, dnum, dden):
            """Masked in-chunk scores and their gradient, both [B, n, H_kv, G, C, C]."""
            scores = torch.einsum("bnchgd,bnshd->bnhgcs", a, bn).tril()
            dscores = torch.einsum("bnchge,bnshe->bnhgcs", dnum, vn)
            if dden is not None:
                dscores = dscores + dden.permute(0, 1, 3, 4, 2)[..., None]
            return scores, dscores.tril()

        def chunked_grads(q0, q1):
            dnum, dden = output_grads(q0, q1)
            return _chunked(dnum, chunk), (_chunked(dden, chunk) if dden is not None else None)

        # Pass 1, forward over the steps: dq needs the state before each chunk.
        kv, ksum = kv0.clone(), ksum0.clone()
        for q0, q1, k0, k1, masked in steps:
            b = phi(k[:, k0:k1].to(compute)) if k1 > k0 else None
            vc = v[:, k0:k1].to(compute) if k1 > k0 else None
            if q1 > q0:
                x, y = features(q[:, q0:q1], scale)
                if masked:
                    a = _chunked(_group(y.detach(), hkv), chunk)
                    bn, vn = _chunked(b, chunk), _chunked(vc, chunk)
                    dnum, dden = chunked_grads(q0, q1)
                    kv_before = kv[:, None] + _exclusive_cumsum(torch.einsum("bnshd,bnshe->bnhde", bn, vn))
                    _, dscores = intra(a, bn, vn, dnum, dden)
                    da = (torch.einsum("bnchge,bnhde->bnchgd", dnum, kv_before)
                          + torch.einsum("bnhgcs,bnshd->bnchgd", dscores, bn))
                    if dden is not None:
                        ksum_before = ksum[:, None] + _exclusive_cumsum(bn.sum(2))
                        da = da + dden[..., None] * ksum_before[:, :, None, :, None, :]
                    da = da.flatten(1, 2)[:, :q1 - q0]
                else:
                    dnum, dden = output_grads(q0, q1)
                    da = torch.einsum("bchge,bhde->bchgd", dnum, kv)
                    if dden is not None:
                        da = da + dden[..., None] * ksum[:, None, :, None, :]
                (gx,) = torch.autograd.grad(y, x, da.flatten(2, 3))
                dq[:, q0:q1] = gx
            if k1 > k0:
                kv += torch.einsum("bshd,bshe->bhde", b, vc)
                ksum += b.sum(1)

        # Pass 2, backward over the steps: dk, dv need the gradient of every later state.
        dkv_run = (dkv_final.to(compute) if dkv_final is not None else torch.zeros_like(kv0)).clone()
        dksum_run = (dksum_final.to(compute) if dksum_final is not None else torch.zeros_like(ksum0)).clone()
        for q0, q1, k0, k1, masked in reversed(steps):
            if masked:
                a = _chunked(_group(phi(q[:, q0:q1].to(compute)) * scale, hkv), chunk)
                x, b = features(k[:, k0:k1], 1.0)
                bn, vn = _chunked(b.detach(), chunk), _chunked(v[:, k0:k1].to(compute), chunk)
                dnum, dden = chunked_grads(q0, q1)
                scores, dscores = intra(a, bn, vn, dnum, dden)
                # State gradient after each chunk: later steps plus the later chunks of this step.
                inc = torch.einsum("bnchgd,bnchge->bnhde", a, dnum)
                dkv_after = dkv_run[:, None] + _reverse_exclusive_cumsum(inc)
                db = (torch.einsum("bnshe,bnhde->bnshd", vn, dkv_after)
                      + torch.einsum("bnhgcs,bnchgd->bnshd", dscores, a))
                dvn = (torch.einsum("bnshd,bnhde->bnshe", bn, dkv_after)
                       + torch.einsum("bnhgcs,bnchge->bnshe", scores, dnum))
                dkv_run += inc.sum(1)
                if dden is None:
                    db = db + dksum_run[:, None, None]
                else:
                    zinc = torch.einsum("bnchgd,bnchg->bnhd", a, dden)
                    db = db + (dksum_run[:, None] + _reverse_exclusive_cumsum(zinc))[:, :, None]
                    dksum_run += zinc.sum(1)
                length = k1 - k0
                (gx,) = torch.autograd.grad(b, x, db.flatten(1, 2)[:, :length])
                dk[:, k0:k1] = gx
                dv[:, k0:k1] = dvn.flatten(1, 2)[:, :length]
                continue
            if k1 > k0:
                # Keys that only feed the state reach every later query through it.
                x, b = features(k[:, k0:k1], 1.0)
                vc = v[:, k0:k1].to(compute)
                db = torch.einsum("bshe,bhde->bshd", vc, dkv_run) + dksum_run[:, None]
                (gx,) = torch.autograd.grad(b, x, db)
                dk[:, k0:k1] = gx
                dv[:, k0:k1] = torch.einsum("bshd,bhde->bshe", b.detach(), dkv_run)
            if q1 > q0:
                # Queries that only read the state: their gradient flows to every earlier key.
                a = _group(phi(q[:, q0:q1].to(compute)) * scale, hkv)
                dnum, dden = output_grads(q0, q1)
                dkv_run += torch.einsum("bchgd,bchge->bhde", a, dnum)
                if dden is not None:
                    dksum_run += torch.einsum("bchgd,bchg->bhd", a, dden)
        return dq, dk, dv, dkv_run, dksum_run, None, None, None, None


# ---------------------------------------------------------------------------------------------
# Public ops.
# ---------------------------------------------------------------------------------------------


def linear_attention(q, k, v, feature_map="elu1", is_causal=False, normalize=True, scale=None, chunk_size=64,
                     initial_state=None, return_state=False):
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

    Example:
        >>> import torch, glocal
        >>> q = k = v = torch.randn(1, 100, 4, 16)
        >>> out, state = glocal.linear_attention(q, k, v, is_causal=True, return_state=True)
        >>> out.shape, state[0].shape, state[1].shape
        (torch.Size([1, 100, 4, 16]), torch.Size([1, 4, 16, 16]), torch.Size([1, 4, 16]))
    """
    checks.sequence_tensors(q, k, v)
    checks.causal_flag(is_causal)
    checks.feature_map(feature_map, FEATURE_MAPS)
    checks.scale(scale)
    checks.chunk_size(chunk_size)
    checks.linear_state("initial_state", initial_state, q, k, v)
    phi = _feature_map(feature_map)
    compute = _compute_dtype(q)
    batch, tq, hq, dk = q.shape
    hkv, dv = k.shape[2], v.shape[-1]
    if initial_state is None:
        kv0, ksum0 = _zero_state(batch, hkv, dk, dv, compute, q.device)
    else:
        kv0, ksum0 = initial_state[0].to(compute), initial_state[1].to(compute)
    s = 1.0 if scale is None else float(scale)
    if is_causal:
        out, kv, ksum = _CausalLinear.apply(q, k, v, kv0, ksum0, phi, s, bool(normalize), int(chunk_size))
    else:
        a = _group(phi(q.to(compute)), hkv) * s
        b = phi(k.to(compute))
        kv = kv0 + torch.einsum("bshd,bshe->bhde", b, v.to(compute))
        ksum = ksum0 + b.sum(1)
        num = torch.einsum("bthgd,bhde->bthge", a, kv)
        if normalize:
            num = _safe_divide(num, torch.einsum("bthgd,bhd->bthg", a, ksum)[..., None])
        out = num.flatten(2, 3).to(q.dtype)
    return (out, (kv, ksum)) if return_state else out


def linear_attention_step(q_t, k_t, v_t, state=None, feature_map="elu1", normalize=True, scale=None):
    """One decoding step of causal linear attention: add token t to the state, then read it.

    Shapes:
        q_t: [B, H_q, D_k]   k_t: [B, H_kv, D_k]   v_t: [B, H_kv, D_v]   out_t: [B, H_q, D_v]
        state: (kv [B, H_kv, D_k, D_v], ksum [B, H_kv, D_k]) or None (empty)

    Fed token by token from ``state=None`` (or from a state returned by
    :func:`linear_attention`), it reproduces the causal forward with the same arguments.
    The returned state is a new tensor pair; the input state is not modified.

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
    checks.scale(scale)
    q4, k4, v4 = q_t[:, None], k_t[:, None], v_t[:, None]
    checks.linear_state("state", state, q4, k4, v4)
    phi = _feature_map(feature_map)
    compute = _compute_dtype(q_t)
    batch, hq, dk = q_t.shape
    hkv, dv = k_t.shape[1], v_t.shape[-1]
    if state is None:
        state = _zero_state(batch, hkv, dk, dv, compute, q_t.device)
    # A step is a handful of tiny ops, so it is written with plain matmuls (no einsum parsing).
    b = phi(k_t.to(compute))
    kv = torch.addcmul(state[0].to(compute), b[..., :, None], v_t.to(compute)[..., None, :])
    ksum = state[1].to(compute) + b
    a = phi(q_t.to(compute)).unflatten(1, (hkv, hq // hkv))
    if scale is not None:
        a = a * float(scale)
    num = torch.matmul(a, kv)  # [B, H_kv, G, D_v]
    if normalize:
        num = _safe_divide(num, torch.matmul(a, ksum[..., None]))
    return num.flatten(1, 2).to(q_t.dtype), (kv, ksum)


# ---------------------------------------------------------------------------------------------
# InLine: injective linear attention (Han et al. 2024).
# ---------------------------------------------------------------------------------------------

INLINE_PATTERNS = ("non-causal self", "non-causal cross")


def _flatten_tokens(x):
    """[B, *spatial, H, D] -> [B, N, H, D] (row-major token order)."""
    return x.reshape(x.shape[0], -1, x.shape[-2], x.shape[-1])


def inline_attention_reference(q, k, v, feature_map="identity", scale=None):
    """Quadratic reference of :func:`inline_attention` (materialises the N_q x N_kv weights).

    Example:
        >>> import torch
        >>> from glocal.linear import inline_attention_reference
        >>> x = torch.randn(1, 4, 4, 2, 8)
        >>> inline_attention_reference(x, x, x).shape
        torch.Size([1, 4, 4, 2, 8])
    """
    phi = _feature_map(feature_map)
    compute = _compute_dtype(q)
    qf, kf, vf = _flatten_tokens(q), _flatten_tokens(k), _flatten_tokens(v)
    hkv, n = kf.shape[2], kf.shape[1]
    a = _group(phi(qf.to(compute)), hkv) * (1.0 if scale is None else float(scale))
    scores = torch.einsum("bthgd,bshd->bhgts", a, phi(kf.to(compute)))
    weights = scores - scores.mean(-1, keepdim=True) + 1.0 / n
    out = torch.einsum("bhgts,bshe->bthge", weights, vf.to(compute)).flatten(2, 3)
    return out.reshape(*q.shape[:-1], v.shape[-1]).to(q.dtype)


def inline_attention(q, k, v, feature_map="identity", scale=None, is_causal=False):
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
    checks.scale(scale)
    checks.nonempty_keys("inline_attention", k)
    phi = _feature_map(feature_map)
    compute = _compute_dtype(q)
    qf, kf, vf = _flatten_tokens(q), _flatten_tokens(k), _flatten_tokens(v)
    hkv, n = kf.shape[2], kf.shape[1]
    a = _group(phi(qf.to(compute)), hkv) * (1.0 if scale is None else float(scale))
    b, vv = phi(kf.to(compute)), vf.to(compute)
    vmean = vv.mean(1)  # [B, H_kv, D_v]
    # sum_s (s_ts - mean s + 1/N) v_s = a . (sum_s b_s v_s^T - (sum_s b_s) vmean^T) + vmean
    kv = torch.einsum("bshd,bshe->bhde", b, vv) - b.sum(1)[..., None] * vmean[:, :, None, :]
    out = torch.einsum("bthgd,bhde->bthge", a, kv) + vmean[:, None, :, None, :]
    return out.flatten(2, 3).reshape(*q.shape[:-1], v.shape[-1]).to(q.dtype)


# ---------------------------------------------------------------------------------------------
# L2ViT: enhanced linear global attention plus local concentration (Zheng 2025).
# ---------------------------------------------------------------------------------------------

LOCAL_CONCENTRATION_PATTERNS = ("non-causal self",)


def _l2vit_global(q, k, v, temperature, denominator_min, exact):
    """ReLU linear attention with the denominator clamped from below, times a per-head temperature."""
    compute = _compute_dtype(q)
    qf, kf, vf = _flatten_tokens(q), _flatten_tokens(k), _flatten_tokens(v)
    hkv = kf.shape[2]
    a = _group(F.relu(qf.to(compute)), hkv)
    b, vv = F.relu(kf.to(compute)), vf.to(compute)
    if exact:
        scores = torch.einsum("bthgd,bshd->bhgts", a, b)
        num = torch.einsum("bhgts,bshe->bthge", scores, vv)
        den = scores.sum(-1).permute(0, 3, 1, 2)
    else:
        num = torch.einsum("bthgd,bhde->bthge", a, torch.einsum("bshd,bshe->bhde", b, vv))
        den = torch.einsum("bthgd,bhd->bthg", a, b.sum(1))
    out = (num / den.clamp(min=denominator_min)[..., None]).flatten(2, 3)
    if temperature is not None:
        t = temperature.to(compute) if isinstance(temperature, torch.Tensor) else float(temperature)
        out = out * (t[:, None] if isinstance(t, torch.Tensor) else t)
    return out.reshape(*q.shape[:-1], v.shape[-1]).to(q.dtype)


def _local_concentration(q, k, v, kernel_size, dilation, temperature, denominator_min, scale, exact,
                         is_causal=False):
    from .functional import neighborhood_attention

    checks.is_tensor("q", q)
    checks.is_tensor("k", k)
    checks.pattern_supported("local_concentration_attention", is_causal, tuple(q.shape[1:-2]) != tuple(k.shape[1:-2]),
                             LOCAL_CONCENTRATION_PATTERNS)
    checks.neighborhood_tensors(q, k, v, None)
    checks.l2vit_args(q, temperature, denominator_min)
    checks.scale(scale)
    local = neighborhood_attention(q, k, v, kernel_size, dilation=dilation, scale=scale,
                                   backend="reference" if exact else None)
    return _l2vit_global(q, k, v, temperature, denominator_min, exact) + local


def local_concentration_attention(q, k, v, kernel_size, dilation=1, temperature=None, denominator_min=100.0,
                                  scale=None, is_causal=False):
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

    Example:
        >>> import torch, glocal
        >>> x = torch.randn(1, 8, 8, 2, 16)
        >>> glocal.local_concentration_attention(x, x, x, kernel_size=3).shape
        torch.Size([1, 8, 8, 2, 16])
    """
    return _local_concentration(q, k, v, kernel_size, dilation, temperature, denominator_min, scale, False,
                                is_causal)


def local_concentration_attention_reference(q, k, v, kernel_size, dilation=1, temperature=None,
                                            denominator_min=100.0, scale=None):
    """Quadratic reference of :func:`local_concentration_attention` (dense scores, reference NA backend).

    Example:
        >>> import torch
        >>> from glocal.linear import local_concentration_attention_reference
        >>> x = torch.randn(1, 16, 2, 8)
        >>> local_concentration_attention_reference(x, x, x, kernel_size=3).shape
        torch.Size([1, 16, 2, 8])
    """
    return _local_concentration(q, k, v, kernel_size, dilation, temperature, denominator_min, scale, True)
