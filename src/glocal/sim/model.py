"""Tile counts, FLOPs, bytes and time bounds of block-sparse neighborhood attention.

Legend:
    Problem   neighborhood attention ``q, k: [B, *grid, H, D]``, ``v: [B, *grid, H, D_v]`` (DESIGN.md §1)
    Tiling    how a tile kernel cuts queries and keys into tiles (N-D boxes or 1-D runs of the row-major order)
    N         tokens of the grid; ``(query tile, key tile)`` pairs are what a tile kernel visits or skips

A tile pair is *visited* when at least one of its (query, key) pairs is attended (a kernel that skips
only fully masked tiles computes it), *skipped* when none is, *full* when every pair is attended (no
mask needed) and *partial* otherwise. *Computed pairs* are the (query, key) pairs of the visited
tiles, counting only tokens that exist (an edge tile of a non-dividing size is smaller); *padded
pairs* count every visited tile at its nominal size (what a fixed-shape matrix unit issues).

Example:
    >>> p = Problem((64, 64), heads=4, head_dim=64, kernel_size=7)
    >>> c = count_tiles(p, Tiling((8, 8), (8, 8)))
    >>> c.visited, c.full, c.partial, c.attended_pairs
    (484, 0, 484, 200704)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..checks import sim as checks
from ..masks import attended_pairs, grid_coords
from ..spec import NeighborhoodSpec, axis_window, make_neighborhood_spec

BACKWARD_FACTOR = 3.5  # forward 2 matmuls + backward 5 (as glocal bench's floor)


@dataclass(frozen=True)
class Problem:
    """One neighborhood attention problem: ``q, k: [batch, *grid, heads, head_dim]``, ``v: [..., value_dim]``.

    ``kernel_size``, ``stride``, ``dilation``, ``is_causal`` are an int (bool) or one per axis, validated as in
    :func:`glocal.spec.make_neighborhood_spec` (the ``spec`` field holds the result). ``dtype`` names the
    element type of q, k, v and out (``"float32"``, ``"float64"``, ``"bfloat16"``, ``"float16"``);
    ``backward`` asks for forward+backward figures.

    Example:
        >>> Problem((16, 16), heads=2, head_dim=32, kernel_size=(3, 5), is_causal=(True, False)).spec.kernel_size
        (3, 5)
    """

    grid: tuple
    heads: int
    head_dim: int
    kernel_size: object
    stride: object = 1
    dilation: object = 1
    is_causal: object = False
    value_dim: int | None = None
    dtype: str = "float32"
    backward: bool = False
    batch: int = 1
    spec: NeighborhoodSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        value_dim = self.head_dim if self.value_dim is None else self.value_dim
        checks.problem_sizes(self.heads, self.head_dim, value_dim, self.batch)
        dtype = str(self.dtype).removeprefix("torch.")
        checks.problem_dtype(dtype)
        spec = make_neighborhood_spec(tuple(self.grid), self.kernel_size, self.stride, self.dilation, self.is_causal)
        for name, value in (("grid", spec.spatial), ("kernel_size", spec.kernel_size), ("stride", spec.stride),
                            ("dilation", spec.dilation), ("is_causal", spec.is_causal), ("value_dim", value_dim),
                            ("dtype", dtype), ("backward", bool(self.backward)), ("spec", spec)):
            object.__setattr__(self, name, value)

    @classmethod
    def from_spec(cls, spec: NeighborhoodSpec, heads: int, head_dim: int, **options) -> Problem:
        """The problem of a :class:`glocal.spec.NeighborhoodSpec` with these heads and head dim."""
        return cls(spec.spatial, heads, head_dim, spec.kernel_size, spec.stride, spec.dilation, spec.is_causal,
                   **options)

    def replace(self, **changes) -> Problem:
        fields = dict(grid=self.grid, heads=self.heads, head_dim=self.head_dim, kernel_size=self.kernel_size,
                      stride=self.stride, dilation=self.dilation, is_causal=self.is_causal, value_dim=self.value_dim,
                      dtype=self.dtype, backward=self.backward, batch=self.batch)
        fields.update(changes)
        return Problem(**fields)

    @property
    def ndim(self) -> int:
        return len(self.grid)

    @property
    def num_tokens(self) -> int:
        return self.spec.num_tokens

    @property
    def element_bytes(self) -> int:
        return checks.DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class Tiling:
    """How a tile kernel cuts the problem: query tiles and key tiles, and which tile pairs it considers.

    - ``layout="box"``: ``query_tile`` / ``key_tile`` are N-D boxes (an int: the same on every axis); boxes
      tile the grid from coordinate 0, edge boxes partial.
    - ``layout="flat"``: tiles are runs of ``query_tile`` / ``key_tile`` tokens of the row-major order (as
      FlexAttention's 128-token blocks, NATTEN's flattened path).
    - ``groups=True`` (box only): per axis the dilation groups (coordinates ``g, g + d, ...``) are tiled
      separately, each from its first member, and a query tile is only paired with key tiles of its own
      group (glocal's CPU and Triton kernels, NATTEN). With dilation 1 it changes nothing.
    - ``key_anchor="query"`` (box, groups only): key tiles are not a fixed grid; per query tile they are
      cut from the first key any of its queries attends, ``key_tile`` at a time, covering the union of its
      windows (the last one clipped at the union's end), as glocal's Triton kernel does. The tile pairs it
      considers are then each query tile with the ``ceil(group length / key_tile)`` key tiles per axis a
      grid of that size would have; the ones outside the union count as skipped.

    Example:
        >>> Tiling(128, 128, layout="flat")
        Tiling(query_tile=128, key_tile=128, layout='flat', groups=False, key_anchor='grid')
    """

    query_tile: object
    key_tile: object
    layout: str = "box"
    groups: bool = False
    key_anchor: str = "grid"

    def __post_init__(self):
        checks.tiling_options(self.layout, self.groups, self.key_anchor)

    def sizes(self, ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(query tile, key tile)`` as per-axis tuples (flat: one entry each), validated."""
        return (checks.tile_sizes("query_tile", self.query_tile, self.layout, ndim),
                checks.tile_sizes("key_tile", self.key_tile, self.layout, ndim))

    def describe(self) -> str:
        if self.layout == "flat":
            return f"flat {self.query_tile}/{self.key_tile}"

        def fmt(t):
            return "x".join(str(v) for v in t) if isinstance(t, (tuple, list)) else str(t)

        extra = (" groups" if self.groups else "") + (" query-anchored" if self.key_anchor == "query" else "")
        return f"box {fmt(self.query_tile)}/{fmt(self.key_tile)}{extra}"


@dataclass(frozen=True)
class TileCounts:
    """Exact counts over the tile pairs a tiling considers (see the module docstring for the classes).

    Fields: ``total = visited + skipped`` tile pairs, ``visited = full + partial``; ``attended_pairs`` (useful
    (query, key) pairs, equal to :func:`glocal.masks.attended_pairs`), ``computed_pairs`` (pairs of the
    visited tiles), ``padded_pairs`` (visited tiles at nominal size), ``key_loads`` / ``query_loads`` (key /
    query tokens summed over visited tiles: what a kernel reads per visited tile), ``query_tiles`` and
    ``key_tiles`` (tiles of each kind; key tiles of a query-anchored tiling: the grid-equivalent count).

    Example:
        >>> c = count_tiles(Problem((16,), 1, 16, kernel_size=5), Tiling(4, 4))
        >>> (c.total, c.visited, c.skipped, c.full, c.partial)
        (16, 10, 6, 0, 10)
    """

    total: int
    visited: int
    full: int
    attended_pairs: int
    computed_pairs: int
    padded_pairs: int
    key_loads: int
    query_loads: int
    query_tiles: int
    key_tiles: int

    @property
    def skipped(self) -> int:
        return self.total - self.visited

    @property
    def partial(self) -> int:
        return self.visited - self.full

    @property
    def density(self) -> float:
        """Attended pairs / computed pairs: 1.0 for a perfectly block-sparse tiling."""
        return self.attended_pairs / self.computed_pairs if self.computed_pairs else 1.0


# ------------------------------------------------------------------------------------------------ counting


class _AxisStats(NamedTuple):
    total: int
    visited: int
    full: int
    attended: int
    computed: int
    key_loads: int
    query_loads: int
    query_tiles: int
    key_tiles: int


def _cdiv(a, b):
    return -((-a) // b)


def _axis_grid(length, k, s, d, causal, bq, bk, groups):
    """Tile-pair stats of one axis with fixed key tiles. O(L · (K·d / bk + 2)) time and memory."""
    x = torch.arange(length)
    g, lo, hi = axis_window(x, length, k, s, d, causal)
    glen = (length - torch.arange(d) + d - 1) // d  # group lengths
    if groups:
        qtiles_g, ktiles_g = _cdiv(glen, bq), _cdiv(glen, bk)
        qoff = torch.cumsum(qtiles_g, 0) - qtiles_g
        koff = torch.cumsum(ktiles_g, 0) - ktiles_g
        qt = qoff[g] + (x // d) // bq
        n_qt, n_kt = int(qtiles_g.sum()), int(ktiles_g.sum())
        first, last = lo // bk, (hi - 1) // bk
        width = int((last - first).max()) + 1
        c = first[:, None] + torch.arange(width)
        count = (torch.minimum(hi[:, None], (c + 1) * bk) - torch.maximum(lo[:, None], c * bk)).clamp(min=0)
        count = torch.where(c <= last[:, None], count, 0)
        kt = koff[g][:, None] + c
        q_size = torch.bincount(qt, minlength=n_qt)
        k_group = torch.repeat_interleave(torch.arange(d), ktiles_g)
        k_size = (glen[k_group] - (torch.arange(n_kt) - koff[k_group]) * bk).clamp(max=bk)
        q_group = torch.repeat_interleave(torch.arange(d), qtiles_g)
        total = int(ktiles_g[q_group].sum())
    else:
        n_qt, n_kt = _cdiv(length, bq), _cdiv(length, bk)
        qt = x // bq
        first, last = (lo * d + g) // bk, ((hi - 1) * d + g) // bk
        width = int((last - first).max()) + 1
        c = first[:, None] + torch.arange(width)
        t0 = torch.maximum(_cdiv(c * bk - g[:, None], d), lo[:, None])
        t1 = torch.minimum(_cdiv((c + 1) * bk - g[:, None], d), hi[:, None])
        count = torch.where(c <= last[:, None], (t1 - t0).clamp(min=0), 0)
        kt = c
        q_size = torch.clamp(length - torch.arange(n_qt) * bq, max=bq)
        k_size = torch.clamp(length - torch.arange(n_kt) * bk, max=bk)
        total = n_qt * n_kt
    keep = count > 0
    pair = (qt[:, None] * n_kt + kt)[keep]
    uniq, inverse = torch.unique(pair, return_inverse=True)
    attended = torch.zeros(uniq.numel(), dtype=torch.long).index_add_(0, inverse, count[keep])
    nq, nk = q_size[uniq // n_kt], k_size[uniq % n_kt]
    return _AxisStats(total, int(uniq.numel()), int((attended == nq * nk).sum()), int(attended.sum()),
                      int((nq * nk).sum()), int(nk.sum()), int(nq.sum()), n_qt, n_kt)


def _axis_query_anchored(length, k, s, d, causal, bq, bk):
    """Tile-pair stats of one axis with key tiles cut from each query tile's union of windows (groups only)."""
    x = torch.arange(length)
    g, lo, hi = axis_window(x, length, k, s, d, causal)
    glen = (length - torch.arange(d) + d - 1) // d
    qtiles_g = _cdiv(glen, bq)
    qoff = torch.cumsum(qtiles_g, 0) - qtiles_g
    n_qt = int(qtiles_g.sum())
    qt = qoff[g] + (x // d) // bq
    # Windows never shrink along a group: the union of a tile is [lo(first), hi(last)); take min/max anyway.
    big = length + 1
    ul = torch.full((n_qt,), big, dtype=torch.long).scatter_reduce_(0, qt, lo, "amin")
    uh = torch.zeros(n_qt, dtype=torch.long).scatter_reduce_(0, qt, hi, "amax")
    pieces = _cdiv(uh - ul, bk)
    width = int(pieces.max())
    n = torch.arange(width)
    ps = ul[qt][:, None] + n * bk
    pe = torch.minimum(ps + bk, uh[qt][:, None])
    count = (torch.minimum(hi[:, None], pe) - torch.maximum(lo[:, None], ps)).clamp(min=0)
    count = torch.where(n < pieces[qt][:, None], count, 0)
    attended = torch.zeros(n_qt, width, dtype=torch.long).index_add_(0, qt, count)
    q_size = torch.bincount(qt, minlength=n_qt)
    ps_t = ul[:, None] + n * bk
    k_size = (torch.minimum(ps_t + bk, uh[:, None]) - ps_t).clamp(min=0)
    k_size = torch.where(n < pieces[:, None], k_size, 0)
    visited = attended > 0
    nq = q_size[:, None].expand_as(attended)
    q_group = torch.repeat_interleave(torch.arange(d), qtiles_g)
    ktiles_g = _cdiv(glen, bk)
    return _AxisStats(int(ktiles_g[q_group].sum()), int(visited.sum()), int((visited & (attended == nq * k_size)).sum()),
                      int(attended.sum()), int((nq * k_size)[visited].sum()), int(k_size[visited].sum()),
                      int(nq[visited].sum()), n_qt, int(ktiles_g.sum()))


def _count_box(spec: NeighborhoodSpec, qbox, kbox, groups, anchor, pad_q, pad_k) -> TileCounts:
    stats = []
    for a in range(spec.ndim):
        length, k, s, d, causal = spec.axis(a)
        if anchor == "query":
            stats.append(_axis_query_anchored(length, k, s, d, causal, qbox[a], kbox[a]))
        else:
            stats.append(_axis_grid(length, k, s, d, causal, qbox[a], kbox[a], groups))

    def prod(values):
        out = 1
        for v in values:
            out *= int(v)
        return out

    visited = prod(st.visited for st in stats)
    return TileCounts(total=prod(st.total for st in stats), visited=visited, full=prod(st.full for st in stats),
                      attended_pairs=prod(st.attended for st in stats),
                      computed_pairs=prod(st.computed for st in stats), padded_pairs=visited * pad_q * pad_k,
                      key_loads=prod(st.key_loads for st in stats), query_loads=prod(st.query_loads for st in stats),
                      query_tiles=prod(st.query_tiles for st in stats), key_tiles=prod(st.key_tiles for st in stats))


_FLAT_CHUNK_ELEMENTS = 1 << 21


def _count_flat(spec: NeighborhoodSpec, bq: int, bk: int) -> TileCounts:
    """Flat tiles: per query, each row of its window box (fixed leading-axis keys) is a strided run of flat
    indices; its counts per key tile are summed per (query tile, key tile). Queries run in chunks of whole
    query tiles, so no pair spans two chunks. O(N · prod(K_lead) · (K_last·d_last / bk + 2))."""
    n = spec.num_tokens
    nd = spec.ndim
    n_qt, n_kt = _cdiv(n, bq), _cdiv(n, bk)
    flat_stride = [1] * nd
    for a in range(nd - 2, -1, -1):
        flat_stride[a] = flat_stride[a + 1] * spec.spatial[a + 1]
    rows = 1
    for a in range(nd - 1):
        rows *= spec.kernel_size[a]
    length, k, s, d, causal = spec.axis(nd - 1)
    width = _cdiv((k - 1) * d + 1, bk) + 1
    step = max(1, _FLAT_CHUNK_ELEMENTS // (rows * width * bq)) * bq
    totals = dict(visited=0, full=0, attended=0, computed=0, key_loads=0, query_loads=0)
    for begin in range(0, n, step):
        tokens = torch.arange(begin, min(begin + step, n))
        coords = grid_coords(tokens, spec.spatial)
        base = torch.zeros(tokens.numel(), 1, dtype=torch.long)
        ok = torch.ones(tokens.numel(), 1, dtype=torch.bool)
        for a in range(nd - 1):  # leading axes: every key coordinate of the window is a row
            la, ka, sa, da, ca = spec.axis(a)
            g, lo, hi = axis_window(coords[a], la, ka, sa, da, ca)
            j = torch.arange(ka)
            y = (lo[:, None] + j) * da + g[:, None]
            base = (base[:, :, None] + (y * flat_stride[a])[:, None, :]).flatten(1)
            ok = (ok[:, :, None] & (j < (hi - lo)[:, None])[:, None, :]).flatten(1)
        g, lo, hi = axis_window(coords[-1], length, k, s, d, causal)
        start = base + g[:, None]  # flat index of in-group coordinate t: start + t * d
        first = (start + lo[:, None] * d) // bk
        last = (start + (hi[:, None] - 1) * d) // bk
        c = first[:, :, None] + torch.arange(width)
        t0 = torch.maximum(_cdiv(c * bk - start[:, :, None], d), lo[:, None, None])
        t1 = torch.minimum(_cdiv((c + 1) * bk - start[:, :, None], d), hi[:, None, None])
        count = (t1 - t0).clamp(min=0)
        keep = (c <= last[:, :, None]) & ok[:, :, None] & (count > 0)
        qt = (tokens // bq)[:, None, None].expand_as(c)
        pair = (qt * n_kt + c)[keep]
        uniq, inverse = torch.unique(pair, return_inverse=True)
        attended = torch.zeros(uniq.numel(), dtype=torch.long).index_add_(0, inverse, count[keep])
        qi, kj = uniq // n_kt, uniq % n_kt
        nq = torch.clamp(n - qi * bq, max=bq)
        nk = torch.clamp(n - kj * bk, max=bk)
        totals["visited"] += int(uniq.numel())
        totals["full"] += int((attended == nq * nk).sum())
        totals["attended"] += int(attended.sum())
        totals["computed"] += int((nq * nk).sum())
        totals["key_loads"] += int(nk.sum())
        totals["query_loads"] += int(nq.sum())
    return TileCounts(total=n_qt * n_kt, visited=totals["visited"], full=totals["full"],
                      attended_pairs=totals["attended"], computed_pairs=totals["computed"],
                      padded_pairs=totals["visited"] * bq * bk, key_loads=totals["key_loads"],
                      query_loads=totals["query_loads"], query_tiles=n_qt, key_tiles=n_kt)


def count_tiles(problem: Problem, tiling: Tiling) -> TileCounts:
    """Exact :class:`TileCounts` of ``problem`` under ``tiling``, without any ``N x N`` mask.

    Box tilings: the neighborhood is a product of per-axis windows, so a tile pair is a product of per-axis
    tile pairs and every count is a product of per-axis counts; each axis costs O(L · (K·d / key tile + 2)).
    Flat tilings: per query, one strided run per row of its window; O(N · prod(leading K) · (K·d / key tile
    + 2)) time, memory bounded by chunks of whole query tiles.

    Example:
        >>> count_tiles(Problem((64,), 1, 16, kernel_size=8, stride=8), Tiling(8, 8)).partial
        0
    """
    qt, kt = tiling.sizes(problem.ndim)
    if tiling.layout == "flat":
        return _count_flat(problem.spec, qt[0], kt[0])
    pad_q = pad_k = 1
    for a in range(problem.ndim):
        pad_q, pad_k = pad_q * qt[a], pad_k * kt[a]
    return _count_box(problem.spec, qt, kt, tiling.groups, tiling.key_anchor, pad_q, pad_k)


# ------------------------------------------------------------------------------------------------ FLOPs, bytes


class Flops(NamedTuple):
    """``useful``: 2·(D + D_v) per attended pair; ``performed``: the same per computed pair (both times
    batch·heads, times 3.5 with backward)."""

    useful: int | float
    performed: int | float


def _scale(problem: Problem, per_pair: int):
    factor = problem.batch * problem.heads * 2 * (problem.head_dim + problem.value_dim)
    value = per_pair * factor
    return value * BACKWARD_FACTOR if problem.backward else value


def useful_flops(problem: Problem) -> int | float:
    """FLOPs a neighborhood kernel cannot avoid: ``2·(D + D_v)`` per attended pair, times batch·heads (an int);
    times 3.5 with ``backward`` (forward 2 matmuls + backward 5). The FLOP floor of ``glocal bench``.

    Example:
        >>> useful_flops(Problem((64, 64), heads=4, head_dim=64, kernel_size=7))
        205520896
    """
    return _scale(problem, attended_pairs(problem.spec))


def flops(problem: Problem, counts: TileCounts) -> Flops:
    """Useful and performed FLOPs of ``problem`` under the tiling that gave ``counts``.

    Example:
        >>> p = Problem((64,), heads=1, head_dim=16, kernel_size=8, stride=8)
        >>> flops(p, count_tiles(p, Tiling(8, 8)))
        Flops(useful=32768, performed=32768)
    """
    return Flops(_scale(problem, counts.attended_pairs), _scale(problem, counts.computed_pairs))


def _bytes(problem: Problem, key_loads: int, query_loads: int) -> int | float:
    e, dq, dv, n = problem.element_bytes, problem.head_dim, problem.value_dim, problem.num_tokens
    forward = key_loads * (dq + dv) * e + n * ((dq + dv) * e + 4)
    total = forward
    if problem.backward:
        delta = n * 2 * dv * e + n * 4                            # delta = rowsum(dO * O)
        dq_pass = n * ((dq + dv) * e + 8) + key_loads * (dq + dv) * e + n * dq * e
        dkdv_pass = n * (dq + dv) * e * 2 + query_loads * ((dq + dv) * e + 8)
        total = forward + delta + dq_pass + dkdv_pass
    return total * problem.batch * problem.heads


def bytes_moved(problem: Problem, tiling: Tiling, counts: TileCounts) -> int:
    """Bytes a tile kernel moves between memory and its fast memory, per the model below (times batch·heads).

    Forward: every query tile reads its queries once and writes out and lse once
    (``N·((D + D_v)·e + 4)``); every visited tile pair reads its key tile's keys and values
    (``key_loads·(D + D_v)·e``). Nothing is reused across tiles through caches, so where windows stay in a
    cache (a CPU) this overstates the traffic. Backward (``problem.backward``) adds delta = rowsum(dO·O)
    (reads dO, O; writes delta), a dQ pass over the same tile pairs (per query tile q, dO, lse, delta read
    and dq written, per visited pair k and v read) and a dK/dV pass over the transposed pairs (per key tile
    k, v read and dk, dv written, per visited pair the query tile's q, dO, lse, delta read). ``e`` is the
    element size of ``problem.dtype``. ``tiling`` is accepted for symmetry (the counts carry the loads).

    Example:
        >>> p = Problem((64,), heads=1, head_dim=16, kernel_size=8, stride=8)
        >>> bytes_moved(p, Tiling(8, 8), count_tiles(p, Tiling(8, 8)))
        16640
    """
    return _bytes(problem, counts.key_loads, counts.query_loads)


def dense_bytes(problem: Problem) -> int | float:
    """Bytes of dense attention over all tokens if every tensor moves once (its least traffic)."""
    n = problem.num_tokens
    return _bytes(problem, n, n)


def dense_pairs(problem: Problem) -> int:
    """(query, key) pairs of dense attention over all N tokens; causal (N·(N+1)/2) for a 1-D causal problem,
    as ``glocal bench``'s dense baseline."""
    n = problem.num_tokens
    return n * (n + 1) // 2 if problem.ndim == 1 and problem.is_causal[0] else n * n


# ------------------------------------------------------------------------------------------------ time model


@dataclass(frozen=True)
class Hardware:
    """A machine's measured figures: ``peak_gflops`` (GFLOP/s of the best matmul) and ``bandwidth_gbs``
    (GB/s of the best large copy, reads plus writes). An input: measure it with ``glocal.sim.calibrate``.

    Example:
        >>> Hardware(200.0, 20.0, "example").seconds(4e9, 2e9)
        (0.02, 0.1)
    """

    peak_gflops: float
    bandwidth_gbs: float
    name: str = ""

    def __post_init__(self):
        checks.hardware_figures(self.peak_gflops, self.bandwidth_gbs)

    def seconds(self, n_flops, n_bytes) -> tuple[float, float]:
        """``(compute seconds, memory seconds)`` of that work at the peak rates."""
        return n_flops / (self.peak_gflops * 1e9), n_bytes / (self.bandwidth_gbs * 1e9)


@dataclass(frozen=True)
class Prediction:
    """Time lower bounds of a tiled neighborhood kernel and of dense attention on one :class:`Hardware`.

    ``time_s = max(performed FLOPs / peak, bytes / bandwidth)`` (``bound`` says which term wins);
    ``dense_time_s`` is the same bound for dense attention over all tokens (dense FLOPs, every tensor moved
    once); ``speedup_bound = dense_time_s / time_s``.
    """

    tiling: Tiling
    counts: TileCounts
    flops: Flops
    bytes: int | float
    compute_s: float
    memory_s: float
    dense_flops: int | float
    dense_bytes: int | float
    dense_time_s: float
    hardware: Hardware

    @property
    def time_s(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"

    @property
    def speedup_bound(self) -> float:
        return self.dense_time_s / self.time_s


def predict(problem: Problem, tiling: Tiling, hardware: Hardware, counts: TileCounts | None = None) -> Prediction:
    """Time bounds of ``problem`` under ``tiling`` and of dense attention, on ``hardware``.

    Assumptions: the kernel reaches the matmul peak on every computed pair (softmax, masking and tile
    overhead are free) and moves the bytes of :func:`bytes_moved` at the copy bandwidth, overlapping both;
    so the time is a lower bound and the speedup an upper bound for that tiling.

    Example:
        >>> p = Problem((64, 64), heads=4, head_dim=64, kernel_size=7)
        >>> pred = predict(p, Tiling((8, 8), (8, 8)), Hardware(200.0, 20.0))
        >>> round(pred.speedup_bound, 1), pred.bound
        (8.5, 'compute')
    """
    counts = count_tiles(problem, tiling) if counts is None else counts
    fl = flops(problem, counts)
    moved = bytes_moved(problem, tiling, counts)
    compute_s, memory_s = hardware.seconds(fl.performed, moved)
    d_flops = _scale(problem, dense_pairs(problem))
    d_bytes = dense_bytes(problem)
    return Prediction(tiling, counts, fl, moved, compute_s, memory_s, d_flops, d_bytes,
                      max(hardware.seconds(d_flops, d_bytes)), hardware)


# ------------------------------------------------------------------------------------------------ searches


def _powers(limit: int) -> list[int]:
    out, p = [], 1
    while p <= limit:
        out.append(p)
        p *= 2
    if out[-1] < limit:
        out.append(out[-1] * 2)  # one box covering the whole axis
    return out


def default_candidates(problem: Problem, min_tokens: int = 32, max_tokens: int = 256) -> list[Tiling]:
    """Box tilings with powers of two per axis (query box = key box, ``min_tokens``..``max_tokens`` tokens,
    no axis longer than needed) and flat tilings of 32, 64, 128 and 256 tokens."""
    out = []
    per_axis = [_powers(length) for length in problem.grid]
    for box in itertools.product(*per_axis):
        tokens = 1
        for b in box:
            tokens *= b
        if min_tokens <= tokens <= max_tokens:
            out.append(Tiling(box, box))
    out += [Tiling(t, t, layout="flat") for t in (32, 64, 128, 256)]
    return out


def search_tiles(problem: Problem, candidates=None, hardware: Hardware | None = None) -> list[tuple[Tiling, Prediction]]:
    """Every candidate tiling with its :class:`Prediction`, best (lowest time bound, then fewest performed
    FLOPs, then fewest bytes) first. ``candidates=None`` searches :func:`default_candidates`.

    Example:
        >>> p = Problem((64,), 1, 16, kernel_size=32, stride=32)
        >>> best, pred = search_tiles(p, hardware=Hardware(200.0, 20.0))[0]
        >>> best, pred.counts.partial
        (Tiling(query_tile=(32,), key_tile=(32,), layout='box', groups=False, key_anchor='grid'), 0)
    """
    checks.hardware_figures(getattr(hardware, "peak_gflops", None), getattr(hardware, "bandwidth_gbs", None))
    candidates = default_candidates(problem) if candidates is None else list(candidates)
    scored = [(t, predict(problem, t, hardware)) for t in candidates]
    scored.sort(key=lambda tp: (tp[1].time_s, tp[1].flops.performed, tp[1].bytes))
    return scored


def _perfect(problem: Problem, tiling: Tiling, stride) -> bool:
    return count_tiles(problem.replace(stride=stride), tiling).partial == 0


def smallest_perfect_stride(problem: Problem, tiling: Tiling):
    """The smallest stride (per axis, 1..K) at which every visited tile is full, or None if none is.

    Box tilings are separable (a tile pair is full iff it is full on every axis), so each axis is searched
    on its own and the result is the per-axis minimum: every perfect stride is >= it on every axis. Flat
    tilings are not: the stride tuples are searched in order of their sum, then lexicographically, and the
    first perfect one is returned. ``problem.stride`` itself is ignored.

    Example:
        >>> smallest_perfect_stride(Problem((64, 64), 1, 16, kernel_size=8), Tiling(8, 8))
        (8, 8)
    """
    ks = problem.kernel_size
    if tiling.layout == "box":
        qt, kt = tiling.sizes(problem.ndim)
        found = []
        for a in range(problem.ndim):
            length, k, _, d, causal = problem.spec.axis(a)
            for s in range(1, k + 1):
                if tiling.key_anchor == "query":
                    st = _axis_query_anchored(length, k, s, d, causal, qt[a], kt[a])
                else:
                    st = _axis_grid(length, k, s, d, causal, qt[a], kt[a], tiling.groups)
                if st.visited == st.full:
                    found.append(s)
                    break
            else:
                return None
        return tuple(found)
    order = sorted(itertools.product(*[range(1, k + 1) for k in ks]), key=lambda t: (sum(t), t))
    for stride in order:
        if _perfect(problem, tiling, stride):
            return stride
    return None
