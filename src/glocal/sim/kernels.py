"""The tilings glocal's own kernels use, as :class:`glocal.sim.Tiling` values.

Legend: ``n`` = problem rank; boxes are per axis, the last axis fastest; tiles are cut inside dilation
groups (``groups=True``) and key tiles start at each query tile's first key (``key_anchor="query"``).

Example:
    >>> from glocal.sim import Problem
    >>> cpu_tiling(Problem((64, 64), heads=4, head_dim=64, kernel_size=7))
    Tiling(query_tile=(1, 8), key_tile=(1, 16), layout='box', groups=True, key_anchor='query')
"""

from __future__ import annotations

from .. import config
from ..checks import sim as checks
from .model import Problem, Tiling

# glocal.backends.triton.ops._DEFAULTS / _WIDE, forward boxes (Z, Y, X). That module imports Triton, so the
# figures are repeated here; tests/test_sim.py checks them against it wherever Triton is installed.
_TRITON_FWD = {1: ((1, 1, 128), (1, 1, 128)), 2: ((1, 8, 8), (1, 8, 8)), 3: ((4, 4, 8), (4, 4, 4))}
_TRITON_FWD_WIDE = {1: ((1, 1, 64), (1, 1, 64)), 2: ((1, 8, 8), (1, 4, 16)), 3: ((4, 4, 4), (4, 4, 4))}


def cpu_tiling(problem: Problem) -> Tiling:
    """The tiling of glocal's compiled CPU kernels (``glocal.backends.cpu.neighborhood``) for ``problem``.

    Blocked kernel (float32 compute, i.e. float32/bfloat16/float16 inputs, head dims multiples of 16): a
    query tile is a run of ``qb`` queries along the last axis inside one dilation group and one coordinate
    of every leading axis (``qb`` = 8 when the last axis's kernel is at most 9, else 16); its keys are, on
    each leading axis, exactly that coordinate's window (key tile 1), and on the last axis the span
    ``[lo(first), hi(last))`` computed 16 keys per vector: key tiles of 16 anchored at the span's start.
    This is exact, with two notes: ``padded_pairs`` is the score work (``qb`` lanes, a partial block repeats
    its last query, times whole 16-key vectors), while ``computed_pairs`` clips both to real tokens; and the
    kernel's softmax and P·V read only each query's own range. Other problems (float64, other head dims)
    run the per-query kernel: one query per tile and exactly its window (tiles of 1 token).

    Example:
        >>> cpu_tiling(Problem((64,), 1, 64, kernel_size=15)).query_tile
        (16,)
    """
    n = problem.ndim
    blocked = problem.dtype != "float64" and problem.head_dim % 16 == 0 and problem.value_dim % 16 == 0
    if not blocked:
        return Tiling((1,) * n, (1,) * n, groups=True)
    qb = 8 if problem.kernel_size[-1] <= 9 else 16
    return Tiling((1,) * (n - 1) + (qb,), (1,) * (n - 1) + (16,), groups=True, key_anchor="query")


def _halve(box):
    box = list(box)
    axis = max(range(3), key=lambda a: box[a])
    box[axis] //= 2
    return tuple(box)


def _block(d: int) -> int:
    return max(16, 1 << (d - 1).bit_length())


def triton_tiling(problem: Problem) -> Tiling:
    """The forward tiling of glocal's Triton kernel (``glocal.backends.triton``) for ``problem``.

    Query boxes tile each dilation group from its first member; per query box the kernel visits the key
    boxes covering ``[lo(first), hi(last))`` per axis, from its start (``key_anchor="query"``), loads masked
    past the end; boxes from the rank's defaults, the wide ones above a padded head dim of 128, halved for
    float32 (TF32), then any ``glocal.config.triton_tiles(fwd_q=..., fwd_k=...)`` override. Exact for the
    forward kernel, with these differences: the kernel applies no mask to a key box only when the whole
    nominal box lies in the core of the query box, so a clipped last box the model counts as full is masked
    there (same work); the backward passes use their own boxes (``dq_q``/``dq_k`` and a dK/dV pass over key
    boxes), which the model replaces by the forward tiling (times 3.5 in FLOPs); the opt-in 1-D TMA path
    (``fwd_tma``) is not modelled.

    Example:
        >>> triton_tiling(Problem((64, 64), heads=4, head_dim=64, kernel_size=7, dtype="bfloat16")).query_tile
        (8, 8)
    """
    checks.triton_problem(problem.dtype, problem.head_dim, problem.value_dim)
    d_max = max(_block(problem.head_dim), _block(problem.value_dim))
    q, k = (_TRITON_FWD_WIDE if d_max > 128 else _TRITON_FWD)[problem.ndim]
    if problem.element_bytes > 2:
        q, k = _halve(q), _halve(k)
    overrides = config.triton_tile_overrides()
    q, k = tuple(overrides.get("fwd_q", q)), tuple(overrides.get("fwd_k", k))
    n = problem.ndim
    return Tiling(q[3 - n:], k[3 - n:], groups=True, key_anchor="query")
