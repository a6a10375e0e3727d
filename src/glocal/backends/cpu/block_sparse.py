"""Fast block-routed attention (MoBA, VMoBA) in plain PyTorch: gathered blocks, batched attention, exact lse merges.

Shapes: q [B, *grid_q, H_q, D], k [B, *grid, H_kv, D], v [B, *grid, H_kv, D_v] (sequences: grid_q =
(T_q,), grid = (T_kv,); grids: grid_q = grid, tokens row-major), selection [B, H_q, T_q, n_blocks]
bool; returns out [B, *grid_q, H_q, D_v] and lse [B, *grid_q, H_q]. The rule is the contract of
glocal.backends.reference.block_sparse: query i attends key y iff selection[b, h, i, block(y)] and,
when causal, y <= p_i = T_kv - T_q + i.

Two paths, each a torch.autograd.Function whose backward recomputes the probabilities from the
saved lse (delta = rowsum(dO * O) - dlse, dS = P * (dP - delta)); there is no T x T tensor:

- Grouped (training, prefill). (1) The own block of every query: the query slots of a chunk of
  blocks against their key blocks, one batched attention (token-causal inside the block, key
  padding masked), writes (out, lse) of every query. Sequences cut into whole, aligned blocks
  need no gather (views of q, k, v), and their causal blocks run as two causal halves plus the
  rectangle between them (3/4 of the square the kernel would compute). (2) For every key block j, the queries of
  every batch and head that selected j besides their own block (GQA: the query heads of a kv head
  stacked along the rows) are gathered with one index_select, attended against block j's keys in
  one batched call, and merged into (out, lse) exactly: lse' = logaddexp(lse, lse_j), out' =
  exp(lse - lse') out + exp(lse_j - lse') out_j. A query meets a block at most once, so the
  scatter has no conflicts. The backward runs the same tiles from the final (out, lse).
  A tile is attended by torch's fused CPU flash-attention kernel where it applies (CPU tensors,
  D == D_v: ``aten::_scaled_dot_product_flash_attention_for_cpu`` and its backward, which take
  the lse), else by batched matmuls (any device, D != D_v). Gathered copies and score tiles are
  bounded by TILE_ELEMENTS.
- Row gather (decoding, small T_q): each query row (batch, query, head) gathers the keys and
  values of its own selected blocks of its kv head (at most n_selected * block rows) and attends
  them with one batched matmul; nothing of size T_kv is read, converted or copied beyond those rows
  (a strided cache is read through a row view, not made contiguous). For float32 sequences without
  gradients (inference, decoding) the compiled kernel ``kernels/block_sparse.cpp`` does the same
  reading the selected blocks in place, with no gathered copy (``glocal.config.cpu_kernels``).

Partial last blocks and N-D boxes use a plan (cached per problem): the token of every key slot of
every block, padded to the largest block (valid slots first), and the query of every slot of the
blocks that hold queries (sequences: slot s of block j is position j * block + s, so the causal
mask inside a block is the top-left triangle).

Example:
    >>> import torch
    >>> from glocal.backends.cpu import block_sparse
    >>> from glocal.spec import BlockSparseSpec
    >>> q = k = v = torch.randn(1, 10, 2, 4)
    >>> selection = torch.ones(1, 2, 10, 3, dtype=torch.bool)
    >>> spec = BlockSparseSpec((10,), (4,), 10, is_causal=False, top_k=3)
    >>> out, lse = block_sparse.run(spec, {"q": q, "k": k, "v": v, "selection": selection}, 0.5)
    >>> ref = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), scale=0.5)
    >>> torch.allclose(out, ref.transpose(1, 2), atol=1e-6)
    True
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from ... import config
from ...masks import block_layout
from ...numerics import compute_dtype
from ...spec import BlockSparseSpec
from .build import kernels
from .dense import FLASH, flash_backward

NAME = "cpu"

# Gathered tiles (query rows x keys, all batches and heads of one call) hold at most this many elements.
TILE_ELEMENTS = 1 << 22
# Problems whose gathered keys and values (query rows x selected keys x (D + D_v)) fit in this many
# elements run the row gather path (decoding, short prefill); larger ones the grouped path.
GATHER_ELEMENTS = 1 << 22
# ... and gather at most this many copies of the key set (B * T_kv * H_kv rows).
GATHER_COPIES = 8
# Calls with at most this many query rows (B * T_q * H_q: decoding) run the compiled row kernel when it
# applies; it reads the cache in place but scores one key at a time, so long prefills take the tiles.
COMPILED_ROWS = 256
# Whether CPU tiles may use torch's fused flash-attention kernel (tests switch it off to cover the matmul tiles).
USE_FLASH = True
_INF = float("inf")


def can_run(spec, tensors: dict) -> list[str]:
    """Any device and float dtype (plain PyTorch)."""
    if not isinstance(spec, BlockSparseSpec):
        return [f"cpu does not implement {type(spec).__name__} as block-sparse attention"]
    return []


# --------------------------------------------------------------------------------- plan


class _Plan(NamedTuple):
    block_keys: torch.Tensor    # [n, kmax] token of each key slot (valid slots first; pads: a valid token)
    key_valid: torch.Tensor     # [n, kmax]
    key_count: list             # [n] valid slots per block
    query_blocks: torch.Tensor  # [nq] the blocks that hold queries
    query_slots: torch.Tensor   # [nq, kmax] query index of each slot of those blocks, -1 where none
    regular: bool               # sequences cut into whole blocks: block j is the slice [j * kmax, (j + 1) * kmax)


@functools.lru_cache(maxsize=32)
def _plan(grid: tuple, block_shape: tuple, q_len: int, device: torch.device) -> _Plan:
    if len(grid) == 1:
        length, size = grid[0], block_shape[0]
        n = -(-length // size)
        keys = torch.arange(n, device=device)[:, None] * size + torch.arange(min(size, length), device=device)
        valid = keys < length
        offset = length - q_len
        blocks = torch.arange(offset // size, n, device=device) if q_len > 0 else keys.new_zeros(0)
        slots = keys[blocks] - offset
        slots = torch.where((slots >= 0) & valid[blocks], slots, -1)
        return _Plan(keys.clamp(max=max(length - 1, 0)), valid, valid.sum(1).tolist(), blocks, slots,
                     length % size == 0)
    # Grids: group the tokens by block (stable, so each block lists its tokens in row-major order).
    layout = block_layout(grid, block_shape, device)
    n = BlockSparseSpec(grid, block_shape, q_len).n_blocks
    order = torch.argsort(layout, stable=True)
    counts = torch.bincount(layout, minlength=n)
    starts = counts.cumsum(0) - counts
    slot = torch.arange(layout.numel(), device=device) - starts[layout[order]]
    keys = torch.zeros(n, int(counts.max()) if n else 0, dtype=torch.long, device=device)
    valid = torch.zeros_like(keys, dtype=torch.bool)
    keys[layout[order], slot] = order
    valid[layout[order], slot] = True
    keys = torch.where(valid, keys, keys[:, :1])
    return _Plan(keys, valid, counts.tolist(), torch.arange(n, device=device), torch.where(valid, keys, -1), False)


class _Layout(NamedTuple):
    batch: int
    tq: int
    tkv: int
    hq: int
    hkv: int
    is_causal: bool
    scale: float
    flash: bool

    @property
    def group(self) -> int:
        return self.hq // self.hkv


# --------------------------------------------------------------------------------- tile attention
# A tile is q4 [N, H, L, D], k4 [N, H_kv, S, D], v4 [N, H_kv, S, D_v] (any strides; H a multiple of
# H_kv), top-left causal or not, key_bias None or [N, 1, 1, S] (0 or -inf).


def _attend(lay, q4, k4, v4, causal, key_bias):
    """(out [N, H, L, D_v], lse [N, H, L]) of one tile (rows that attend nothing: unspecified)."""
    if lay.flash:
        return FLASH(q4, k4, v4, 0.0, causal, attn_mask=key_bias, scale=lay.scale)
    s = _scores(lay, q4, k4, causal, key_bias)
    top = s.amax(-1, keepdim=True)
    top = torch.where(torch.isinf(top), 0.0, top)
    p = s.sub_(top).exp_()
    total = p.sum(-1, keepdim=True)
    out = torch.matmul(p, v4).div_(torch.where(total > 0, total, 1.0))
    n, h, length = q4.shape[:3]
    return out.view(n, h, length, -1), (top + total.log()).view(n, h, length)


def _attend_backward(lay, dout4, q4, k4, v4, out4, lse3, dlse3, causal, key_bias):
    """(dq, dk, dv) of one tile from the final out and lse of its rows (lse +inf on rows to ignore)."""
    if lay.flash:
        return flash_backward(dout4, q4, k4, v4, out4, lse3, dlse3, causal, lay.scale, key_bias)
    n, h, length = q4.shape[:3]
    hkv = k4.shape[1]
    delta = (dout4 * out4).sum(-1) - (0.0 if dlse3 is None else dlse3)
    p = _scores(lay, q4, k4, causal, key_bias).sub_(lse3.reshape(n, hkv, -1, 1)).exp_()
    dout = dout4.reshape(n, hkv, -1, dout4.shape[-1])
    ds = torch.matmul(dout, v4.transpose(-1, -2)).sub_(delta.reshape(n, hkv, -1, 1)).mul_(p)
    dq = torch.matmul(ds, k4).mul_(lay.scale).view(n, h, length, -1)
    dk = torch.matmul(ds.transpose(-1, -2), q4.reshape(n, hkv, -1, q4.shape[-1])).mul_(lay.scale)
    return dq, dk, torch.matmul(p.transpose(-1, -2), dout)


def _scores(lay, q4, k4, causal, key_bias):
    """Scaled, masked scores [N, H_kv, G * L, S]: the query heads of a kv head stacked along the rows."""
    n, h, length, dim = q4.shape
    hkv, keys = k4.shape[1], k4.shape[2]
    s = torch.matmul(q4.reshape(n, hkv, -1, dim), k4.transpose(-1, -2)).mul_(lay.scale)
    if key_bias is not None:
        s += key_bias
    if causal:
        above = torch.ones(length, keys, dtype=torch.bool, device=s.device).triu_(1)
        s.view(n, hkv, h // hkv, length, keys).masked_fill_(above, -_INF)
    return s


# --------------------------------------------------------------------------------- grouped path
# out and lse live in flat buffers of R = B * T_q * H_q rows, row (b * T_q + t) * H_q + h, plus one
# dummy row R that takes the writes of pad slots (and reads as "attends nothing" in the backward).


class _OwnChunk(NamedTuple):
    """One own-block tile. ``kind``: "rows" (gathered query slots ``rows``, [B * c * kmax * H_q], pads: R),
    "all" (views: every query in order, in tiles of ``length`` queries) or "second" (views: the second
    half of every tile of 2 * ``length`` queries against the first half of its keys; merged, not written)."""

    kind: str
    length: int
    causal: bool
    q4: torch.Tensor           # [N, H_q, length, D]
    k4: torch.Tensor           # [N, H_kv, kmax, D]
    v4: torch.Tensor
    bias: torch.Tensor | None  # [N, 1, 1, kmax]: 0 on valid key slots, -inf on pads
    rows: torch.Tensor | None
    keys: torch.Tensor | None  # [c * kmax] key token of each slot ("rows" tiles)

    def view(self, x):
        """The tile's query rows of a flat [R + 1, ...] buffer as [N, length, H_q, ...] (a view but for "rows")."""
        heads = self.q4.shape[1]
        if self.kind == "rows":
            return x.index_select(0, self.rows).view(-1, self.length, heads, *x.shape[1:])
        if self.kind == "all":
            return x[:-1].view(-1, self.length, heads, *x.shape[1:])
        return x[:-1].view(-1, 2, self.length, heads, *x.shape[1:])[:, 1]

    def pick(self, x):
        """The tile's query rows of a flat buffer, laid out like q4."""
        return self.view(x).transpose(1, 2)

    def key_view(self, dk, offset):
        """The tile's keys of a [B, T_kv, H_kv, D] gradient as [B, -1, H_kv, D] (views; "all" and "second")."""
        own = dk[:, offset:]
        return own if self.kind == "all" else own.unflatten(1, (-1, 2, self.length))[:, :, 0]


# Own blocks of sequences cut into whole blocks of at least this many keys are split into causal halves
# and one rectangle (the second half's queries against the first half's keys): 3/4 of the square's work.
HALVES_FROM = 128


def _own_chunks(lay, plan, q, k, v):
    """The own-block tiles. Sequences whose query blocks are whole and aligned take one or two calls on views."""
    nq, kmax = plan.query_slots.shape
    offset = lay.tkv - lay.tq
    if plan.regular and nq and offset % kmax == 0:
        kk, vv = k[:, offset:], v[:, offset:]
        if not lay.is_causal or kmax % 2 or kmax < HALVES_FROM:
            yield _OwnChunk("all", kmax, lay.is_causal, *(_heads_first(x, kmax) for x in (q, kk, vv)), None, None, None)
            return
        half = kmax // 2
        yield _OwnChunk("all", half, True, *(_heads_first(x, half) for x in (q, kk, vv)), None, None, None)
        second = q.unflatten(1, (-1, 2, half))[:, :, 1].flatten(0, 1).transpose(1, 2)
        first_k, first_v = (x.unflatten(1, (-1, 2, half))[:, :, 0].flatten(0, 1).transpose(1, 2) for x in (kk, vv))
        yield _OwnChunk("second", half, False, second, first_k, first_v, None, None, None)
        return
    step = max(1, TILE_ELEMENTS // max(1, lay.batch * lay.hq * kmax * kmax))
    arange = functools.partial(torch.arange, device=q.device)
    for c0 in range(0, nq, step):
        blocks = plan.query_blocks[c0:c0 + step]
        slots = plan.query_slots[c0:c0 + step].flatten()
        keys = plan.block_keys[blocks].flatten()
        valid = plan.key_valid[blocks]
        bias = None
        if not bool(valid.all()):
            bias = torch.zeros(valid.shape, dtype=q.dtype, device=q.device).masked_fill_(~valid, -_INF)
            bias = bias.repeat(lay.batch, 1)[:, None, None, :]
        rows = (arange(lay.batch)[:, None, None] * lay.tq + slots[None, :, None]) * lay.hq + arange(lay.hq)
        rows = torch.where(slots[None, :, None] >= 0, rows, lay.batch * lay.tq * lay.hq).flatten()
        q4, k4, v4 = (_heads_first(x.index_select(1, i), kmax) for x, i in ((q, slots.clamp(min=0)), (k, keys), (v, keys)))
        yield _OwnChunk("rows", kmax, lay.is_causal, q4, k4, v4, bias, rows, keys)


def _heads_first(x, length):
    """[B, n * length, H, D] -> [B * n, H, length, D] (a view when x allows it)."""
    return x.reshape(-1, length, *x.shape[2:]).transpose(1, 2)


def _other_groups(lay, plan, selection, own_block):
    """Per key block j: (tokens, gather rows, scatter rows) of the queries that selected j besides their own
    block. Rows are [B, m_j, H_kv] (GQA: every query head of a kv head); pads gather row 0 and scatter to R.
    One call per block: a query meets a block at most once, so the scatter of a call has no conflicts."""
    n = plan.block_keys.shape[0]
    blocks = torch.arange(n, device=selection.device)
    keep = blocks[None, :] != own_block[:, None]
    if lay.is_causal:  # a later block is wholly after the query: nothing in it is attended
        keep = keep & (blocks[None, :] < own_block[:, None])
    other = (selection & keep).view(lay.batch, lay.hkv, lay.group, lay.tq, n).permute(4, 0, 1, 2, 3)
    j, b, hk, g, t = other.contiguous().nonzero().unbind(1)  # sorted by block, then batch, kv head, ...
    groups = lay.batch * lay.hkv
    group = (j * lay.batch + b) * lay.hkv + hk
    counts = torch.bincount(group, minlength=n * groups)
    slot = torch.arange(group.numel(), device=group.device) - (counts.cumsum(0) - counts)[group]
    row = (b * lay.tq + t) * lay.hq + hk * lay.group + g
    widths = counts.view(n, groups).amax(1).tolist()
    ends = counts.view(n, groups).sum(1).cumsum(0).tolist()
    out, start = [], 0
    for block, (width, end) in enumerate(zip(widths, ends)):
        if width:
            at = (b[start:end], slot[start:end], hk[start:end])
            gather = torch.zeros(lay.batch, width, lay.hkv, dtype=torch.long, device=group.device)
            scatter = torch.full_like(gather, lay.batch * lay.tq * lay.hq)
            gather[at] = row[start:end]
            scatter[at] = row[start:end]
            out.append((plan.block_keys[block, :plan.key_count[block]], gather, scatter))
        start = end
    return out


def _row_chunks(lay, gather, scatter, keys):
    """Slices of a block's rows whose tiles stay within TILE_ELEMENTS: (gather, scatter, width), rows (b, i, kv head)."""
    step = max(1, TILE_ELEMENTS // max(1, lay.batch * lay.hq * keys))
    for a in range(0, gather.shape[1], step):
        yield gather[:, a:a + step].reshape(-1), scatter[:, a:a + step].reshape(-1), min(step, gather.shape[1] - a)


def _block_kv(tokens, k, v):
    """The keys and values at ``tokens`` for every batch and kv head: [B, H_kv, S, D]."""
    return k.index_select(1, tokens).transpose(1, 2), v.index_select(1, tokens).transpose(1, 2)


def _rows_to_tile(x, batch, width, hkv):
    """Gathered rows [B * width * H_kv, ...] -> [B, H_kv, width, ...] (a view)."""
    return x.view(batch, width, hkv, *x.shape[1:]).transpose(1, 2)


def _tile_to_rows(x):
    """[B, H, L, ...] -> rows [B * L * H, ...] (a view for the flash kernel's heads-last results)."""
    return x.transpose(1, 2).reshape(-1, *x.shape[3:])


class _GroupedAttention(torch.autograd.Function):
    """(out, lse) of the grouped path on contiguous [B, T, H, D] tensors; see the module docstring."""

    @staticmethod
    def forward(ctx, q, k, v, selection, plan, own_block, lay):
        batch, hkv, dv = lay.batch, lay.hkv, v.shape[-1]
        rows = batch * lay.tq * lay.hq
        # The own blocks write every row before anything reads it (pad slots only touch the dummy row).
        out = q.new_empty((rows + 1, dv))
        lse = q.new_empty((rows + 1,))
        if config.nan_poisoning_enabled():
            out.fill_(float("nan"))
            lse.fill_(float("nan"))
        for tile in _own_chunks(lay, plan, q, k, v):
            o, l_own = _attend(lay, tile.q4, tile.k4, tile.v4, tile.causal, tile.bias)
            if tile.kind == "rows":
                out.index_copy_(0, tile.rows, _tile_to_rows(o))
                lse.index_copy_(0, tile.rows, _tile_to_rows(l_own))
            elif tile.kind == "all":
                out[:-1] = _tile_to_rows(o)
                lse[:-1] = _tile_to_rows(l_own)
            else:  # merged into the second halves (views of out and lse)
                _merge(tile.view(out), tile.view(lse), o.transpose(1, 2), l_own.transpose(1, 2))
        own_ok = selection.gather(-1, own_block[None, None, :, None].expand(*selection.shape[:3], 1))[..., 0]
        missing = None if bool(own_ok.all()) else (~own_ok).transpose(1, 2).flatten()
        if missing is not None:  # a query whose own block is not selected attends none of it
            out[:-1].masked_fill_(missing[:, None], 0.0)
            lse[:-1].masked_fill_(missing, -_INF)
        groups = _other_groups(lay, plan, selection, own_block)
        q_rows = q.view(-1, q.shape[-1])
        for tokens, gathers, scatters in groups:
            k4, v4 = _block_kv(tokens, k, v)
            for gather, scatter, width in _row_chunks(lay, gathers, scatters, tokens.numel()):
                q4 = _rows_to_tile(q_rows.index_select(0, gather), batch, width, hkv)
                o, l_blk = _attend(lay, q4, k4, v4, False, None)
                merged, l_merged = out.index_select(0, scatter), lse.index_select(0, scatter)
                _merge(merged, l_merged, _tile_to_rows(o), _tile_to_rows(l_blk))
                out.index_copy_(0, scatter, merged)
                lse.index_copy_(0, scatter, l_merged)
        out[-1] = 0.0  # the dummy row attends nothing: read with P = 0 in the backward
        lse[-1] = _INF
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.lay, ctx.groups, ctx.missing = plan, lay, groups, missing
        return out[:-1].view(*q.shape[:-1], dv), lse[:-1].view(q.shape[:-1])

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        plan, lay = ctx.plan, ctx.lay
        batch, hkv, dim, dv = lay.batch, lay.hkv, q.shape[-1], v.shape[-1]
        rows = batch * lay.tq * lay.hq
        # Pad rows read any real row of dout / out / dlse: their lse is +inf, so P = 0 and they add 0.
        dout = torch.cat([dout.reshape(rows, dv), dout.new_zeros(1, dv)])
        dlse = None if dlse is None or not bool(dlse.any()) else torch.cat([dlse.reshape(rows), dlse.new_zeros(1)])
        lse = torch.where(torch.isinf(lse), _INF, lse)  # rows that attend nothing: P = 0
        own_lse = lse if ctx.missing is None else lse.masked_fill(torch.cat([ctx.missing, ctx.missing[:1]]), _INF)
        fill = float("nan") if config.nan_poisoning_enabled() else 0.0
        dq = q.new_full((rows + 1, dim), fill)
        dk = torch.zeros_like(k)
        dvv = torch.zeros_like(v)
        for tile in _own_chunks(lay, plan, q, k, v):
            g_q, g_k, g_v = _attend_backward(lay, tile.pick(dout), tile.q4, tile.k4, tile.v4, tile.pick(out),
                                             tile.pick(own_lse), None if dlse is None else tile.pick(dlse),
                                             tile.causal, tile.bias)
            g_k, g_v = (g.transpose(1, 2).reshape(batch, -1, hkv, g.shape[-1]) for g in (g_k, g_v))
            if tile.kind == "rows":  # pad key slots hold a real token and a zero gradient
                dq.index_copy_(0, tile.rows, _tile_to_rows(g_q))
                dk.index_add_(1, tile.keys, g_k)
                dvv.index_add_(1, tile.keys, g_v)
                continue
            if tile.kind == "all":
                dq[:-1] = _tile_to_rows(g_q)
            else:
                tile.view(dq).add_(g_q.transpose(1, 2))
            offset = lay.tkv - lay.tq
            tile.key_view(dk, offset).add_(g_k.view(tile.key_view(dk, offset).shape))
            tile.key_view(dvv, offset).add_(g_v.view(tile.key_view(dvv, offset).shape))
        q_rows = q.view(-1, dim)
        for tokens, gathers, scatters in ctx.groups:
            k4, v4 = _block_kv(tokens, k, v)
            g_k = torch.zeros(k4.shape, dtype=q.dtype, device=q.device)
            g_v = torch.zeros(v4.shape, dtype=q.dtype, device=q.device)
            for gather, scatter, width in _row_chunks(lay, gathers, scatters, tokens.numel()):
                tile = functools.partial(_rows_to_tile, batch=batch, width=width, hkv=hkv)
                c_q, c_k, c_v = _attend_backward(
                    lay, tile(dout.index_select(0, scatter)), tile(q_rows.index_select(0, gather)), k4, v4,
                    tile(out.index_select(0, scatter)), tile(lse.index_select(0, scatter)),
                    None if dlse is None else tile(dlse.index_select(0, scatter)), False, None)
                dq.index_add_(0, scatter, _tile_to_rows(c_q))
                g_k += c_k
                g_v += c_v
            dk.index_add_(1, tokens, g_k.transpose(1, 2))
            dvv.index_add_(1, tokens, g_v.transpose(1, 2))
        return dq[:-1].view(q.shape), dk, dvv, None, None, None, None


def _merge(out, lse, out_new, lse_new):
    """Merge a result over other keys into (out, lse) in place: lse' = logaddexp, out' = the weighted sum."""
    total = torch.logaddexp(lse, lse_new)
    out.mul_(torch.exp(lse - total)[..., None]).addcmul_(out_new, torch.exp(lse_new - total)[..., None])
    lse.copy_(total)


# --------------------------------------------------------------------------------- row gather path (decoding)
# Query row r = (b * T_q + t) * H_q + h gathers the keys of its own selected blocks of its kv head:
# with a heads-last cache that reads only that head's rows, a third of what a union of the heads' blocks
# would read for MoBA's top_k = 3.


@functools.lru_cache(maxsize=64)
def _row_ids(batch: int, tq: int, hq: int, hkv: int, device: torch.device):
    """(b, t, h, kv head) of every query row, [R] each."""
    r = torch.arange(batch * tq * hq, device=device)
    h = r % hq
    return r // (tq * hq), (r // hq) % tq, h, h // (hq // hkv)


def _row_index(spec, selection, lay):
    """Key tokens [R, S] of every query row (its selected blocks, padded to the largest count) and their mask."""
    rows = lay.batch * lay.tq * lay.hq
    n = selection.shape[-1]
    rows_sel = selection.transpose(1, 2).reshape(rows, n)
    counts = rows_sel.sum(-1)
    count = int(counts.max()) if rows else 0
    blocks = torch.sort(rows_sel.logical_not().to(torch.int8), dim=-1, stable=True).indices[:, :count]
    b, t, h, hk = _row_ids(lay.batch, lay.tq, lay.hq, lay.hkv, selection.device)
    if len(spec.grid) == 1:  # sequences need no plan: block j holds positions j * size ...
        length, size = spec.grid[0], spec.block_shape[0]
        tokens = (blocks * size)[..., None] + torch.arange(min(size, length), device=blocks.device)
        # Causal: keys up to the query's position (which also ends the last block); else the real keys.
        limit = t + (lay.tkv - lay.tq) if lay.is_causal else torch.full_like(t, length - 1)
        valid = tokens <= limit[:, None, None]
        tokens = tokens.clamp_(max=max(length - 1, 0))
    else:
        plan = _plan(spec.grid, spec.block_shape, spec.q_len, selection.device)
        tokens, valid = plan.block_keys[blocks], plan.key_valid[blocks]
    if rows and not bool((counts == count).all()):  # rows with fewer blocks: their pad blocks are masked
        valid = valid & (torch.arange(count, device=blocks.device) < counts[:, None])[..., None]
    return b, t, h, hk, tokens.flatten(1), valid.flatten(1)


def _row_view(x):
    """x [B, T, H, D] as rows: (view [N, D], strides) with row (b, t, h) at b * s0 + t * s1 + h * s2
    (in rows of the view: whole rows of D for a contiguous x, single elements otherwise).

    A strided KV cache becomes a view that may overlap itself (rows one element apart); it is only
    read with index_select, so the cache is gathered without being copied."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    if x.is_contiguous():
        return x.view(-1, x.shape[-1]), (x.shape[1] * x.shape[2], x.shape[2], 1)
    s0, s1, s2 = x.stride()[:3]
    span = 1 + sum((n - 1) * st for n, st in zip(x.shape[:3], (s0, s1, s2))) if x.numel() else 0
    return x.as_strided((span, x.shape[-1]), (1, 1), x.storage_offset()), (s0, s1, s2)


def _gather_rows(x, b, t, h):
    view, (s0, s1, s2) = _row_view(x)
    index = (b * s0 + h * s2)[..., None] + t * s1 if t.dim() > b.dim() else b * s0 + t * s1 + h * s2
    return view.index_select(0, index.flatten()).view(*index.shape, x.shape[-1])


class _RowAttention(torch.autograd.Function):
    """(out [R, D_v], lse [R]) of the row gather path; q, k, v as given (any dtype and strides: only the
    selected rows of k and v are read), computed in ``compute``."""

    @staticmethod
    def forward(ctx, q, k, v, index, scale, compute):
        b, t, h, hk, tokens, valid = index
        keys = _gather_rows(k, b, tokens, hk).to(compute)  # [R, S, D]
        values = _gather_rows(v, b, tokens, hk).to(compute)
        qs = _gather_rows(q, b, t, h).to(compute) * scale
        s = torch.bmm(keys, qs[:, :, None])[..., 0].masked_fill_(~valid, -_INF)
        lse = torch.logsumexp(s, -1)
        p = s.sub_(torch.where(torch.isinf(lse), 0.0, lse)[:, None]).exp_()
        out = torch.bmm(p[:, None, :], values)[:, 0]
        ctx.save_for_backward(qs, keys, values, out, lse)
        ctx.index, ctx.scale = index, scale
        ctx.inputs = (q.shape, q.dtype, k.shape, k.dtype, v.shape, v.dtype)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        qs, keys, values, out, lse = ctx.saved_tensors
        b, t, h, hk, tokens, valid = ctx.index
        q_shape, q_dtype, k_shape, k_dtype, v_shape, v_dtype = ctx.inputs
        delta = (dout * out).sum(-1) - (0.0 if dlse is None else dlse)
        s = torch.bmm(keys, qs[:, :, None])[..., 0].masked_fill_(~valid, -_INF)
        p = s.sub_(torch.where(torch.isinf(lse), _INF, lse)[:, None]).exp_()
        ds = (torch.bmm(values, dout[:, :, None])[..., 0] - delta[:, None]) * p
        dq = torch.zeros(q_shape, dtype=out.dtype, device=out.device)
        dq.view(-1, q_shape[-1]).index_add_(0, (b * q_shape[1] + t) * q_shape[2] + h,
                                            torch.bmm(ds[:, None, :], keys)[:, 0] * ctx.scale)
        key_rows = ((b[:, None] * k_shape[1] + tokens) * k_shape[2] + hk[:, None]).flatten()
        dk = torch.zeros(k_shape, dtype=out.dtype, device=out.device)
        dk.view(-1, k_shape[-1]).index_add_(0, key_rows, (ds[..., None] * qs[:, None, :]).flatten(0, 1))
        dvv = torch.zeros(v_shape, dtype=out.dtype, device=out.device)
        dvv.view(-1, v_shape[-1]).index_add_(0, key_rows, (p[..., None] * dout[:, None, :]).flatten(0, 1))
        return dq.to(q_dtype), dk.to(k_dtype), dvv.to(v_dtype), None, None, None


# --------------------------------------------------------------------------------- entry point


def _use_row_path(spec, selection, lay, dims: int) -> bool:
    """Gather per query row when the gathered keys and values stay small (decoding, short prefill)."""
    kmax = 1  # the largest block is the first box, full on every axis
    for length, size in zip(spec.grid, spec.block_shape):
        kmax *= min(length, size)
    rows = lay.batch * lay.tq * lay.hq
    if rows * kmax * dims > GATHER_ELEMENTS:
        return False
    count = int(selection.sum(-1).max()) if selection.numel() else 0
    # Every query row gathers its own copy of its blocks' keys: past a few copies of the whole key set
    # (a prefill of many queries) the grouped path, which reads each block once per head, is cheaper
    # (measured: 256 queries x 2 heads over 4 blocks of 64 took 7.3 ms and 18 MiB here, 0.6 ms grouped).
    gathered = rows * count * kmax
    return gathered * dims <= GATHER_ELEMENTS and gathered <= GATHER_COPIES * lay.batch * lay.tkv * lay.hkv


def _compiled_rows(spec, q, k, v, selection, lay):
    """(out [R, D_v], lse [R]) of the row path through the compiled kernel, which reads the selected blocks
    of the cache in place; None where it does not apply (grids, dtypes other than float32, gradients,
    other devices, compiled kernels off or unbuilt)."""
    grads = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    if (len(spec.grid) != 1 or grads or q.device.type != "cpu" or not config.cpu_kernels_enabled()
            or any(x.dtype != torch.float32 for x in (q, k, v)) or k.stride(-1) != 1 or v.stride(-1) != 1):
        return None
    module = kernels()
    if module is None:
        return None
    return module.moba_decode(q.contiguous(), k, v, selection.contiguous(), spec.block_shape[0], float(lay.scale),
                              lay.is_causal, config.nan_poisoning_enabled())


def run(spec: BlockSparseSpec, tensors: dict, scale: float):
    """``(out, lse)`` of block-routed attention; see the module docstring for shapes and paths."""
    q, k, v, selection = tensors["q"], tensors["k"], tensors["v"], tensors["selection"]
    compute = compute_dtype(q)
    qf, kf, vf = q.flatten(1, -3), k.flatten(1, -3), v.flatten(1, -3)
    flash = (USE_FLASH and FLASH is not None and q.device.type == "cpu" and q.shape[-1] == v.shape[-1])
    lay = _Layout(qf.shape[0], qf.shape[1], kf.shape[1], qf.shape[2], kf.shape[2], spec.is_causal, float(scale),
                  flash)
    dv = v.shape[-1]
    compiled = _compiled_rows(spec, qf, kf, vf, selection, lay) if lay.batch * lay.tq * lay.hq <= COMPILED_ROWS \
        else None
    if compiled is not None:
        out, lse = compiled
    elif _use_row_path(spec, selection, lay, q.shape[-1] + dv):
        out, lse = _RowAttention.apply(qf, kf, vf, _row_index(spec, selection, lay), float(scale), compute)
    else:
        plan = _plan(spec.grid, spec.block_shape, spec.q_len, q.device)
        if len(spec.grid) == 1:
            own_block = torch.arange(spec.grid[0] - spec.q_len, spec.grid[0], device=q.device) // spec.block_shape[0]
        else:
            own_block = block_layout(spec.grid, spec.block_shape, q.device)
        out, lse = _GroupedAttention.apply(qf.to(compute).contiguous(), kf.to(compute).contiguous(),
                                           vf.to(compute).contiguous(), selection, plan, own_block, lay)
    return out.reshape(*q.shape[:-1], dv).to(q.dtype), lse.reshape(q.shape[:-1])
