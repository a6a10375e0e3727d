"""Host side of the MoBA Triton kernels: tile choice, block tables, launch, autograd.

Shapes:
    q: [B, T_q, H_q, D_qk]   k: [B, T_kv, H_kv, D_qk]   v: [B, T_kv, H_kv, D_v]
    selection: bool [B, H_q, T_q, n_blocks]   out: [B, T_q, H_q, D_v]   lse: [B, T_q, H_q] float32

Example:
    >>> import torch  # doctest: +SKIP
    >>> from glocal.spec import BlockSparseSpec  # doctest: +SKIP
    >>> q = k = v = torch.randn(1, 1024, 4, 64, device="cuda", dtype=torch.float16)  # doctest: +SKIP
    >>> sel = torch.ones(1, 4, 1024, 8, dtype=torch.bool, device="cuda")  # doctest: +SKIP
    >>> out, lse = moba(BlockSparseSpec((1024,), (128,), 1024, True), q, k, v, sel, 0.125)  # doctest: +SKIP

The kernels visit, per query tile, the sorted union of the blocks its queries selected, and per
key sub-tile the query tiles whose union holds its block. Both tables are built here with torch
ops (no Python loop over tokens or blocks) and cost one host synchronisation each (their width).
Tile sizes are scoped with ``glocal.config.triton_tiles(moba_fwd_q=..., ...)`` (keys of
``_DEFAULTS``). This module imports Triton at the top; the family module
(``glocal.backends.triton.block_sparse``) imports it only inside ``run``.
"""

from __future__ import annotations

import torch

from ...config import triton_tile_overrides
from . import block_sparse_kernels as kernels
from .ops import _alloc, _backward_inputs, _block, _cdiv, _launch, _launch_checks

# Query tile and key sub-tile of the forward (fwd_q, fwd_k) and of the dQ pass (dq_q, dq_k), key
# sub-tile and query tile of the dK/dV pass (bwd_k, bwd_q), and the launch options. Sizes are
# powers of two, >= 16 on a GPU. Not yet timed: the forward and dQ follow the 1-D neighborhood
# kernels (the fastest measured there on an H100), the dK/dV tiles are the ones that compile for
# sm_90 without register spills at head dim 128 (docs/gpu.md).
_DEFAULTS = dict(moba_fwd_q=128, moba_fwd_k=64, moba_dq_q=128, moba_dq_k=64, moba_bwd_k=128, moba_bwd_q=32,
                 moba_fwd_warps=8, moba_fwd_stages=3, moba_dq_warps=8, moba_dq_stages=2,
                 moba_dkdv_warps=8, moba_dkdv_stages=2)
# Head dims above 128: smaller tiles and shallower pipelines so accumulators fit in registers.
_WIDE = dict(moba_fwd_q=64, moba_dq_q=64, moba_dq_k=32, moba_bwd_k=32, moba_bwd_q=32, moba_fwd_stages=2,
             moba_dq_warps=4, moba_dq_stages=1, moba_dkdv_warps=4, moba_dkdv_stages=1)
_TILES = ("moba_fwd_q", "moba_fwd_k", "moba_dq_q", "moba_dq_k", "moba_bwd_k", "moba_bwd_q")
_KEY_TILES = ("moba_fwd_k", "moba_dq_k", "moba_bwd_k")


def config(d_max: int, elem_bytes: int, block_size: int) -> dict:
    """Tiles and launch options for the larger padded head dim, the element size and the block size."""
    cfg = dict(_DEFAULTS)
    if d_max > 128:
        cfg.update(_WIDE)
    if elem_bytes > 2:
        # float32 (TF32) tiles take twice the bytes: half the rows, at most two stages.
        for name in _TILES:
            cfg[name] = max(16, cfg[name] // 2)
        for name in ("moba_fwd_stages", "moba_dq_stages", "moba_dkdv_stages"):
            cfg[name] = min(cfg[name], 2)
        # dK/dV in float32 compiles for sm_90 without register spills with square tiles and 4 warps.
        side = min(32, cfg["moba_bwd_k"])
        cfg.update(moba_bwd_k=side, moba_bwd_q=side, moba_dkdv_warps=4)
    cfg.update({name: value for name, value in triton_tile_overrides().items() if name in _DEFAULTS})
    # A key sub-tile never crosses a block's end: wider than the block it would only load masked keys.
    for name in _KEY_TILES:
        cfg[name] = min(cfg[name], _block(block_size))
    return cfg


def _union(spec, selection: torch.Tensor, tile: int, kv_len: int) -> torch.Tensor:
    """bool [B, H_q, n_tiles, n_blocks]: blocks selected by any query of each tile of ``tile`` queries.

    Causal: blocks that start after the tile's last query are dropped (no query of the tile sees them).
    """
    batch, heads, q_len, n_blocks = selection.shape
    full = q_len // tile
    parts = [selection[:, :, :full * tile].reshape(batch, heads, full, tile, n_blocks).any(3)]
    if q_len % tile:
        parts.append(selection[:, :, full * tile:].any(2, keepdim=True))
    union = torch.cat(parts, 2)
    if spec.is_causal:
        device = selection.device
        tile_end = torch.clamp((torch.arange(union.shape[2], device=device) + 1) * tile, max=q_len)
        last = (kv_len - q_len) + tile_end - 1
        starts = torch.arange(n_blocks, device=device) * spec.block_shape[0]
        union = union & (starts[None, :] <= last[:, None])
    return union


def _listed(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of a bool [..., N]: the indices of its True entries, ascending, padded to the widest
    row (int32 [..., width]), and how many there are (int32 [...])."""
    counts = flags.sum(-1, dtype=torch.int32)
    width = int(counts.max()) if counts.numel() else 0
    if width == 0:
        return torch.zeros(*flags.shape[:-1], 1, dtype=torch.int32, device=flags.device), counts
    # The top `width` of (N - index) over the True entries are those entries, smallest index first.
    rank = flags.to(torch.int32) * torch.arange(flags.shape[-1], 0, -1, dtype=torch.int32, device=flags.device)
    top = torch.topk(rank, width, dim=-1, sorted=True).values
    return (flags.shape[-1] - top).to(torch.int32).contiguous(), counts.contiguous()


def block_table(spec, selection, tile: int, kv_len: int):
    """``(table [B, H_q, n_tiles, width], count [B, H_q, n_tiles])`` int32: per query tile, its union's blocks."""
    return _listed(_union(spec, selection, tile, kv_len))


def inverse_table(spec, selection, tile: int, kv_len: int, kv_heads: int):
    """``(entries [B, H_kv, n_blocks, width], count [B, H_kv, n_blocks])`` int32: per block and kv head,
    ``g * n_tiles + tile`` for every (query head g of the group, query tile) whose union holds the block."""
    union = _union(spec, selection, tile, kv_len)
    batch, heads, n_tiles, n_blocks = union.shape
    group = heads // kv_heads
    per_block = union.view(batch, kv_heads, group, n_tiles, n_blocks).permute(0, 1, 4, 2, 3)
    return _listed(per_block.reshape(batch, kv_heads, n_blocks, group * n_tiles))


def _seq_strides(x: torch.Tensor):
    """(batch, token, head) element strides of a [B, T, H, D] tensor."""
    return x.stride(0), x.stride(1), x.stride(2)


def _selection_bytes(selection: torch.Tensor):
    """The selection as uint8 (same memory) and its (batch, head, query, block) strides."""
    sel = selection.view(torch.uint8)
    return sel, sel.stride()


def forward(spec, q, k, v, selection, scale: float):
    """Launch the forward kernel: ``(out, lse, (tile, table, count))`` (the tables serve the backward)."""
    _launch_checks()
    batch, q_len, heads, d_qk = q.shape
    kv_len, kv_heads, d_v = k.shape[1], k.shape[2], v.shape[-1]
    block_size = spec.block_shape[0]
    cfg = config(max(_block(d_qk), _block(d_v)), q.element_size(), block_size)
    bm, bn = cfg["moba_fwd_q"], cfg["moba_fwd_k"]
    out = _alloc((batch, q_len, heads, d_v), q.dtype, q.device)
    lse = _alloc((batch, q_len, heads), torch.float32, q.device)
    table, count = block_table(spec, selection, bm, kv_len)
    sel, sel_strides = _selection_bytes(selection)
    grid = (table.shape[2], batch * heads)
    if min(grid) > 0:
        _launch(kernels._moba_fwd_kernel, grid, cfg["moba_fwd_warps"], cfg["moba_fwd_stages"],
                q, k, v, out, lse, sel, table, count,
                *_seq_strides(q), *_seq_strides(k), *_seq_strides(v), *_seq_strides(out), *lse.stride(), *sel_strides,
                heads, heads // kv_heads, q_len, kv_len, block_size, table.shape[2], table.shape[3],
                scale * kernels.LOG2E,
                bm, bn, d_qk, d_v, _block(d_qk), _block(d_v), bool(spec.is_causal))
    return out, lse, (bm, table, count)


def backward(spec, q, k, v, selection, out, lse, dout, dlse, scale: float, tables=None):
    """Launch the dQ and dK/dV kernels; returns ``(dq, dk, dv)``. ``dlse`` may be None; ``tables``
    is the forward's ``(tile, table, count)``, reused when the dQ pass has the same query tile."""
    _launch_checks()
    batch, q_len, heads, d_qk = q.shape
    kv_len, kv_heads, d_v = k.shape[1], k.shape[2], v.shape[-1]
    block_size = spec.block_shape[0]
    n_blocks = selection.shape[-1]
    cfg = config(max(_block(d_qk), _block(d_v)), q.element_size(), block_size)
    q, k, v, dout, lse, delta, dq, dk, dv = _backward_inputs(q, k, v, out, lse, dout, dlse)
    sel, sel_strides = _selection_bytes(selection)
    common = (*_seq_strides(q), *_seq_strides(k), *_seq_strides(v), *_seq_strides(dout), *lse.stride(),
              *sel_strides)
    causal = bool(spec.is_causal)

    bm, bn = cfg["moba_dq_q"], cfg["moba_dq_k"]
    if tables is not None and tables[0] == bm:
        table, count = tables[1], tables[2]
    else:
        table, count = block_table(spec, selection, bm, kv_len)
    grid = (table.shape[2], batch * heads)
    if min(grid) > 0:
        _launch(kernels._moba_dq_kernel, grid, cfg["moba_dq_warps"], cfg["moba_dq_stages"],
                q, k, v, dout, lse, delta, dq, sel, table, count, *common,
                heads, heads // kv_heads, q_len, kv_len, block_size, table.shape[2], table.shape[3],
                scale * kernels.LOG2E, scale,
                bm, bn, d_qk, d_v, _block(d_qk), _block(d_v), causal)

    bn, bm = cfg["moba_bwd_k"], cfg["moba_bwd_q"]
    entries, entry_count = inverse_table(spec, selection, bm, kv_len, kv_heads)
    per_block = _cdiv(block_size, bn)
    grid = (n_blocks * per_block, batch * kv_heads)
    if min(grid) > 0:
        _launch(kernels._moba_dkdv_kernel, grid, cfg["moba_dkdv_warps"], cfg["moba_dkdv_stages"],
                q, k, v, dout, lse, delta, dk, dv, sel, entries, entry_count, *common,
                heads, heads // kv_heads, kv_heads, q_len, kv_len, block_size, n_blocks, per_block,
                _cdiv(q_len, bm), entries.shape[3],
                scale * kernels.LOG2E, scale,
                bn, bm, d_qk, d_v, _block(d_qk), _block(d_v), causal)
    return dq, dk, dv


class _MobaFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, selection, spec, scale):
        out, lse, tables = forward(spec, q, k, v, selection, scale)
        ctx.save_for_backward(q, k, v, selection, out, lse)
        ctx.spec, ctx.scale, ctx.tables = spec, scale, tables
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, selection, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv = backward(ctx.spec, q, k, v, selection, out, lse, dout, dlse, ctx.scale, ctx.tables)
        return dq, dk, dv, None, None, None


def moba(spec, q, k, v, selection, scale: float):
    """Block-routed attention through the fused kernels: ``(out, lse)``, differentiable in q, k, v."""
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return _MobaFn.apply(q, k, v, selection, spec, float(scale))
