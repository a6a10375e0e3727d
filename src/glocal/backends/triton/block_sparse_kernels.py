"""Triton kernels of block-routed attention (MoBA) over sequences: forward, dQ and dK/dV.

Shapes:
    q: [B, T_q, H_q, D_qk]   k: [B, T_kv, H_kv, D_qk]   v: [B, T_kv, H_kv, D_v]
    o: [B, T_q, H_q, D_v]    lse, delta: [B, T_q, H_q] float32
    sel: [B, H_q, T_q, n_blocks] uint8 (a bool selection viewed as bytes)
    table: [B, H_q, n_query_tiles, max_blocks] int32, count: [B, H_q, n_query_tiles] int32
    inv: [B, H_kv, n_blocks, max_entries] int32, inv_count: [B, H_kv, n_blocks] int32

Example (through the backend, which launches these kernels):
    >>> import torch  # doctest: +SKIP
    >>> from glocal.backends.triton import block_sparse  # doctest: +SKIP
    >>> from glocal.spec import BlockSparseSpec  # doctest: +SKIP
    >>> q = k = v = torch.randn(1, 4096, 8, 128, device="cuda", dtype=torch.bfloat16)  # doctest: +SKIP
    >>> sel = torch.ones(1, 8, 4096, 8, dtype=torch.bool, device="cuda")  # doctest: +SKIP
    >>> spec = BlockSparseSpec(grid=(4096,), block_shape=(512,), q_len=4096, is_causal=True)  # doctest: +SKIP
    >>> out, lse = block_sparse.run(spec, {"q": q, "k": k, "v": v, "selection": sel}, 128 ** -0.5)  # doctest: +SKIP

The rule: query i (at position p_i = T_kv - T_q + i) of head h attends key y iff
``sel[b, h, i, y // block_size]`` and, when causal, ``y <= p_i``.

Walk. A forward (or dQ) program owns a tile of BM queries of one query head. The host lists, per
tile, the sorted union of the blocks any of its queries selected (``table``, ``count``); the
program visits those blocks in key sub-tiles of BN keys (a sub-tile never crosses a block's end,
and under causal masking stops at the tile's last query), loads each query's selection bit for the
block once, and masks the scores with that bit and the causal rule. A dK/dV program owns BN keys
of one block and one kv head and walks the (query head of its group, query tile) pairs whose
union holds that block (``inv``, ``inv_count``), rebuilding P from the saved lse. Softmax runs in
base 2 (``exp2``, scale folded with log2(e)); lse is stored in natural log. A query that attends
nothing gets output 0 and lse -inf; the backward treats its lse as +inf, so its P is 0.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .kernels import _online_softmax

LOG2E = 1.4426950408889634  # the host folds it into the scale; kernels spell constants out (no globals in @jit)

# Sequence lengths, block size and table widths are not specialised on: one compiled kernel
# serves every problem with the same tiles, head dims, dtypes and causal flag.
_SIZES = ("H", "GQA", "T_Q", "T_KV", "BS", "N_QT", "MAX_BLOCKS")
_SIZES_DKDV = ("H", "GQA", "HKV", "T_Q", "T_KV", "BS", "NB", "TPB", "N_QT", "MAX_ENTRIES")


@triton.jit
def _load_rows(base, rows, row_stride, rows_ok, cols, width: tl.constexpr):
    """[len(rows), len(cols)] tile of a row-major slab: rows past the sequence and padded columns read 0."""
    return tl.load(base + rows[:, None] * row_stride + cols[None, :], mask=rows_ok[:, None] & (cols[None, :] < width),
                   other=0.0)


@triton.jit(do_not_specialize=_SIZES)
def _moba_fwd_kernel(
    Q, K, V, O, LSE, SEL, TABLE, COUNT,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh, slb, slt, slh, ssb, ssh, sst, ssn,
    H, GQA, T_Q, T_KV, BS, N_QT, MAX_BLOCKS,
    qk_scale,
    BM: tl.constexpr, BN: tl.constexpr, D_QK: tl.constexpr, D_V: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, IS_CAUSAL: tl.constexpr,
):
    qt = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    hk = h // GQA
    offset = T_KV - T_Q
    i = qt * BM + tl.arange(0, BM)
    q_ok = i < T_Q
    pos = offset + i
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    j = tl.arange(0, BN)
    q = _load_rows(Q + b * sqb + h * sqh, i, sqt, q_ok, d, D_QK)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    sel_rows = SEL + b * ssb + h.to(tl.int64) * ssh + i.to(tl.int64) * sst
    table = TABLE + (bh.to(tl.int64) * N_QT + qt) * MAX_BLOCKS
    count = tl.load(COUNT + bh * N_QT + qt)
    last = offset + tl.minimum(qt * BM + BM, T_Q) - 1  # position of the tile's last query

    m_i = tl.full([BM], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, BLOCK_DV], dtype=tl.float32)
    for n in range(0, count):
        blk = tl.load(table + n)
        start = blk * BS
        end = tl.minimum(start + BS, T_KV)
        if IS_CAUSAL:
            end = tl.minimum(end, last + 1)  # keys after the tile's last query are seen by none of its queries
        picked = tl.load(sel_rows + blk * ssn, mask=q_ok, other=0) != 0
        for k0 in range(start, end, BN):
            y = k0 + j
            y_ok = y < end
            k = _load_rows(k_base, y, skt, y_ok, d, D_QK)
            v = _load_rows(v_base, y, svt, y_ok, dv, D_V)
            s = tl.dot(q, tl.trans(k)) * qk_scale
            keep = picked[:, None] & y_ok[None, :]
            if IS_CAUSAL:
                keep = keep & (y[None, :] <= pos[:, None])
            s = tl.where(keep, s, float("-inf"))
            acc, l_i, m_i = _online_softmax(acc, l_i, m_i, s, v)

    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    o_rows = O + b * sob + h * soh + i[:, None] * sot + dv[None, :]
    tl.store(o_rows, out.to(O.dtype.element_ty), mask=q_ok[:, None] & (dv[None, :] < D_V))
    lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    tl.store(LSE + b * slb + h * slh + i * slt, lse, mask=q_ok)


@triton.jit
def _lse2(LSE, offsets, ok):
    """Saved lse of the rows, in base 2; +inf for padded rows and rows that attended nothing (so P = 0)."""
    lse2 = tl.load(LSE + offsets, mask=ok, other=float("inf")) * 1.4426950408889634
    return tl.where(lse2 == float("-inf"), float("inf"), lse2)


@triton.jit(do_not_specialize=_SIZES)
def _moba_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, SEL, TABLE, COUNT,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh, slb, slt, slh, ssb, ssh, sst, ssn,
    H, GQA, T_Q, T_KV, BS, N_QT, MAX_BLOCKS,
    qk_scale, scale,
    BM: tl.constexpr, BN: tl.constexpr, D_QK: tl.constexpr, D_V: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, IS_CAUSAL: tl.constexpr,
):
    """dQ of one query tile: the forward's walk again, with P rebuilt from lse. DQ shares q's strides."""
    qt = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    hk = h // GQA
    offset = T_KV - T_Q
    i = qt * BM + tl.arange(0, BM)
    q_ok = i < T_Q
    pos = offset + i
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    j = tl.arange(0, BN)
    q = _load_rows(Q + b * sqb + h * sqh, i, sqt, q_ok, d, D_QK)
    do = _load_rows(DO + b * sdb + h * sdh, i, sdt, q_ok, dv, D_V)
    l_off = b * slb + h * slh + i * slt
    lse2 = _lse2(LSE, l_off, q_ok)
    delta = tl.load(DELTA + l_off, mask=q_ok, other=0.0)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    sel_rows = SEL + b * ssb + h.to(tl.int64) * ssh + i.to(tl.int64) * sst
    table = TABLE + (bh.to(tl.int64) * N_QT + qt) * MAX_BLOCKS
    count = tl.load(COUNT + bh * N_QT + qt)
    last = offset + tl.minimum(qt * BM + BM, T_Q) - 1

    dq = tl.zeros([BM, BLOCK_D], dtype=tl.float32)
    for n in range(0, count):
        blk = tl.load(table + n)
        start = blk * BS
        end = tl.minimum(start + BS, T_KV)
        if IS_CAUSAL:
            end = tl.minimum(end, last + 1)
        picked = tl.load(sel_rows + blk * ssn, mask=q_ok, other=0) != 0
        for k0 in range(start, end, BN):
            y = k0 + j
            y_ok = y < end
            k = _load_rows(k_base, y, skt, y_ok, d, D_QK)
            v = _load_rows(v_base, y, svt, y_ok, dv, D_V)
            s = tl.dot(q, tl.trans(k)) * qk_scale
            keep = picked[:, None] & y_ok[None, :]
            if IS_CAUSAL:
                keep = keep & (y[None, :] <= pos[:, None])
            s = tl.where(keep, s, float("-inf"))
            p = tl.math.exp2(s - lse2[:, None])
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k)
    dq = dq * scale
    tl.store(DQ + b * sqb + h * sqh + i[:, None] * sqt + d[None, :], dq.to(DQ.dtype.element_ty),
             mask=q_ok[:, None] & (d[None, :] < D_QK))


@triton.jit(do_not_specialize=_SIZES_DKDV)
def _moba_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, SEL, INV, INV_COUNT,
    sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh, slb, slt, slh, ssb, ssh, sst, ssn,
    H, GQA, HKV, T_Q, T_KV, BS, NB, TPB, N_QT, MAX_ENTRIES,
    qk_scale, scale,
    BN: tl.constexpr, BM: tl.constexpr, D_QK: tl.constexpr, D_V: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, IS_CAUSAL: tl.constexpr,
):
    """dK, dV of BN keys of one block and one kv head, summed over the query heads sharing it (GQA).

    Programs enumerate (block, sub-tile) pairs, TPB sub-tiles per block. INV lists, per block, the
    entries ``g * N_QT + query_tile`` (g: query head inside the kv head's group) whose tile union
    holds the block. DK shares k's strides, DV v's.
    """
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HKV).to(tl.int64)
    hk = bh % HKV
    blk = pid // TPB
    start = blk * BS
    end = tl.minimum(start + BS, T_KV)
    k0 = start + (pid % TPB) * BN
    if k0 >= end:  # a sub-tile past a partial block's end: it has no keys
        return
    offset = T_KV - T_Q
    y = k0 + tl.arange(0, BN)
    y_ok = y < end
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    k_rows = b * skb + hk * skh + y[:, None] * skt + d[None, :]
    v_rows = b * svb + hk * svh + y[:, None] * svt + dv[None, :]
    k = tl.load(K + k_rows, mask=y_ok[:, None] & (d[None, :] < D_QK), other=0.0)
    v = tl.load(V + v_rows, mask=y_ok[:, None] & (dv[None, :] < D_V), other=0.0)
    entries = INV + (bh.to(tl.int64) * NB + blk) * MAX_ENTRIES
    count = tl.load(INV_COUNT + bh * NB + blk)
    r = tl.arange(0, BM)

    dk = tl.zeros([BN, BLOCK_D], dtype=tl.float32)
    dv_acc = tl.zeros([BN, BLOCK_DV], dtype=tl.float32)
    for n in range(0, count):
        e = tl.load(entries + n)
        h = hk * GQA + e // N_QT
        q0 = (e % N_QT) * BM
        needed = k0 >= 0
        if IS_CAUSAL:  # a query tile whose last query precedes this sub-tile's first key adds nothing
            needed = offset + tl.minimum(q0 + BM, T_Q) - 1 >= k0
        if needed:
            i = q0 + r
            q_ok = i < T_Q
            q = _load_rows(Q + b * sqb + h * sqh, i, sqt, q_ok, d, D_QK)
            do = _load_rows(DO + b * sdb + h * sdh, i, sdt, q_ok, dv, D_V)
            l_off = b * slb + h * slh + i * slt
            lse2 = _lse2(LSE, l_off, q_ok)
            delta = tl.load(DELTA + l_off, mask=q_ok, other=0.0)
            picked = tl.load(SEL + b * ssb + h.to(tl.int64) * ssh + i.to(tl.int64) * sst + blk * ssn, mask=q_ok,
                             other=0) != 0
            st = tl.dot(k, tl.trans(q)) * qk_scale
            keep = y_ok[:, None] & picked[None, :]
            if IS_CAUSAL:
                keep = keep & (y[:, None] <= (offset + i)[None, :])
            st = tl.where(keep, st, float("-inf"))
            pt = tl.math.exp2(st - lse2[None, :])
            dv_acc += tl.dot(pt.to(do.dtype), do)
            dpt = tl.dot(v, tl.trans(do))
            dst = pt * (dpt - delta[None, :])
            dk += tl.dot(dst.to(q.dtype), q)
    dk = dk * scale
    tl.store(DK + k_rows, dk.to(DK.dtype.element_ty), mask=y_ok[:, None] & (d[None, :] < D_QK))
    tl.store(DV + v_rows, dv_acc.to(DV.dtype.element_ty), mask=y_ok[:, None] & (dv[None, :] < D_V))
