"""Fast RAT in plain PyTorch (runs on any device): a scan inside chunks, attention over chunk states by query tiles.

Shapes:
    q: [B, T, H_q, D]  k: [B, T, H_kv, D]  v: [B, T, H_kv, D_v]
    key_gate / value_gate: broadcastable to k / v (e.g. [B, T, H_kv, 1])
    returns (out [B, T, H_q, D_v] in q's dtype, lse [B, T, H_q] float32, float64 for float64)

Definitions are those of ``glocal.backends.reference.rat`` (and ``glocal.rat_attention``):
k~_t = g_t * k~_{t-1} + (1 - g_t) * k_t inside each chunk of C positions, from 0 before a chunk's
first position (the same for v~ with the value gate); a query in chunk c attends, in one
softmax, the final states of the chunks j < c and its own running state (k~_t, v~_t).

The recurrence h_t = a_t * h_{t-1} + b_t (a = g, b = (1 - g) * x) runs over all chunks at once:
positions one after another inside sub-blocks of SUB_BLOCK positions (one fused multiply-add over
the whole sequence per position: a single pass over the data), and for longer chunks the
sub-blocks are joined by a Hillis-Steele scan of their (gate product, end state) pairs, with
(a1, b1) then (a2, b2) = (a1 * a2, a2 * b1 + b2): ceil(log2(C / SUB_BLOCK)) steps on tensors
SUB_BLOCK times smaller, then one correction pass. Products of gates in [0, 1] only, no division.

The attention runs by tiles of whole chunks of queries: a tile's scores against the chunk states
up to its last chunk are one matmul; in the row of a query in chunk c, column c (its own chunk's
final state, which it does not attend) holds its own state's score instead and the later columns
are -inf, so one row-local log_softmax gives the probabilities and the lse; the output is one
more matmul plus p_own * v~_t. Only the lse is kept; the backward recomputes each tile's
probabilities from it (FlashAttention style) and runs the recurrence's adjoint,
lambda_t = dh_t + g_{t+1} * lambda_{t+1}, as the same scan backwards. Memory: inputs, outputs,
the states k~ and v~ (O(T * D)) and one tile's scores, QUERY_TILE_SCORES floats
(O(T / C * tile)); a T x (T / C) score matrix never exists at once.

Example:
    >>> import torch
    >>> from glocal.backends.cpu import rat
    >>> from glocal.spec import RATSpec
    >>> q = k = v = torch.randn(1, 40, 2, 16)
    >>> g = torch.full((1, 40, 2, 1), 0.5)
    >>> out, lse = rat.run(RATSpec(8), {"q": q, "k": k, "v": v, "key_gate": g, "value_gate": g}, 0.25)
    >>> out.shape, lse.shape
    (torch.Size([1, 40, 2, 16]), torch.Size([1, 40, 2]))
"""

from __future__ import annotations

import torch

from ...config import nan_poisoning_enabled
from ...numerics import compute_dtype, lse_dtype
from ...spec import RATSpec

NAME = "cpu"

# Positions scanned one after another inside a chunk; longer chunks join sub-blocks of this many
# positions with a logarithmic scan. One position is one fused op over the whole sequence, so
# short chunks cost one pass over the data instead of log2(C) passes.
SUB_BLOCK = 16
# Score elements (batch x query heads x tile queries x chunks) one query tile may hold: 2^21
# floats, 8 MiB in float32, so the scores of a tile stay in the last-level cache's neighbourhood.
QUERY_TILE_SCORES = 1 << 21


def can_run(spec, tensors: dict) -> list[str]:
    """Any device and float dtype."""
    if not isinstance(spec, RATSpec):
        return [f"cpu does not implement {type(spec).__name__} as RAT attention"]
    return []


def run(spec: RATSpec, tensors: dict, scale: float):
    """``(out, lse)``; see the module docstring."""
    return _RAT.apply(tensors["q"], tensors["k"], tensors["v"], tensors["key_gate"], tensors["value_gate"],
                      spec.chunk_size, float(scale))


def _empty(*shape, dtype, device):
    """An output buffer: NaN-filled under glocal.config.nan_poisoning, so an unwritten element shows."""
    if nan_poisoning_enabled():
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


# --- the recurrence inside chunks ------------------------------------------------------------------


def _gate_view(gate: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The gate expanded (a view) to x's [B, T, H] and its own last axis (1 or D): [B, T, H, 1 or D]."""
    return gate.expand(*x.shape[:-1], gate.shape[-1] if gate.dim() > 0 else 1)


def _block_shape(length: int, chunk: int) -> tuple[int, int, int]:
    """(chunks n, sub-blocks per chunk nb, positions per sub-block s) of a sequence of ``length``."""
    s = min(chunk, SUB_BLOCK)
    return -(-length // chunk), -(-chunk // s), s


def _to_blocks(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """[B, T, H, F] -> [B, n, nb, s, H, F]: chunks, their sub-blocks, positions (zero-padded where needed).

    A view when T is a multiple of the chunk and the chunk of the sub-block; otherwise a copy with
    zeros after each chunk's last position (they only reach later padding, which is dropped).
    """
    batch, length = x.shape[:2]
    n, nb, s = _block_shape(length, chunk)
    if length == n * chunk and nb * s == chunk:
        return x.unflatten(1, (n, nb, s))
    buf = x.new_zeros(batch, n, nb * s, *x.shape[2:])
    full = length // chunk
    buf[:, :full, :chunk] = x[:, :full * chunk].unflatten(1, (full, chunk))
    if length > full * chunk:
        buf[:, full, :length - full * chunk] = x[:, full * chunk:]
    return buf.unflatten(2, (nb, s))


def _from_blocks(y: torch.Tensor, length: int, chunk: int) -> torch.Tensor:
    """Inverse of :func:`_to_blocks`: [B, n, nb, s, H, F] -> [B, T, H, F] (a view when nothing was padded)."""
    return y.flatten(2, 3)[:, :, :chunk].flatten(1, 2)[:, :length]


def _log_scan(a: torch.Tensor, b: torch.Tensor, reverse: bool) -> torch.Tensor:
    """Inclusive Hillis-Steele scan of h_i = a_i * h_{i-1} + b_i along axis 2 (h_{i+1} when reverse)."""
    length, step = b.shape[2], 1
    while step < length:
        rest = length - step
        if reverse:
            b = torch.cat([torch.addcmul(b[:, :, :rest], a[:, :, :rest], b[:, :, step:]), b[:, :, rest:]], 2)
            a = torch.cat([a[:, :, :rest] * a[:, :, step:], a[:, :, rest:]], 2)
        else:
            b = torch.cat([b[:, :, :step], torch.addcmul(b[:, :, step:], a[:, :, step:], b[:, :, :rest])], 2)
            a = torch.cat([a[:, :, :step], a[:, :, step:] * a[:, :, :rest]], 2)
        step *= 2
    return b


def _scan_(a: torch.Tensor, h: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """In place on ``h`` (holding b): h_i = a_i * h_{i-1} + b_i inside each chunk, from 0 before its first position.

    Both in the block layout [B, n, nb, s, H, F] (a's F may be 1); with ``reverse`` the
    recurrence runs from each chunk's last position to its first (h_{i+1} instead of h_{i-1}).
    """
    nb, s = h.shape[2], h.shape[3]
    order = range(s - 1, -1, -1) if reverse else range(s)
    # The product of the gates from the sub-block's start to each position, to bring in the
    # sub-block's incoming state afterwards; one sub-block per chunk needs none.
    prod = torch.empty(a.shape, dtype=a.dtype, device=a.device) if nb > 1 else None
    prev = None
    for pos in order:
        if prev is None:
            if prod is not None:
                prod[:, :, :, pos] = a[:, :, :, pos]
        else:
            torch.addcmul(h[:, :, :, pos], a[:, :, :, pos], h[:, :, :, prev], out=h[:, :, :, pos])
            if prod is not None:
                torch.mul(a[:, :, :, pos], prod[:, :, :, prev], out=prod[:, :, :, pos])
        prev = pos
    if nb > 1:
        last = prev  # the sub-blocks' final positions in scan order: each sub-block's end state and product
        total = _log_scan(prod[:, :, :, last], h[:, :, :, last], reverse)
        carry = torch.zeros_like(total)  # the state entering each sub-block
        if reverse:
            carry[:, :, :-1] = total[:, :, 1:]
        else:
            carry[:, :, 1:] = total[:, :, :-1]
        h.addcmul_(prod, carry[:, :, :, None])
    return h


def _recurrence(x: torch.Tensor, gate: torch.Tensor, chunk: int, compute) -> torch.Tensor:
    """x~ [B, T, H, F] (compute dtype) with x~_t = g_t * x~_{t-1} + (1 - g_t) * x_t inside chunks."""
    xb = _to_blocks(x.to(compute), chunk)
    gb = _to_blocks(_gate_view(gate, x).to(compute), chunk)
    h = torch.addcmul(xb, gb, xb, value=-1.0)  # b = (1 - g) * x, scanned in place
    h = _from_blocks(_scan_(gb, h), x.shape[1], chunk)
    return h if h.is_contiguous() else h.contiguous()


def _recurrence_backward(dh: torch.Tensor, h: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, chunk: int):
    """Gradients (dx, dgate) of :func:`_recurrence` from dh, the gradient of x~ (consumed).

    The adjoint lambda_t = dh_t + g_{t+1} * lambda_{t+1} (g_{t+1} = 0 past a chunk's last
    position) is the same scan run backwards; then dx_t = (1 - g_t) * lambda_t and
    dg_t = lambda_t * (x~_{t-1} - x_t), with x~ = 0 before a chunk's first position.
    """
    compute = h.dtype
    length = x.shape[1]
    gb = _to_blocks(_gate_view(gate, x).to(compute), chunk)
    g_flat = gb.flatten(2, 3)  # [B, n, C', H, F]: chunks and their (padded) positions
    g_next = torch.zeros_like(g_flat)
    g_next[:, :, :-1] = g_flat[:, :, 1:]
    lam = _scan_(g_next.unflatten(2, gb.shape[2:4]), _to_blocks(dh, chunk), reverse=True)
    lam_flat = lam.flatten(2, 3)
    h_before = torch.zeros_like(lam_flat)
    h_before[:, :, 1:] = _to_blocks(h, chunk).flatten(2, 3)[:, :, :-1]
    xb = _to_blocks(x.to(compute), chunk).flatten(2, 3)
    dgate = h_before.sub_(xb).mul_(lam_flat)
    dx = torch.addcmul(lam_flat, g_flat, lam_flat, value=-1.0)
    dx = _from_blocks(dx.unflatten(2, gb.shape[2:4]), length, chunk)
    dgate = _from_blocks(dgate.unflatten(2, gb.shape[2:4]), length, chunk)
    return dx.to(x.dtype), dgate.sum_to_size(gate.shape).to(gate.dtype)


# --- the attention over chunk states ---------------------------------------------------------------


def _tile_chunks(batch: int, hq: int, length: int, chunk: int) -> int:
    """Chunks of queries per tile: as many as keep a tile's scores within QUERY_TILE_SCORES."""
    n = -(-length // chunk)
    return max(1, min(n, QUERY_TILE_SCORES // max(1, batch * hq * chunk * n)))


def _tiles(length: int, chunk: int, per_tile: int):
    """(t0, t1, c0, seen): a tile's query range, its first chunk and the chunks its last query attends."""
    for c0 in range(0, -(-length // chunk), per_tile):
        t0, t1 = c0 * chunk, min((c0 + per_tile) * chunk, length)
        yield t0, t1, c0, (t1 - 1) // chunk


def _heads_first(x: torch.Tensor, hkv: int, compute) -> torch.Tensor:
    """[B, L, H_q, F] -> [B, H_kv, G, L, F] (a view; query head h is kv head h // G, member h % G)."""
    return x.to(compute).unflatten(2, (hkv, x.shape[2] // hkv)).permute(0, 2, 3, 1, 4)


def _tile_queries(q: torch.Tensor, hkv: int, compute, scale: float) -> torch.Tensor:
    """A tile's queries times the scale, [B, L, H_q, D] -> [B, H_kv, G, L, D], contiguous in one pass."""
    view = _heads_first(q, hkv, compute)
    return torch.mul(view, scale, out=torch.empty(view.shape, dtype=compute, device=q.device))


def _heads_last(x: torch.Tensor) -> torch.Tensor:
    """[B, H_kv, G, L, ...] -> [B, L, H_q, ...]."""
    return x.movedim(3, 1).flatten(2, 3)


def _tile_scores(qs, kf, own, t0, t1, c0, seen, chunk):
    """A tile's scores [B, H_kv, G, L, seen + 1] and the column of each query's own state, [B, H_kv, G, L, 1].

    Columns 0..seen are the chunk states up to the tile's last chunk (kf has a zero row at the end
    for a partial last chunk). A query in chunk c sees the columns j < c; column c, its own
    chunk's final state, is never seen (it is not earlier), so it holds the own state's score,
    and the columns after it are -inf. One softmax over the row is then the softmax over the
    query's keys; the caller swaps column c's value for the own state's when reading it.
    """
    s = torch.matmul(qs.flatten(2, 3), kf[:, :, :seen + 1].transpose(-1, -2)).unflatten(2, qs.shape[2:4])
    query_chunk = torch.arange(t0, t1, device=qs.device) // chunk
    cols = torch.arange(c0, seen + 1, device=qs.device)
    s[..., c0:].masked_fill_(cols[None, :] > query_chunk[:, None], -float("inf"))
    own_col = query_chunk[:, None].expand(*own.shape, 1)
    return s.scatter_(-1, own_col, own[..., None]), own_col


def _chunk_states(x_tilde: torch.Tensor, chunk: int) -> torch.Tensor:
    """The final state of every full chunk and a zero row, [B, T, H, F] -> [B, H, n_full + 1, F] (contiguous)."""
    ends = x_tilde[:, chunk - 1::chunk].transpose(1, 2)
    return torch.cat([ends, ends.new_zeros(*ends.shape[:2], 1, ends.shape[-1])], 2)


class _RAT(torch.autograd.Function):
    """RAT forward and backward; see the module docstring. Index names: H_kv heads, G queries per kv head."""

    @staticmethod
    def forward(ctx, q, k, v, key_gate, value_gate, chunk, scale):
        compute = compute_dtype(q)
        batch, length, hq, _ = q.shape
        hkv, dv = k.shape[2], v.shape[-1]
        kt = _recurrence(k, key_gate, chunk, compute)  # [B, T, H_kv, D]
        vt = _recurrence(v, value_gate, chunk, compute)
        kf, vf = _chunk_states(kt, chunk), _chunk_states(vt, chunk)
        out = _empty(batch, length, hq, dv, dtype=q.dtype, device=q.device)
        lse = _empty(batch, length, hq, dtype=lse_dtype(q), device=q.device)
        for t0, t1, c0, seen in _tiles(length, chunk, _tile_chunks(batch, hq, length, chunk)):
            qs = _tile_queries(q[:, t0:t1], hkv, compute, scale)  # [B, H_kv, G, L, D]
            k_own = kt[:, t0:t1].permute(0, 2, 1, 3)[:, :, None]  # [B, H_kv, 1, L, D]
            v_own = vt[:, t0:t1].permute(0, 2, 1, 3)[:, :, None]
            own = (qs * k_own).sum(-1)  # the own running state's score, [B, H_kv, G, L]
            s, own_col = _tile_scores(qs, kf, own, t0, t1, c0, seen, chunk)
            logp = torch.log_softmax(s, -1)  # row by row, in cache
            tile_lse = own - logp.gather(-1, own_col)[..., 0]
            p = logp.exp_()
            p_own = p.gather(-1, own_col)
            p.scatter_(-1, own_col, 0.0)  # the own column's value is v~_t, not its chunk's final state
            o = torch.matmul(p.flatten(2, 3), vf[:, :, :seen + 1]).unflatten(2, p.shape[2:4])
            o = o.addcmul_(p_own, v_own)
            out[:, t0:t1] = _heads_last(o)
            lse[:, t0:t1] = _heads_last(tile_lse)
        if any(ctx.needs_input_grad[:5]):
            ctx.save_for_backward(q, k, v, key_gate, value_gate, kt, vt, out, lse)
        ctx.chunk, ctx.scale = chunk, scale
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, key_gate, value_gate, kt, vt, out, lse = ctx.saved_tensors
        chunk, scale = ctx.chunk, ctx.scale
        compute = kt.dtype
        batch, length, hq, _ = q.shape
        hkv = k.shape[2]
        kf, vf = _chunk_states(kt, chunk), _chunk_states(vt, chunk)
        dkf, dvf = torch.zeros_like(kf), torch.zeros_like(vf)
        dq = _empty(*q.shape, dtype=q.dtype, device=q.device)
        dkt = _empty(*kt.shape, dtype=compute, device=q.device)
        dvt = _empty(*vt.shape, dtype=compute, device=q.device)
        # delta_t = sum_j p_tj dp_tj = dout_t . out_t, minus the lse's gradient (d lse / d s_tj = p_tj);
        # autograd hands zeros for an output without a gradient.
        delta = (dout.to(compute) * out.to(compute)).sum(-1).sub_(dlse.to(compute))
        for t0, t1, c0, seen in _tiles(length, chunk, _tile_chunks(batch, hq, length, chunk)):
            qs = _tile_queries(q[:, t0:t1], hkv, compute, scale)
            do = _tile_queries(dout[:, t0:t1], hkv, compute, 1.0)  # [B, H_kv, G, L, D_v]
            k_own = kt[:, t0:t1].permute(0, 2, 1, 3)[:, :, None]
            v_own = vt[:, t0:t1].permute(0, 2, 1, 3)[:, :, None]
            tile_lse = _heads_first(lse[:, t0:t1, :, None], hkv, compute)[..., 0]
            tile_delta = _heads_first(delta[:, t0:t1, :, None], hkv, compute)[..., 0]
            s, own_col = _tile_scores(qs, kf, (qs * k_own).sum(-1), t0, t1, c0, seen, chunk)
            p = s.sub_(tile_lse[..., None]).exp_()
            p_own = p.gather(-1, own_col)[..., 0]
            p.scatter_(-1, own_col, 0.0)
            ds_own = ((do * v_own).sum(-1) - tile_delta).mul_(p_own)  # gradient of the own score
            dkt[:, t0:t1] = (ds_own[..., None] * qs).sum(2).transpose(1, 2)
            dvt[:, t0:t1] = (p_own[..., None] * do).sum(2).transpose(1, 2)
            p2, do2 = p.flatten(2, 3), do.flatten(2, 3)
            dvf[:, :, :seen + 1] += torch.matmul(p2.transpose(-1, -2), do2)
            ds = torch.matmul(do2, vf[:, :, :seen + 1].transpose(-1, -2)).unflatten(2, p.shape[2:4])
            ds = ds.sub_(tile_delta[..., None]).mul_(p)  # 0 in the own column, where p is 0
            dqs = torch.matmul(ds.flatten(2, 3), kf[:, :, :seen + 1]).unflatten(2, p.shape[2:4])
            dqs.addcmul_(ds_own[..., None], k_own)
            dkf[:, :, :seen + 1] += torch.matmul(ds.flatten(2, 3).transpose(-1, -2), qs.flatten(2, 3))
            dq[:, t0:t1] = _heads_last(dqs * scale)
        # A chunk's final state is its last position's state: its gradient from later queries adds there.
        dkt[:, chunk - 1::chunk] += dkf[:, :, :-1].transpose(1, 2)  # (the zero row has no position)
        dvt[:, chunk - 1::chunk] += dvf[:, :, :-1].transpose(1, 2)
        dk, dkey_gate = _recurrence_backward(dkt, kt, k, key_gate, chunk)
        dv, dvalue_gate = _recurrence_backward(dvt, vt, v, value_gate, chunk)
        return dq, dk, dv, dkey_gate, dvalue_gate, None, None
