"""glocal.sim: an analytical performance model of block-sparse neighborhood attention.

Legend:
    Problem      neighborhood attention ``q, k: [B, *grid, H, D]``, ``v: [B, *grid, H, D_v]`` (DESIGN.md §1)
    Tiling       query tiles and key tiles of a tile kernel (N-D boxes or runs of the row-major order)
    TileCounts   exact tile-pair classes (visited / skipped, full / partial) and (query, key) pair counts
    Hardware     measured peak matmul GFLOP/s and copy GB/s (``calibrate``, ``glocal sim --calibrate``)
    Prediction   time lower bounds of the tiled kernel and of dense attention, the speedup bound

Counting is exact and never builds an ``N x N`` mask (see :func:`count_tiles`); the time model is a
roofline (``max(FLOPs / peak, bytes / bandwidth)``); docs/sim.md states every assumption.

Example:
    >>> from glocal import sim
    >>> p = sim.Problem((64, 64), heads=4, head_dim=64, kernel_size=7)
    >>> c = sim.count_tiles(p, sim.Tiling(128, 128, layout="flat"))
    >>> c.visited, c.skipped, c.partial, c.full
    (156, 868, 156, 0)
    >>> sim.useful_flops(p) == 2 * (64 + 64) * 4 * sim.count_tiles(p, sim.cpu_tiling(p)).attended_pairs
    True
"""

from .hardware import calibrate, default_path, load_hardware, save_hardware  # noqa: F401
from .kernels import cpu_tiling, triton_tiling  # noqa: F401
from .model import (  # noqa: F401
    BACKWARD_FACTOR,
    Flops,
    Hardware,
    Prediction,
    Problem,
    TileCounts,
    Tiling,
    bytes_moved,
    count_tiles,
    default_candidates,
    dense_bytes,
    dense_pairs,
    flops,
    predict,
    search_tiles,
    smallest_perfect_stride,
    useful_flops,
)
from .parse import parse_config  # noqa: F401
from .report import Report, ranks, report, spearman  # noqa: F401
