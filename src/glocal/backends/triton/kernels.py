"""Triton kernels of neighborhood attention: forward, dQ and dK/dV.

Shapes (every problem is seen as 3-D; a 1-D or 2-D grid gets leading axes of
length 1 with stride 0):
    q: [B, Z, Y, X, H_q, D_qk]   k: [B, Z, Y, X, H_kv, D_qk]   v: [B, Z, Y, X, H_kv, D_v]
    o: [B, Z, Y, X, H_q, D_v]    lse, delta: [B, Z, Y, X, H_q] float32

Example (through the backend, which launches these kernels):
    >>> import torch, glocal  # doctest: +SKIP
    >>> q = k = v = torch.randn(1, 32, 32, 2, 64, device="cuda", dtype=torch.bfloat16)  # doctest: +SKIP
    >>> glocal.na2d(q, k, v, kernel_size=7, backend="triton").shape  # doctest: +SKIP
    torch.Size([1, 32, 32, 2, 64])

Tiling. Dilation is resolved by re-indexing: along an axis with dilation d,
the tokens of group g are ``g, g + d, g + 2d, ...``, so a program works on one
group tuple with the group's base offset and ``d`` times the axis stride; no
token is copied and no key of another group is ever looked at. Inside a group
a query tile is an N-D box of ``BZ x BY x BX`` queries. Along every axis the
window bounds ``lo(x)``, ``hi(x)`` never decrease with ``x`` (DESIGN.md §1), so
the keys a box touches form the box ``[lo(first), hi(last))`` per axis; the
kernel visits only the key boxes covering it. A key box inside
``[lo(last), hi(first))`` on every axis is attended by every query of the tile
and skips the mask. The backward pass for dK/dV needs the inverse range (the
queries that attend a key box); it is precomputed per axis on the host by a
binary search over the same monotone bounds (``query_ranges``).

Masking tests ``0 <= y - lo < hi - lo`` as one unsigned comparison per axis.
Softmax runs in base 2 (``exp2``, scale folded with log2(e)); lse is returned
in natural log.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634

# Problem sizes and window arguments are not specialised on (value 1, divisibility
# by 16): one compiled kernel serves every grid, kernel size and causal pattern.
_WINDOW_ARGS = ("Lz", "Ly", "Lx", "Kz", "Ky", "Kx", "Sz", "Sy", "Sx", "Dz", "Dy", "Dx", "Cz", "Cy", "Cx")
_PROBLEM_ARGS_FWD = ("H", "GQA", *_WINDOW_ARGS, "NTz", "NTy", "NTx")
_PROBLEM_ARGS_DQ = _PROBLEM_ARGS_FWD
_PROBLEM_ARGS_DKDV = ("H", "GQA", "HKV", *_WINDOW_ARGS, "NTz", "NTy", "NTx", "RTz", "RTy", "RTx")


@triton.jit
def _window(x, lg, ksize, stride, causal):
    """In-group window [lo, hi) of in-group query coordinate(s) x on an axis of group length lg."""
    lead_c = tl.minimum((x // stride) * stride + stride - 1, lg - 1)
    lo_c = tl.maximum(lead_c - ksize + 1, 0)
    hi_c = x + 1
    left = ksize // 2
    right = ksize - 1 - left
    lead_n = tl.minimum((x // stride) * stride + stride // 2, lg - 1)
    ctr = tl.minimum(tl.maximum(lead_n, left), lg - 1 - right)
    # causal is 0 or 1: blend arithmetically (keeps scalars scalar, no select).
    lo = ctr - left + causal * (lo_c - (ctr - left))
    hi = ctr + right + 1 + causal * (hi_c - (ctr + right + 1))
    return lo, hi


@triton.jit
def _box_origin(pid, NTz, NTy, NTx, Lz, Ly, Lx, Dz, Dy, Dx,
                BZ: tl.constexpr, BY: tl.constexpr, BX: tl.constexpr):
    """Program pid's dilation group (gz, gy, gx), that group's lengths, and its box's first coordinates.

    Programs enumerate (group, box) pairs, the NTz x NTy x NTx boxes of each group in row-major order.
    """
    ntiles = NTz * NTy * NTx
    g = pid // ntiles
    t = pid % ntiles
    gz = g // (Dy * Dx)
    gy = (g // Dx) % Dy
    gx = g % Dx
    lgz = (Lz - gz + Dz - 1) // Dz
    lgy = (Ly - gy + Dy - 1) // Dy
    lgx = (Lx - gx + Dx - 1) // Dx
    z0 = (t // (NTy * NTx)) * BZ
    y0 = ((t // NTx) % NTy) * BY
    x0 = (t % NTx) * BX
    return gz, gy, gx, lgz, lgy, lgx, z0, y0, x0


@triton.jit
def _in_window(y, lo, hi):
    """[M, N] mask: key coordinate y[None, :] inside [lo, hi) of each row; one unsigned compare."""
    return (y[None, :] - lo[:, None]).to(tl.uint32, bitcast=True) < (hi - lo)[:, None].to(tl.uint32, bitcast=True)


@triton.jit
def _in_window_t(lo, hi, y):
    """Transposed _in_window: [N, M] mask with keys y[:, None] as rows and queries as columns."""
    return (y[:, None] - lo[None, :]).to(tl.uint32, bitcast=True) < (hi - lo)[None, :].to(tl.uint32, bitcast=True)


@triton.jit
def _online_softmax(acc, l_i, m_i, s, v):
    """Fold one key tile, scaled and masked scores s [M, N] and values v [N, D_v], into the running
    (acc, l, m) of the rows; returns them updated."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    # Rescale, then let the matrix unit accumulate into acc in place (tl.dot with an accumulator).
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, l_i, m_new


@triton.jit
def _attend_1d(acc, l_i, m_i, q, k_base, v_base, k0x, gx, Dx, skx, svx, d, dv, jx, lox, hix, uhx, qk_scale,
               D_QK, D_V, MASKED: tl.constexpr, EVEN_D: tl.constexpr):
    """One key tile of a 1-D problem; an unmasked tile loads without any mask (every key in range)."""
    kx = k0x + jx
    koff = (kx * Dx + gx) * skx
    voff = (kx * Dx + gx) * svx
    if MASKED:
        k_ok = kx < uhx
        k = tl.load(k_base + koff[:, None] + d[None, :], mask=k_ok[:, None] & (d[None, :] < D_QK), other=0.0)
        v = tl.load(v_base + voff[:, None] + dv[None, :], mask=k_ok[:, None] & (dv[None, :] < D_V), other=0.0)
    elif EVEN_D:
        k = tl.load(k_base + koff[:, None] + d[None, :])
        v = tl.load(v_base + voff[:, None] + dv[None, :])
    else:
        k = tl.load(k_base + koff[:, None] + d[None, :], mask=d[None, :] < D_QK, other=0.0)
        v = tl.load(v_base + voff[:, None] + dv[None, :], mask=dv[None, :] < D_V, other=0.0)
    s = tl.dot(q, tl.trans(k)) * qk_scale
    if MASKED:
        s = tl.where(_in_window(kx, lox, hix), s, float("-inf"))
    return _online_softmax(acc, l_i, m_i, s, v)


@triton.jit(do_not_specialize=_PROBLEM_ARGS_FWD)
def _fwd_kernel(
    Q, K, V, O, LSE,
    sqb, sqz, sqy, sqx, sqh,
    skb, skz, sky, skx, skh,
    svb, svz, svy, svx, svh,
    sob, soz, soy, sox, soh,
    slb, slz, sly, slx, slh,
    H, GQA,
    Lz, Ly, Lx, Kz, Ky, Kx, Sz, Sy, Sx, Dz, Dy, Dx, Cz, Cy, Cx,
    NTz, NTy, NTx,
    qk_scale, D_QK, D_V,
    BZ: tl.constexpr, BY: tl.constexpr, BX: tl.constexpr,
    KBZ: tl.constexpr, KBY: tl.constexpr, KBX: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, NDIM: tl.constexpr, EVEN_D: tl.constexpr = False,
    SPLIT_1D: tl.constexpr = False,
):
    TQ: tl.constexpr = BZ * BY * BX
    TK: tl.constexpr = KBZ * KBY * KBX
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // GQA
    gz, gy, gx, lgz, lgy, lgx, q0z, q0y, q0x = _box_origin(pid, NTz, NTy, NTx, Lz, Ly, Lx, Dz, Dy, Dx, BZ, BY, BX)
    if (q0z >= lgz) | (q0y >= lgy) | (q0x >= lgx):
        return

    i = tl.arange(0, TQ)
    qz = q0z + i // (BY * BX)
    qy = q0y + (i // BX) % BY
    qx = q0x + i % BX
    q_ok = (qz < lgz) & (qy < lgy) & (qx < lgx)
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    rz = qz * Dz + gz
    ry = qy * Dy + gy
    rx = qx * Dx + gx
    q_ptrs = Q + b.to(tl.int64) * sqb + h * sqh + (rz * sqz + ry * sqy + rx * sqx)[:, None] + d[None, :]
    q = tl.load(q_ptrs, mask=q_ok[:, None] & (d[None, :] < D_QK), other=0.0)

    # Per-query windows, and the tile's union [lo(first), hi(last)) and core [lo(last), hi(first)).
    loz, hiz = _window(qz, lgz, Kz, Sz, Cz)
    loy, hiy = _window(qy, lgy, Ky, Sy, Cy)
    lox, hix = _window(qx, lgx, Kx, Sx, Cx)
    ulz, chz = _window(q0z, lgz, Kz, Sz, Cz)
    uly, chy = _window(q0y, lgy, Ky, Sy, Cy)
    ulx, chx = _window(q0x, lgx, Kx, Sx, Cx)
    clz, uhz = _window(tl.minimum(q0z + BZ - 1, lgz - 1), lgz, Kz, Sz, Cz)
    cly, uhy = _window(tl.minimum(q0y + BY - 1, lgy - 1), lgy, Ky, Sy, Cy)
    clx, uhx = _window(tl.minimum(q0x + BX - 1, lgx - 1), lgx, Kx, Sx, Cx)
    nkz = tl.cdiv(uhz - ulz, KBZ)
    nky = tl.cdiv(uhy - uly, KBY)
    nkx = tl.cdiv(uhx - ulx, KBX)

    j = tl.arange(0, TK)
    jz = j // (KBY * KBX)
    jy = (j // KBX) % KBY
    jx = j % KBX
    k_base = K + b.to(tl.int64) * skb + hk * skh
    v_base = V + b.to(tl.int64) * svb + hk * svh

    m_i = tl.full([TQ], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([TQ], dtype=tl.float32)
    acc = tl.zeros([TQ, BLOCK_DV], dtype=tl.float32)
    n_generic = nkz * nky * nkx
    if SPLIT_1D:
        # 1-D only (opt-in, not yet timed on a GPU): the key tiles are a run [masked head |
        # full core | masked tail]; three loops, the middle one with neither a score mask nor
        # a load mask.
        n_generic = 0
        full_lo = tl.minimum(tl.cdiv(tl.maximum(clx - ulx, 0), KBX), nkx)
        full_hi = tl.maximum(tl.minimum((chx - ulx) // KBX, nkx), full_lo)
        for n in range(0, full_lo):
            acc, l_i, m_i = _attend_1d(acc, l_i, m_i, q, k_base, v_base, ulx + n * KBX, gx, Dx, skx, svx, d, dv,
                                       jx, lox, hix, uhx, qk_scale, D_QK, D_V, True, EVEN_D)
        for n in range(full_lo, full_hi):
            acc, l_i, m_i = _attend_1d(acc, l_i, m_i, q, k_base, v_base, ulx + n * KBX, gx, Dx, skx, svx, d, dv,
                                       jx, lox, hix, uhx, qk_scale, D_QK, D_V, False, EVEN_D)
        for n in range(full_hi, nkx):
            acc, l_i, m_i = _attend_1d(acc, l_i, m_i, q, k_base, v_base, ulx + n * KBX, gx, Dx, skx, svx, d, dv,
                                       jx, lox, hix, uhx, qk_scale, D_QK, D_V, True, EVEN_D)
    for n in range(0, n_generic):
        k0z = ulz + (n // (nky * nkx)) * KBZ
        k0y = uly + ((n // nkx) % nky) * KBY
        k0x = ulx + (n % nkx) * KBX
        kz = k0z + jz
        ky = k0y + jy
        kx = k0x + jx
        k_ok = (kz < uhz) & (ky < uhy) & (kx < uhx)
        koff = (kz * Dz + gz) * skz + (ky * Dy + gy) * sky + (kx * Dx + gx) * skx
        voff = (kz * Dz + gz) * svz + (ky * Dy + gy) * svy + (kx * Dx + gx) * svx
        k = tl.load(k_base + koff[:, None] + d[None, :], mask=k_ok[:, None] & (d[None, :] < D_QK), other=0.0)
        v = tl.load(v_base + voff[:, None] + dv[None, :], mask=k_ok[:, None] & (dv[None, :] < D_V), other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        full = (k0z >= clz) & (k0z + KBZ <= chz) & (k0y >= cly) & (k0y + KBY <= chy) \
            & (k0x >= clx) & (k0x + KBX <= chx)
        if not full:
            keep = _in_window(kx, lox, hix)
            if NDIM >= 2:
                keep = keep & _in_window(ky, loy, hiy)
            if NDIM >= 3:
                keep = keep & _in_window(kz, loz, hiz)
            s = tl.where(keep, s, float("-inf"))
        acc, l_i, m_i = _online_softmax(acc, l_i, m_i, s, v)

    out = acc / l_i[:, None]
    o_ptrs = O + b.to(tl.int64) * sob + h * soh + (rz * soz + ry * soy + rx * sox)[:, None] + dv[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=q_ok[:, None] & (dv[None, :] < D_V))
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453
    l_ptrs = LSE + b.to(tl.int64) * slb + h * slh + rz * slz + ry * sly + rx * slx
    tl.store(l_ptrs, lse, mask=q_ok)


@triton.jit(do_not_specialize=_PROBLEM_ARGS_DQ)
def _dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    sqb, sqz, sqy, sqx, sqh,
    skb, skz, sky, skx, skh,
    svb, svz, svy, svx, svh,
    sdb, sdz, sdy, sdx, sdh,
    slb, slz, sly, slx, slh,
    H, GQA,
    Lz, Ly, Lx, Kz, Ky, Kx, Sz, Sy, Sx, Dz, Dy, Dx, Cz, Cy, Cx,
    NTz, NTy, NTx,
    qk_scale, scale, D_QK, D_V,
    BZ: tl.constexpr, BY: tl.constexpr, BX: tl.constexpr,
    KBZ: tl.constexpr, KBY: tl.constexpr, KBX: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, NDIM: tl.constexpr,
):
    """dQ of one query box: the forward's loop again, with P rebuilt from lse. DQ shares q's strides, DO has sd*."""
    TQ: tl.constexpr = BZ * BY * BX
    TK: tl.constexpr = KBZ * KBY * KBX
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // GQA
    gz, gy, gx, lgz, lgy, lgx, q0z, q0y, q0x = _box_origin(pid, NTz, NTy, NTx, Lz, Ly, Lx, Dz, Dy, Dx, BZ, BY, BX)
    if (q0z >= lgz) | (q0y >= lgy) | (q0x >= lgx):
        return

    i = tl.arange(0, TQ)
    qz = q0z + i // (BY * BX)
    qy = q0y + (i // BX) % BY
    qx = q0x + i % BX
    q_ok = (qz < lgz) & (qy < lgy) & (qx < lgx)
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    rz = qz * Dz + gz
    ry = qy * Dy + gy
    rx = qx * Dx + gx
    qoff = rz * sqz + ry * sqy + rx * sqx
    doff = rz * sdz + ry * sdy + rx * sdx
    q = tl.load(Q + b.to(tl.int64) * sqb + h * sqh + qoff[:, None] + d[None, :],
                mask=q_ok[:, None] & (d[None, :] < D_QK), other=0.0)
    do = tl.load(DO + b.to(tl.int64) * sdb + h * sdh + doff[:, None] + dv[None, :],
                 mask=q_ok[:, None] & (dv[None, :] < D_V), other=0.0)
    loff = b.to(tl.int64) * slb + h * slh + rz * slz + ry * sly + rx * slx
    lse2 = tl.load(LSE + loff, mask=q_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + loff, mask=q_ok, other=0.0)

    loz, hiz = _window(qz, lgz, Kz, Sz, Cz)
    loy, hiy = _window(qy, lgy, Ky, Sy, Cy)
    lox, hix = _window(qx, lgx, Kx, Sx, Cx)
    ulz, chz = _window(q0z, lgz, Kz, Sz, Cz)
    uly, chy = _window(q0y, lgy, Ky, Sy, Cy)
    ulx, chx = _window(q0x, lgx, Kx, Sx, Cx)
    clz, uhz = _window(tl.minimum(q0z + BZ - 1, lgz - 1), lgz, Kz, Sz, Cz)
    cly, uhy = _window(tl.minimum(q0y + BY - 1, lgy - 1), lgy, Ky, Sy, Cy)
    clx, uhx = _window(tl.minimum(q0x + BX - 1, lgx - 1), lgx, Kx, Sx, Cx)
    nkz = tl.cdiv(uhz - ulz, KBZ)
    nky = tl.cdiv(uhy - uly, KBY)
    nkx = tl.cdiv(uhx - ulx, KBX)

    j = tl.arange(0, TK)
    jz = j // (KBY * KBX)
    jy = (j // KBX) % KBY
    jx = j % KBX
    k_base = K + b.to(tl.int64) * skb + hk * skh
    v_base = V + b.to(tl.int64) * svb + hk * svh
    dq = tl.zeros([TQ, BLOCK_D], dtype=tl.float32)
    for n in range(0, nkz * nky * nkx):
        k0z = ulz + (n // (nky * nkx)) * KBZ
        k0y = uly + ((n // nkx) % nky) * KBY
        k0x = ulx + (n % nkx) * KBX
        kz = k0z + jz
        ky = k0y + jy
        kx = k0x + jx
        k_ok = (kz < uhz) & (ky < uhy) & (kx < uhx)
        koff = (kz * Dz + gz) * skz + (ky * Dy + gy) * sky + (kx * Dx + gx) * skx
        voff = (kz * Dz + gz) * svz + (ky * Dy + gy) * svy + (kx * Dx + gx) * svx
        k = tl.load(k_base + koff[:, None] + d[None, :], mask=k_ok[:, None] & (d[None, :] < D_QK), other=0.0)
        v = tl.load(v_base + voff[:, None] + dv[None, :], mask=k_ok[:, None] & (dv[None, :] < D_V), other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        full = (k0z >= clz) & (k0z + KBZ <= chz) & (k0y >= cly) & (k0y + KBY <= chy) \
            & (k0x >= clx) & (k0x + KBX <= chx)
        if not full:
            keep = _in_window(kx, lox, hix)
            if NDIM >= 2:
                keep = keep & _in_window(ky, loy, hiy)
            if NDIM >= 3:
                keep = keep & _in_window(kz, loz, hiz)
            s = tl.where(keep, s, float("-inf"))
        p = tl.math.exp2(s - lse2[:, None])
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    dq = dq * scale
    tl.store(DQ + b.to(tl.int64) * sqb + h * sqh + qoff[:, None] + d[None, :], dq.to(DQ.dtype.element_ty),
             mask=q_ok[:, None] & (d[None, :] < D_QK))


@triton.jit(do_not_specialize=_PROBLEM_ARGS_DKDV)
def _dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, RZ, RY, RX,
    sqb, sqz, sqy, sqx, sqh,
    skb, skz, sky, skx, skh,
    svb, svz, svy, svx, svh,
    sdb, sdz, sdy, sdx, sdh,
    slb, slz, sly, slx, slh,
    H, GQA, HKV,
    Lz, Ly, Lx, Kz, Ky, Kx, Sz, Sy, Sx, Dz, Dy, Dx, Cz, Cy, Cx,
    NTz, NTy, NTx, RTz, RTy, RTx,
    qk_scale, scale, D_QK, D_V,
    BZ: tl.constexpr, BY: tl.constexpr, BX: tl.constexpr,
    QBZ: tl.constexpr, QBY: tl.constexpr, QBX: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, NDIM: tl.constexpr,
):
    """dK, dV of one key box (BZ x BY x BX) of one kv head, summed over the query heads sharing it (GQA).

    R*: [groups_axis, key_tiles_axis, 2] int32, the in-group query range attending each key box.
    DO shares q's layout (sd*); DK shares k's (sk*), DV v's (sv*).
    """
    TK: tl.constexpr = BZ * BY * BX
    TQ: tl.constexpr = QBZ * QBY * QBX
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HKV
    hk = bh % HKV
    gz, gy, gx, lgz, lgy, lgx, k0z, k0y, k0x = _box_origin(pid, NTz, NTy, NTx, Lz, Ly, Lx, Dz, Dy, Dx, BZ, BY, BX)
    tz, ty, tx = k0z // BZ, k0y // BY, k0x // BX  # the key box's index, for the R* tables
    if (k0z >= lgz) | (k0y >= lgy) | (k0x >= lgx):
        return

    j = tl.arange(0, TK)
    kz = k0z + j // (BY * BX)
    ky = k0y + (j // BX) % BY
    kx = k0x + j % BX
    k_ok = (kz < lgz) & (ky < lgy) & (kx < lgx)
    k_box_ok = (k0z + BZ <= lgz) & (k0y + BY <= lgy) & (k0x + BX <= lgx)
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    koff = (kz * Dz + gz) * skz + (ky * Dy + gy) * sky + (kx * Dx + gx) * skx
    voff = (kz * Dz + gz) * svz + (ky * Dy + gy) * svy + (kx * Dx + gx) * svx
    k_ptrs = b.to(tl.int64) * skb + hk * skh + koff[:, None] + d[None, :]
    v_ptrs = b.to(tl.int64) * svb + hk * svh + voff[:, None] + dv[None, :]
    k = tl.load(K + k_ptrs, mask=k_ok[:, None] & (d[None, :] < D_QK), other=0.0)
    v = tl.load(V + v_ptrs, mask=k_ok[:, None] & (dv[None, :] < D_V), other=0.0)

    # The queries attending this key box: one in-group range per axis, from the host tables.
    qlz = tl.load(RZ + (gz * RTz + tz) * 2)
    qhz = tl.load(RZ + (gz * RTz + tz) * 2 + 1)
    qly = tl.load(RY + (gy * RTy + ty) * 2)
    qhy = tl.load(RY + (gy * RTy + ty) * 2 + 1)
    qlx = tl.load(RX + (gx * RTx + tx) * 2)
    qhx = tl.load(RX + (gx * RTx + tx) * 2 + 1)
    nqz = tl.maximum(tl.cdiv(qhz - qlz, QBZ), 0)
    nqy = tl.maximum(tl.cdiv(qhy - qly, QBY), 0)
    nqx = tl.maximum(tl.cdiv(qhx - qlx, QBX), 0)

    i = tl.arange(0, TQ)
    iz = i // (QBY * QBX)
    iy = (i // QBX) % QBY
    ix = i % QBX
    dk = tl.zeros([TK, BLOCK_D], dtype=tl.float32)
    dvacc = tl.zeros([TK, BLOCK_DV], dtype=tl.float32)
    nq = nqz * nqy * nqx
    for n in range(0, nq * GQA):
        h = hk * GQA + n // nq
        m = n % nq
        q0z = qlz + (m // (nqy * nqx)) * QBZ
        q0y = qly + ((m // nqx) % nqy) * QBY
        q0x = qlx + (m % nqx) * QBX
        qz = q0z + iz
        qy = q0y + iy
        qx = q0x + ix
        q_ok = (qz < qhz) & (qy < qhy) & (qx < qhx)
        rz = qz * Dz + gz
        ry = qy * Dy + gy
        rx = qx * Dx + gx
        qoff = rz * sqz + ry * sqy + rx * sqx
        doff = rz * sdz + ry * sdy + rx * sdx
        q = tl.load(Q + b.to(tl.int64) * sqb + h * sqh + qoff[:, None] + d[None, :],
                    mask=q_ok[:, None] & (d[None, :] < D_QK), other=0.0)
        do = tl.load(DO + b.to(tl.int64) * sdb + h * sdh + doff[:, None] + dv[None, :],
                     mask=q_ok[:, None] & (dv[None, :] < D_V), other=0.0)
        loff = b.to(tl.int64) * slb + h * slh + rz * slz + ry * sly + rx * slx
        # Padded queries get lse = +inf, so their P is 0 and they add nothing.
        lse2 = tl.load(LSE + loff, mask=q_ok, other=float("inf")) * 1.4426950408889634
        delta = tl.load(DELTA + loff, mask=q_ok, other=0.0)
        st = tl.dot(k, tl.trans(q)) * qk_scale
        # Every query of the box attends every key of the box iff, per axis, the key box
        # lies inside [lo(last query), hi(first query)).
        lq = tl.minimum(q0z + QBZ - 1, qhz - 1)
        c_lo_z, _u0 = _window(lq, lgz, Kz, Sz, Cz)
        _u1, c_hi_z = _window(q0z, lgz, Kz, Sz, Cz)
        lq = tl.minimum(q0y + QBY - 1, qhy - 1)
        c_lo_y, _u2 = _window(lq, lgy, Ky, Sy, Cy)
        _u3, c_hi_y = _window(q0y, lgy, Ky, Sy, Cy)
        lq = tl.minimum(q0x + QBX - 1, qhx - 1)
        c_lo_x, _u4 = _window(lq, lgx, Kx, Sx, Cx)
        _u5, c_hi_x = _window(q0x, lgx, Kx, Sx, Cx)
        full = k_box_ok & (k0z >= c_lo_z) & (k0z + BZ <= c_hi_z) & (k0y >= c_lo_y) & (k0y + BY <= c_hi_y) \
            & (k0x >= c_lo_x) & (k0x + BX <= c_hi_x)
        if not full:
            loz, hiz = _window(qz, lgz, Kz, Sz, Cz)
            loy, hiy = _window(qy, lgy, Ky, Sy, Cy)
            lox, hix = _window(qx, lgx, Kx, Sx, Cx)
            keep = _in_window_t(lox, hix, kx)
            if NDIM >= 2:
                keep = keep & _in_window_t(loy, hiy, ky)
            if NDIM >= 3:
                keep = keep & _in_window_t(loz, hiz, kz)
            st = tl.where(keep, st, float("-inf"))
        pt = tl.math.exp2(st - lse2[None, :])
        dvacc += tl.dot(pt.to(do.dtype), do)
        dpt = tl.dot(v, tl.trans(do))
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(q.dtype), q)
    dk = dk * scale
    tl.store(DK + k_ptrs, dk.to(DK.dtype.element_ty), mask=k_ok[:, None] & (d[None, :] < D_QK))
    tl.store(DV + v_ptrs, dvacc.to(DV.dtype.element_ty), mask=k_ok[:, None] & (dv[None, :] < D_V))


@triton.jit
def _attend_tma(acc, l_i, m_i, q, K_desc, V_desc, row, col, kx, lox, hix, qk_scale, MASKED: tl.constexpr):
    """One key tile loaded by the tensor-memory accelerator (TMA); rows past the tensor read as zeros."""
    k = K_desc.load([row, col])
    v = V_desc.load([row, col])
    s = tl.dot(q, tl.trans(k)) * qk_scale
    if MASKED:
        s = tl.where(_in_window(kx, lox, hix), s, float("-inf"))
    return _online_softmax(acc, l_i, m_i, s, v)


@triton.jit(do_not_specialize=["H", "GQA", "N", "Kx", "Sx", "Cx"])
def _fwd_1d_tma_kernel(
    Q, K_desc, V_desc, O, LSE,
    sqb, sqx, sqh, sob, sox, soh, slb, slx, slh,
    H, GQA, N, Kx, Sx, Cx,
    qk_scale,
    BM: tl.constexpr, BN: tl.constexpr, BLOCK_D: tl.constexpr, WS: tl.constexpr, OVERLAP: tl.constexpr = False,
):
    """Forward of 1-D problems without dilation, head dim a power of two: K/V tiles through TMA.

    K_desc, V_desc: [B * N, H_kv * D] descriptors with [BN, D] blocks (rows are tokens of all
    batch entries; a tile that runs past this entry's tokens is masked by the scores).
    OVERLAP: the unmasked core computes the next tile's scores before this tile's softmax, so the
    matrix unit works while the exponentials are taken (in sm_90 SASS the next tile's HGMMAs are
    interleaved with this tile's MUFU.EX2; without it every softmax waits for its scores).
    """
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // GQA
    q0 = pid * BM
    i = tl.arange(0, BM)
    qx = q0 + i
    q_ok = qx < N
    d = tl.arange(0, BLOCK_D)
    q = tl.load(Q + b.to(tl.int64) * sqb + h * sqh + qx[:, None] * sqx + d[None, :], mask=q_ok[:, None], other=0.0)
    lox, hix = _window(qx, N, Kx, Sx, Cx)
    ulx, chx = _window(q0, N, Kx, Sx, Cx)
    clx, uhx = _window(tl.minimum(q0 + BM - 1, N - 1), N, Kx, Sx, Cx)
    nk = tl.cdiv(uhx - ulx, BN)
    full_lo = tl.minimum(tl.cdiv(tl.maximum(clx - ulx, 0), BN), nk)
    full_hi = tl.maximum(tl.minimum((chx - ulx) // BN, nk), full_lo)
    row0 = b * N + ulx
    col = hk * BLOCK_D
    j = tl.arange(0, BN)
    m_i = tl.full([BM], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, BLOCK_D], dtype=tl.float32)
    for n in range(0, full_lo):
        acc, l_i, m_i = _attend_tma(acc, l_i, m_i, q, K_desc, V_desc, row0 + n * BN, col, ulx + n * BN + j,
                                    lox, hix, qk_scale, True)
    if OVERLAP:
        if full_hi > full_lo:
            s = tl.dot(q, tl.trans(K_desc.load([row0 + full_lo * BN, col]))) * qk_scale
            for n in tl.range(full_lo, full_hi - 1):
                # Both loads before the product: written the other way round, the compiler waits for the
                # next scores before the exponentials (seen in the SASS) and nothing overlaps.
                v = V_desc.load([row0 + n * BN, col])
                k_next = K_desc.load([row0 + (n + 1) * BN, col])
                s_next = tl.dot(q, tl.trans(k_next)) * qk_scale
                acc, l_i, m_i = _online_softmax(acc, l_i, m_i, s, v)
                s = s_next
            acc, l_i, m_i = _online_softmax(acc, l_i, m_i, s, V_desc.load([row0 + (full_hi - 1) * BN, col]))
    else:
        for n in tl.range(full_lo, full_hi, warp_specialize=WS):
            acc, l_i, m_i = _attend_tma(acc, l_i, m_i, q, K_desc, V_desc, row0 + n * BN, col, ulx + n * BN + j,
                                        lox, hix, qk_scale, False)
    for n in range(full_hi, nk):
        acc, l_i, m_i = _attend_tma(acc, l_i, m_i, q, K_desc, V_desc, row0 + n * BN, col, ulx + n * BN + j,
                                    lox, hix, qk_scale, True)
    out = acc / l_i[:, None]
    tl.store(O + b.to(tl.int64) * sob + h * soh + qx[:, None] * sox + d[None, :], out.to(O.dtype.element_ty),
             mask=q_ok[:, None])
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453
    tl.store(LSE + b.to(tl.int64) * slb + h * slh + qx * slx, lse, mask=q_ok)
