"""Fast linear attention in plain PyTorch (runs on any device): matmuls, chunked causal scans, a decoding step.

Shapes:
    q: [B, T_q, H_q, D_k]  k: [B, T_kv, H_kv, D_k]  v: [B, T_kv, H_kv, D_v]
    initial_state / returned state: (kv [B, H_kv, D_k, D_v], ksum [B, H_kv, D_k]), float32 (float64 for float64)
    returns (out [B, T_q, H_q, D_v], state)

Definitions are those of ``glocal.backends.reference.linear``. Non-causal is two matmuls,
O(T * D_k * D_v). Causal runs by chunks in the Lightning Attention manner: masked attention
inside a chunk of ``chunk_size`` queries plus a running key-value state carried across chunks,
so its memory does not grow with T beyond inputs and outputs (when gradients are needed, plus
one float per query and head: the denominator, kept for the backward). Chunks are batched a step
of BLOCK_TOKENS at a time (see _CausalLinear). The backward recomputes step by step: forward
over the steps for dq (it needs the state before each chunk), backward over the steps with a
running state gradient for dk and dv. One query over one key with a state (decoding) is a
handful of small matmuls.

Example:
    >>> import torch
    >>> from glocal.backends.cpu import linear
    >>> from glocal.spec import LinearSpec
    >>> q = k = v = torch.randn(1, 100, 2, 16)
    >>> out, (kv, ksum) = linear.run(LinearSpec(is_causal=True), {"q": q, "k": k, "v": v}, 1.0)
    >>> out.shape, kv.shape
    (torch.Size([1, 100, 2, 16]), torch.Size([1, 2, 16, 16]))
"""

from __future__ import annotations

import torch

from ...numerics import compute_dtype, safe_divide
from ...numerics import feature_map as feature_map_fn
from ...spec import LinearSpec

NAME = "cpu"


def can_run(spec, tensors: dict) -> list[str]:
    """Any device and float dtype; a clamped denominator (L2ViT) only without causal masking."""
    if not isinstance(spec, LinearSpec):
        return [f"cpu does not implement {type(spec).__name__} as linear attention"]
    if spec.is_causal and spec.denominator_min is not None:
        return ["cpu computes a clamped denominator (denominator_min) for non-causal linear attention only"]
    return []


def _group(x: torch.Tensor, hkv: int) -> torch.Tensor:
    """[B, T, H_q, D] -> [B, T, H_kv, G, D] (a view): query head h reads kv head h // G."""
    return x.unflatten(2, (hkv, x.shape[2] // hkv))


def run(spec: LinearSpec, tensors: dict, scale: float):
    """``(out, (kv, ksum))``; see the module docstring."""
    q, k, v = tensors["q"], tensors["k"], tensors["v"]
    phi = feature_map_fn(spec.feature_map)
    compute = compute_dtype(q)
    batch, tq, hq, dk = q.shape
    hkv, dv = k.shape[2], v.shape[-1]
    state = tensors.get("initial_state")
    if state is None:
        kv0 = torch.zeros(batch, hkv, dk, dv, dtype=compute, device=q.device)
        ksum0 = torch.zeros(batch, hkv, dk, dtype=compute, device=q.device)
    else:
        kv0, ksum0 = state[0].to(compute), state[1].to(compute)
    if spec.is_causal and tq == 1 and k.shape[1] == 1:
        return _step(q[:, 0], k[:, 0], v[:, 0], kv0, ksum0, phi, scale, spec.normalize)
    if spec.is_causal:
        out, kv, ksum = _CausalLinear.apply(q, k, v, kv0, ksum0, phi, scale, spec.normalize, spec.chunk_size)
        return out, (kv, ksum)
    a = _group(phi(q.to(compute)), hkv) * scale
    b = phi(k.to(compute))
    kv = kv0 + torch.einsum("bshd,bshe->bhde", b, v.to(compute))
    ksum = ksum0 + b.sum(1)
    num = torch.einsum("bthgd,bhde->bthge", a, kv)
    if spec.normalize:
        den = torch.einsum("bthgd,bhd->bthg", a, ksum)[..., None]
        num = safe_divide(num, den) if spec.denominator_min is None else num / den.clamp(min=spec.denominator_min)
    return num.flatten(2, 3).to(q.dtype), (kv, ksum)


def _step(q_t, k_t, v_t, kv0, ksum0, phi, scale, normalize):
    """One decoding step: add the token to the state, then read it. q_t [B, H_q, D_k] -> out [B, 1, H_q, D_v]."""
    # A step is a handful of tiny ops, so it is written with plain matmuls (no einsum parsing).
    compute = kv0.dtype
    hq, hkv = q_t.shape[1], k_t.shape[1]
    b = phi(k_t.to(compute))
    kv = torch.addcmul(kv0, b[..., :, None], v_t.to(compute)[..., None, :])
    ksum = ksum0 + b
    a = phi(q_t.to(compute)).unflatten(1, (hkv, hq // hkv))
    if scale != 1.0:
        a = a * scale
    num = torch.matmul(a, kv)  # [B, H_kv, G, D_v]
    if normalize:
        num = safe_divide(num, torch.matmul(a, ksum[..., None]))
    return num.flatten(1, 2)[:, None].to(q_t.dtype), (kv, ksum)


# The chunks of one step are processed together, so a step issues the same few ops whatever its
# number of chunks (one op per 64-token chunk is dominated by dispatch on a CPU); the tensors of a
# step are bounded by this many tokens, not by T (a few MiB at 4 heads x 64).
BLOCK_TOKENS = 512


def _steps(tq: int, tkv: int, block: int) -> list[tuple]:
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
        for q0, q1, k0, k1, masked in _steps(tq, tkv, block):
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
                    num = safe_divide(num, den[..., None])
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
        steps = _steps(tq, tkv, chunk * max(1, BLOCK_TOKENS // chunk))
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
