"""Fast Parallax and Local Linear Attention in plain PyTorch (runs on any device), forward and backward.

Shapes:
    q, r: [B, T, H_q, D]   k: [B, T, H_kv, D]   v: [B, T, H_kv, D_v]
    returns (out [B, T, H_q, D_v], lse [B, T, H_q]); definitions of ``glocal.backends.reference.local_linear``

Example:
    >>> import torch
    >>> from glocal.backends.cpu import local_linear
    >>> from glocal.spec import LocalLinearSpec
    >>> q = r = k = v = torch.randn(1, 300, 2, 16)
    >>> out, lse = local_linear.run(LocalLinearSpec(64), {"q": q, "r": r, "k": k, "v": v}, 0.25)
    >>> out.shape, lse.shape
    (torch.Size([1, 300, 2, 16]), torch.Size([1, 300, 2]))

How it works. With o_i = sum_j s_ij v_j the Parallax output is
    out_i = o_i (1 + r_i . mu_i) - sum_j s_ij (r_i . k_j) v_j,
so a query needs its softmax row P, P K (for mu), r K^T and (P * (1 + r.mu - r K^T)) V. Windows
are glocal's 1-D neighborhood windows (``glocal.spec.axis_window``), monotone in the query, so
the keys of a tile of ``t`` consecutive queries are one contiguous span:

- a kv head's rows are its G = H_q / H_kv query heads side by side, ``[t * G, D]`` per tile; for
  G = 1 (and MQA) they are a strided view of q as given, otherwise a small copy per batch;
- interior tiles (tile n's span starts at key n * t - c, c = K - 1 causal, K // 2 centred) are
  batched per head as a strided view of the keys as given (``Tensor.unfold``: spans of
  S = ceil((t + K - 1) / t) * t keys stepping by t, no copy), scored with one batched matmul for
  the batch (``baddbmm``: the scale and the window mask, a -inf bias, fused in), softmax with lse;
  every interior tile has the same window pattern (a band), so one bias serves them all;
- tiles at the borders (whose span would leave the sequence, or whose windows are shifted
  inward) and problems whose window covers the sequence (``window_size=None`` or >= T) run as
  query blocks against the exact union of their windows, a plain slice of the keys;
- nothing is padded or laid out again, and no T x T tensor exists: a batch's score block is
  bounded by ``BLOCK_FLOATS`` (it stays in the caches), one block at a time.

The Parallax backward recomputes each block's P from the saved lse, mu and o (a
torch.autograd.Function, gradients derived by hand in ``_parallax_block_grads``); the gradients of
overlapping spans are added block by block (S is a multiple of t: tile n's span is t-blocks
n .. n + S/t - 1 from its start). Local Linear Attention adds per query the D x D covariance of its
window's keys, centred on mu_i, and a batched solve (torch.linalg.solve) of
(Sigma_i + ridge I) r_i = mu_i - q_i, O(T * K * D^2); its backward recomputes each block with
autograd (through the solve), so memory stays per block. float32 and float64 compute in their
precision, bfloat16 and float16 in float32 (one converted copy of the inputs).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from ... import config
from ...numerics import compute_dtype
from ...spec import LocalLinearSpec, axis_window

NAME = "cpu"

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# Upper bound on the floats of one batch's score block ([tiles, rows, span]); a few such blocks live
# at once, so a batch stays in the processor's caches, and no T x T tensor is ever formed.
BLOCK_FLOATS = 1 << 20
# exp is clamped below at this: on the CPU, torch's exp of -inf (a masked key) is ~3x slower than of a number,
# and of inputs below about -87 (float32 denormal results) up to ~20x. e^-80 ~ 1.8e-35 is no weight at all next
# to the row's largest, e^0 = 1: for finite inputs the sums come out bitwise as with exact zeros.
EXP_FLOOR = -80.0
# Local Linear Attention's outer products of a chunk's keys ([keys, D^2]) are bounded by this.
LLA_BLOCK_FLOATS = 1 << 22


def can_run(spec, tensors: dict) -> list[str]:
    if not isinstance(spec, LocalLinearSpec):
        return [f"cpu does not implement {type(spec).__name__} as local linear attention"]
    q = tensors.get("q")
    if q is not None and q.dtype not in _DTYPES:
        return [f"cpu takes float32, float64, bfloat16 or float16; got {q.dtype}"]
    return []


# ---------------------------------------------------------------------------- planning


def tile_size(window: int, group: int) -> int:
    """Queries per tile: 64 query rows (t * G) for long windows, fewer for short ones (less span wasted)."""
    tile = max(8, 64 // group)
    while tile > 8 and tile >= 2 * window:
        tile //= 2
    return tile


class Block(NamedTuple):
    """Queries q0..q1 as ``nb`` tiles; tile i attends keys k0 + i * tile + [0, span) (of one kv head at a time)."""

    q0: int
    q1: int
    nb: int
    k0: int
    span: int
    band: bool  # interior tiles: every tile's windows are the same band (one mask for all)


class _Plan:
    """Windows and blocks of one (T, window, causal, tile) problem; see the module docstring.

    ``lo``/``hi`` [T]: the half-open key range of each query. ``runs``: ("strided", n0, n1) runs of interior
    tiles and ("folded", q0, q1) query ranges, in sequence order.
    """

    def __init__(self, length: int, window, causal: bool, tile: int):
        self.length, self.tile = length, tile
        self.kernel = length if window is None else min(window, length)
        self.runs, self.span, self.offset, self._bands, self._blocks = [], 0, 0, {}, {}
        n_tiles = -(-length // tile)
        if length == 0:
            return
        _, self.lo, self.hi = axis_window(torch.arange(length), length, self.kernel, 1, 1, causal)
        interior = [False] * n_tiles
        full = length // tile  # the last tile, if partial, is folded
        if self.kernel < length and full:
            # Tile n's span: keys n * tile - c + [0, span). Interior: the span lies in the sequence and every
            # query u of the tile attends keys u .. u + K - 1 of it (the band; no window shifted at a border).
            c = self.kernel - 1 if causal else self.kernel // 2
            self.span, self.offset = -(-(tile + self.kernel - 1) // tile) * tile, c
            first = torch.arange(full)[:, None] * tile - c
            u = torch.arange(tile)
            band = ((self.lo[:full * tile].view(full, tile) - first == u).all(1)
                    & (self.hi[:full * tile].view(full, tile) - first == u + self.kernel).all(1))
            interior[:full] = (band & (first[:, 0] >= 0) & (first[:, 0] + self.span <= length)).tolist()
        n = 0
        while n < n_tiles:  # maximal runs of tiles of one kind
            m = n
            while m < n_tiles and interior[m] == interior[n]:
                m += 1
            self.runs.append(("strided", n, m) if interior[n] else ("folded", n * tile, min(m * tile, length)))
            n = m

    def blocks(self, group: int, budget: int) -> list[Block]:
        """Every run cut into blocks whose score block ``[tiles, t * G, span]`` holds at most ``budget`` floats."""
        if (group, budget) not in self._blocks:
            self._blocks[group, budget] = self._cut(group, budget)
        return self._blocks[group, budget]

    def _cut(self, group: int, budget: int) -> list[Block]:
        t, blocks = self.tile, []
        for run in self.runs:
            if run[0] == "strided":
                _, a, b = run
                nb = max(1, min(b - a, budget // (t * group * self.span)))
                for n0 in range(a, b, nb):
                    n1 = min(n0 + nb, b)
                    blocks.append(Block(n0 * t, n1 * t, n1 - n0, n0 * t - self.offset, self.span, True))
                continue
            _, a, b = run
            widest = int(self.hi[b - 1] - self.lo[a])
            step = max(t, budget // (group * widest) // t * t)
            for q0 in range(a, b, step):
                q1 = min(q0 + step, b)
                k0 = int(self.lo[q0])
                blocks.append(Block(q0, q1, 1, k0, int(self.hi[q1 - 1]) - k0, False))
        return blocks

    def outside(self, block: Block, group: int, device) -> torch.Tensor:
        """Bool ``[1, rows, span]``: True where a row's query does not attend the key (rows = queries * G)."""
        if block.band:  # interior tiles: key s of a tile's span is attended by its query u iff u <= s < u + K
            u, s = torch.arange(self.tile)[:, None], torch.arange(self.span)[None, :]
            out = (s < u) | (s >= u + self.kernel)
        else:  # one query block against the union of its windows
            keys = block.k0 + torch.arange(block.span)
            queries = torch.arange(block.q0, block.q1)[:, None]
            out = (keys < self.lo[queries]) | (keys >= self.hi[queries])
        return out[None].repeat_interleave(group, dim=1).to(device)

    def edges(self, block: Block):
        """``(tile, K)`` when only a band block's first ``tile`` columns and those from K on hold masked keys."""
        return (self.tile, self.kernel) if block.band and self.kernel >= self.tile else None

    def bias(self, block: Block, group: int, dtype, device) -> torch.Tensor:
        """``outside`` as an additive score bias (-inf where not attended, else 0); the band's is kept."""
        key = (group, dtype, str(device))
        if block.band and key in self._bands:
            return self._bands[key]
        outside = self.outside(block, group, device)
        bias = torch.zeros(outside.shape, dtype=dtype, device=device).masked_fill_(outside, -float("inf"))
        if block.band:
            self._bands[key] = bias
        return bias


@functools.lru_cache(maxsize=64)
def _plan(length: int, window, causal: bool, tile: int) -> _Plan:
    return _Plan(length, window, causal, tile)


# ---------------------------------------------------------------------------- views of one block and kv head


def _part(x: torch.Tensor, block: Block, head: int, group: int) -> torch.Tensor:
    """The block's queries of kv head ``head`` (= b * H_kv + h) in ``x [B, T, H_kv * G, ...]``: [queries, G, ...]."""
    b, h = divmod(head, x.shape[2] // group)
    return x[b, block.q0:block.q1, h * group:(h + 1) * group]


def _rows(x: torch.Tensor, block: Block, head: int, group: int) -> torch.Tensor:
    """``[nb, t * G, ...]`` rows of a block (a view when G = 1 or H_kv = 1, else a small copy)."""
    part = _part(x, block, head, group)
    return part.reshape(block.nb, (block.q1 - block.q0) // block.nb * group, *part.shape[2:])


def _put(dst: torch.Tensor, block: Block, head: int, group: int, src: torch.Tensor) -> None:
    part = _part(dst, block, head, group)
    part.copy_(src.reshape(part.shape))


def _spans(x: torch.Tensor, block: Block, head: int, tile: int) -> torch.Tensor:
    """Key (value) spans of a block in ``x [B, T, H_kv, D]``: ``[nb, span, D]``, a view (``unfold``'s strided spans)."""
    b, h = divmod(head, x.shape[2])
    seq = x[b, :, h]
    if block.nb == 1:
        return seq[block.k0:block.k0 + block.span][None]
    return seq[block.k0:block.k0 + (block.nb - 1) * tile + block.span].unfold(0, block.span, tile).transpose(1, 2)


def _add_spans(acc: torch.Tensor, grads: torch.Tensor, block: Block, head: int, tile: int) -> None:
    """Overlap-add a block's span gradients ``[nb, span, D]`` into ``acc [B, T, H_kv, D]``."""
    b, h = divmod(head, acc.shape[2])
    seq = acc[b, :, h]
    if block.nb == 1:
        seq[block.k0:block.k0 + block.span] += grads[0]
        return
    blocks = grads.view(block.nb, block.span // tile, tile, seq.shape[-1])
    for j in range(block.span // tile):  # t-block j of tile i's span is t-block i + j from the first span's start
        rows = seq[block.k0 + j * tile:block.k0 + (j + block.nb) * tile]
        rows.view(block.nb, tile, seq.shape[-1]).add_(blocks[:, j])


def _empty(like: torch.Tensor, shape) -> torch.Tensor:
    """An output buffer, NaN-filled under glocal.config.nan_poisoning so an unwritten element shows."""
    if config.nan_poisoning_enabled():
        return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _heads(x: torch.Tensor) -> int:
    return x.shape[0] * x.shape[2]


# ---------------------------------------------------------------------------- Parallax


def _scores(q, kt, bias, scale, edges):
    """``scale q k^T`` plus the window bias (-inf outside). For the band, only the first ``tile`` columns and those
    from K on hold masked keys (``edges = (tile, K)``): the bias is added there alone, not over the whole block."""
    if edges is None:
        return torch.baddbmm(bias, q, kt, alpha=scale)
    tile, kernel = edges
    scores = torch.bmm(q * scale, kt)
    scores[..., :tile] += bias[..., :tile]
    scores[..., kernel:] += bias[..., kernel:]
    return scores


def _parallax_block(q, r, k, v, bias, scale, edges, with_mu_o):
    """Forward of one block of one kv head: ``(out, lse, mu, o)`` of its rows (mu, o None unless ``with_mu_o``)."""
    kt = k.transpose(1, 2)
    e = _scores(q, kt, bias, scale, edges)
    row_max = e.amax(-1, keepdim=True)
    e.sub_(row_max).clamp_(min=EXP_FLOOR).exp_()  # unnormalised weights: 1 / l is applied to the [rows, D] results
    total = e.sum(-1, keepdim=True)
    mu = torch.bmm(e, k).div_(total)
    o = torch.bmm(e, v).div_(total) if with_mu_o else None
    # r.k_j - 1 - r.mu = -w_ij for every key, so out = -(1 / l) sum_j e_ij (-w_ij) v_j
    minus_w = torch.bmm(r, kt).sub_(1 + (r * mu).sum(-1, keepdim=True))
    out = torch.bmm(e.mul_(minus_w), v).div_(-total)
    return out, total.log_().add_(row_max).squeeze(-1), mu if with_mu_o else None, o


def _parallax_block_grads(q, r, k, v, bias, scale, edges, lse, mu, o, out, g, dlse):
    """Backward of one block of one kv head: ``(dq, dr, dk, dv)`` from the saved lse, mu and o.

    With z_ij = scale q_i.k_j, w_ij = 1 + r_i.mu_i - r_i.k_j, a_ij = g_i.v_j and go_i = g_i.o_i:
        dv_j  = sum_i p_ij w_ij g_i
        dp_ij = w_ij a_ij + go_i r_i.k_j,   dz_ij = p_ij (dp_ij - delta_i),
        delta_i = sum_j p_ij dp_ij - dlse_i = g_i.out_i + go_i r_i.mu_i - dlse_i
        dq_i  = scale sum_j dz_ij k_j,      dr_i = go_i mu_i - sum_j p_ij a_ij k_j
        dk_j  = sum_i scale dz_ij q_i + p_ij (go_i - a_ij) r_i
    """
    kt = k.transpose(1, 2)
    p = _scores(q, kt, bias, scale, edges).sub_(lse[..., None]).clamp_(min=EXP_FLOOR).exp_()
    go = (g * o).sum(-1, keepdim=True)
    rmu1 = (r * mu).sum(-1, keepdim=True) + 1
    delta = (g * out).sum(-1, keepdim=True) + go * (rmu1 - 1) - dlse[..., None]
    w = torch.bmm(r, kt).neg_().add_(rmu1)
    a = torch.bmm(g, v.transpose(1, 2))
    dv = torch.bmm((p * w).transpose(1, 2), g)
    pa = p * a
    # dp = w a + go (rmu1 - w) = w (a - go) + go rmu1
    dz = a.sub_(go).mul_(w).add_(go * rmu1 - delta).mul_(p)
    dq = torch.bmm(dz, k).mul_(scale)
    dr = torch.baddbmm(go * mu, pa, k, alpha=-1.0)
    y = torch.mul(p, go, out=w).sub_(pa)  # p (go - a)
    dk = torch.baddbmm(torch.bmm(y.transpose(1, 2), r), dz.transpose(1, 2), q, alpha=scale)
    return dq, dr, dk, dv


class _ParallaxFunction(torch.autograd.Function):
    """Parallax of q, r [B, T, H_q, D], k [B, T, H_kv, D], v [B, T, H_kv, D_v] in the compute dtype: (out, lse)."""

    @staticmethod
    def forward(ctx, q, r, k, v, plan, scale):
        group = q.shape[2] // k.shape[2]
        out = _empty(q, (*q.shape[:3], v.shape[-1]))
        lse = _empty(q, q.shape[:3])
        keep = any(ctx.needs_input_grad[:4])
        mu, o = (_empty(q, q.shape), _empty(q, out.shape)) if keep else (None, None)
        for block in plan.blocks(group, BLOCK_FLOATS):
            bias, edges = plan.bias(block, group, q.dtype, q.device), plan.edges(block)
            for head in range(_heads(k)):
                res = _parallax_block(_rows(q, block, head, group), _rows(r, block, head, group),
                                      _spans(k, block, head, plan.tile), _spans(v, block, head, plan.tile), bias, scale,
                                      edges, keep)
                for dst, src in zip((out, lse, mu, o), res):
                    if dst is not None:
                        _put(dst, block, head, group, src)
        ctx.save_for_backward(q, r, k, v, out, lse, mu, o)
        ctx.plan, ctx.scale = plan, scale
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, r, k, v, out, lse, mu, o = ctx.saved_tensors
        plan, scale, group = ctx.plan, ctx.scale, q.shape[2] // k.shape[2]
        dq, dr, dk, dv = _empty(q, q.shape), _empty(r, r.shape), torch.zeros_like(k), torch.zeros_like(v)
        for block in plan.blocks(group, BLOCK_FLOATS):
            bias, edges = plan.bias(block, group, q.dtype, q.device), plan.edges(block)
            for head in range(_heads(k)):
                rows = [_rows(x, block, head, group) for x in (q, r, lse, mu, o, out, dout, dlse)]
                kw, vw = _spans(k, block, head, plan.tile), _spans(v, block, head, plan.tile)
                gq, gr, gk, gv = _parallax_block_grads(rows[0], rows[1], kw, vw, bias, scale, edges, *rows[2:])
                _put(dq, block, head, group, gq)
                _put(dr, block, head, group, gr)
                _add_spans(dk, gk, block, head, plan.tile)
                _add_spans(dv, gv, block, head, plan.tile)
        return dq, dr, dk, dv, None, None


# ---------------------------------------------------------------------------- Local Linear Attention


def _unfold(rows: torch.Tensor, nb: int, tile: int, span: int) -> torch.Tensor:
    """``[nb, span, C]`` spans of ``rows [(nb - 1) * tile + span, C]`` stepping by ``tile`` (a view)."""
    return rows[None] if nb == 1 else rows.unfold(0, span, tile).transpose(1, 2)


def _second_moment(p, keys, nb, tile, span):
    """``sum_j p_ij k_j k_j^T`` per row, ``[nb, rows, D, D]``; ``p`` [nb, rows, span], ``keys`` the rows spans cover.

    The outer products of the keys are formed once for overlapping spans (``[keys, D^2]``); a span too long for
    ``LLA_BLOCK_FLOATS`` is summed in chunks of keys."""
    dim = keys.shape[-1]
    max_keys = max(tile, LLA_BLOCK_FLOATS // (dim * dim))
    if keys.shape[0] <= max_keys:
        outer = (keys[:, :, None] * keys[:, None, :]).flatten(1)
        return torch.bmm(p, _unfold(outer, nb, tile, span)).unflatten(-1, (dim, dim))
    tiles = []
    for i in range(nb):
        parts = []
        for s0 in range(0, span, max_keys):
            chunk = keys[i * tile + s0:i * tile + min(s0 + max_keys, span)]
            parts.append(p[i, :, s0:s0 + chunk.shape[0]] @ (chunk[:, :, None] * chunk[:, None, :]).flatten(1))
        tiles.append(torch.stack(parts).sum(0))
    return torch.stack(tiles).unflatten(-1, (dim, dim))


def _lla_block(q, keys, values, outside, nb, tile, span, scale, ridge):
    """``(out, lse)`` of ``nb`` tiles of LLA rows ``q [nb, rows, D]``, differentiable; ``keys``/``values`` are the rows
    their spans cover (tile i's: rows i * tile + [0, span)), ``outside`` ``[nb, rows, span]``."""
    kw, vw = _unfold(keys, nb, tile, span), _unfold(values, nb, tile, span)
    scores = torch.bmm(q, kw.transpose(1, 2)).mul(scale).masked_fill(outside, -float("inf"))
    lse = torch.logsumexp(scores, -1)
    p = torch.exp(scores - lse[..., None])
    mu = torch.bmm(p, kw)
    # Sigma_i = E_p[(k - c)(k - c)^T] - (mu_i - c)(mu_i - c)^T for any constant c; c = the keys' mean keeps the
    # subtraction from cancelling an offset all keys share (Sigma does not depend on c: no gradient through it)
    centre = keys.detach().mean(0)
    shifted = mu - centre
    sigma = _second_moment(p, keys - centre, nb, tile, span) - shifted[..., :, None] * shifted[..., None, :]
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    rho = torch.linalg.solve(sigma + ridge * eye, (mu - q)[..., None])[..., 0]
    w = p * ((rho * mu).sum(-1, keepdim=True) + 1 - torch.bmm(rho, kw.transpose(1, 2)))
    return torch.bmm(w, vw), lse


def _lla_chunks(block: Block, tile: int, dim: int) -> list[tuple[int, int]]:
    """Tile ranges of a block whose keys' outer products (``[keys, D^2]``) fit LLA_BLOCK_FLOATS (>= 1 tile each)."""
    per_chunk = max(1, (LLA_BLOCK_FLOATS // (dim * dim) - block.span) // tile + 1)
    return [(i, min(i + per_chunk, block.nb)) for i in range(0, block.nb, per_chunk)]


def _key_rows(x: torch.Tensor, block: Block, head: int, tile: int, i0: int, i1: int) -> torch.Tensor:
    """The keys (values) tiles i0..i1 of a block attend, ``[(i1 - i0 - 1) * tile + span, D]``, a view of ``x``."""
    b, h = divmod(head, x.shape[2])
    start = block.k0 + i0 * tile
    return x[b, start:start + (i1 - i0 - 1) * tile + block.span, h]


class _LocalLinearFunction(torch.autograd.Function):
    """Local Linear Attention of q, k, v (as _ParallaxFunction, without r); the backward recomputes per block."""

    @staticmethod
    def forward(ctx, q, k, v, plan, scale, ridge):
        group, tile = q.shape[2] // k.shape[2], plan.tile
        out, lse = _empty(q, (*q.shape[:3], v.shape[-1])), _empty(q, q.shape[:3])
        for block in plan.blocks(group, BLOCK_FLOATS):
            rows = (block.q1 - block.q0) // block.nb * group
            outside = plan.outside(block, group, q.device).expand(block.nb, rows, block.span)
            chunks = _lla_chunks(block, tile, q.shape[-1])
            for head in range(_heads(k)):
                qb = _rows(q, block, head, group)
                ob, lb = qb.new_empty(block.nb, rows, v.shape[-1]), qb.new_empty(block.nb, rows)
                for i0, i1 in chunks:
                    ob[i0:i1], lb[i0:i1] = _lla_block(qb[i0:i1], _key_rows(k, block, head, tile, i0, i1),
                                                      _key_rows(v, block, head, tile, i0, i1), outside[i0:i1],
                                                      i1 - i0, tile, block.span, scale, ridge)
                _put(out, block, head, group, ob)
                _put(lse, block, head, group, lb)
        ctx.save_for_backward(q, k, v)
        ctx.plan, ctx.scale, ctx.ridge = plan, scale, ridge
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v = ctx.saved_tensors
        plan, scale, ridge, group, tile = ctx.plan, ctx.scale, ctx.ridge, q.shape[2] // k.shape[2], ctx.plan.tile
        dq, dk, dv = _empty(q, q.shape), torch.zeros_like(k), torch.zeros_like(v)
        for block in plan.blocks(group, BLOCK_FLOATS):
            rows = (block.q1 - block.q0) // block.nb * group
            outside = plan.outside(block, group, q.device).expand(block.nb, rows, block.span)
            chunks = _lla_chunks(block, tile, q.shape[-1])
            for head in range(_heads(k)):
                qb, g, gl = (_rows(x, block, head, group) for x in (q, dout, dlse))
                gq = torch.empty_like(qb)
                for i0, i1 in chunks:
                    keys, values = _key_rows(k, block, head, tile, i0, i1), _key_rows(v, block, head, tile, i0, i1)
                    leaves = [x.detach().requires_grad_(True) for x in (qb[i0:i1], keys, values)]
                    with torch.enable_grad():
                        ob, lb = _lla_block(*leaves, outside[i0:i1], i1 - i0, tile, block.span, scale, ridge)
                    gq[i0:i1], gk, gv = torch.autograd.grad((ob, lb), leaves, (g[i0:i1], gl[i0:i1]))
                    # the chunk's key rows are one contiguous range: its gradient adds in place
                    _key_rows(dk, block, head, tile, i0, i1).add_(gk)
                    _key_rows(dv, block, head, tile, i0, i1).add_(gv)
                _put(dq, block, head, group, gq)
        return dq, dk, dv, None, None, None


# ---------------------------------------------------------------------------- entry


def run(spec: LocalLinearSpec, tensors: dict, scale: float):
    """``(out [B, T, H_q, D_v], lse [B, T, H_q])`` of Parallax (``spec.ridge`` None) or LLA (see the module doc)."""
    q, k, v = tensors["q"], tensors["k"], tensors["v"]
    compute = compute_dtype(q)
    length, group = q.shape[1], q.shape[2] // k.shape[2]
    window = length if spec.window_size is None else min(spec.window_size, length)
    plan = _plan(length, spec.window_size, spec.is_causal, tile_size(max(1, window), group))
    qc, kc, vc = q.to(compute), k.to(compute), v.to(compute)
    if spec.ridge is None:
        out, lse = _ParallaxFunction.apply(qc, tensors["r"].to(compute), kc, vc, plan, float(scale))
    else:
        out, lse = _LocalLinearFunction.apply(qc, kc, vc, plan, float(scale), float(spec.ridge))
    return out.to(q.dtype), lse
