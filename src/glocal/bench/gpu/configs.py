"""What the GPU suite runs: the timed configs, their tile variants and the random correctness problems.

Shapes (every timed config): q, k, v: [1, *spatial, 8 heads, 128] bfloat16.

Example:
    >>> import random
    >>> from glocal.bench.gpu import configs
    >>> configs.CONFIGS[0]["name"]
    '2-D 128x128 K=13 fwd'
    >>> sorted(configs._random_problem(random.Random(0)))[:3]
    ['batch', 'd_qk', 'd_v']
"""

from __future__ import annotations

import random

import torch

CONFIGS = [
    dict(name="2-D 128x128 K=13 fwd", spatial=(128, 128), kernel_size=13, causal=False, backward=False, target=1.8),
    dict(name="3-D 16x64x64 K=(5,13,13) fwd", spatial=(16, 64, 64), kernel_size=(5, 13, 13), causal=False,
         backward=False, target=1.8),
    dict(name="2-D 128x128 K=13 fwd+bwd", spatial=(128, 128), kernel_size=13, causal=False, backward=True,
         target=1.5),
    dict(name="1-D 32768 K=2048 fwd", spatial=(32768,), kernel_size=2048, causal=False, backward=False, target=1.3),
    dict(name="1-D 32768 K=2048 causal fwd", spatial=(32768,), kernel_size=2048, causal=True, backward=False,
         target=1.3),
]

def problem_fields(cfg: dict, heads: int = 8, head_dim: int = 128) -> dict:
    """What a timed row records of its problem, for ``glocal sim --report`` (rows with ``backend="triton"``).

    Example:
        >>> problem_fields(CONFIGS[0])["kernel_size"], problem_fields(CONFIGS[0])["is_causal"]
        ([13, 13], [False, False])
    """
    ndim = len(cfg["spatial"])
    per_axis = lambda v: list(v) if isinstance(v, (tuple, list)) else [v] * ndim  # noqa: E731
    return dict(spatial=list(cfg["spatial"]), kernel_size=per_axis(cfg["kernel_size"]),
                is_causal=per_axis(cfg["causal"]), heads=heads, head_dim=head_dim, dtype="bfloat16",
                backward=cfg["backward"], backend="triton")


# Tile variants timed with --variants (glocal only; same Flex baseline). Keys are
# glocal.config.triton_tiles() options (the same as ops.tiles()).
_SMALL_1D = dict(fwd_q=(1, 1, 64), fwd_k=(1, 1, 64), fwd_warps=4, fwd_stages=3)
VARIANTS = {
    # 1-D: the split loop (no per-tile branch, core loads without masks), TMA loads and Triton's warp
    # specialisation. With 128-query boxes and 8 warps one program fills an SM (224 KB of shared memory
    # or ~255 registers); 64 x 64 boxes with 4 warps, or TMA with 32-key boxes and 8 warps (128
    # registers, 80 KB), fit two programs per SM, whose softmax and matrix products can overlap.
    # `--compile-only` prints each one's registers, spills, shared memory and programs per SM.
    "1": [dict(fwd_split_1d=True), dict(fwd_split_1d=True, **_SMALL_1D), dict(**_SMALL_1D),
          dict(fwd_tma=True, fwd_k=(1, 1, 64), fwd_stages=2), dict(fwd_tma=True, **_SMALL_1D),
          dict(fwd_tma=True, fwd_k=(1, 1, 32), fwd_stages=3), dict(fwd_tma=True),
          # The next tile's scores computed during this tile's softmax (kernels._fwd_1d_tma_kernel, OVERLAP).
          dict(fwd_tma=True, fwd_overlap=True, fwd_k=(1, 1, 64), fwd_stages=2),
          dict(fwd_tma=True, fwd_overlap=True, **dict(_SMALL_1D, fwd_stages=2)),
          # Last: warp specialisation is the one option a run has not yet shown to finish (with 4 warps
          # Triton 3.6 does not compile it).
          dict(fwd_tma=True, fwd_ws=True, fwd_k=(1, 1, 64), fwd_stages=2)],
    "2": [dict(fwd_q=(1, 8, 16), fwd_k=(1, 4, 16), fwd_warps=8), dict(fwd_k=(1, 4, 16)),
          dict(fwd_k=(1, 8, 16))],
    "3": [dict(fwd_q=(2, 4, 8), fwd_k=(2, 4, 8), fwd_warps=4), dict(fwd_q=(2, 4, 8), fwd_k=(4, 4, 4), fwd_warps=4),
          dict(fwd_q=(2, 8, 8), fwd_k=(2, 4, 8))],
    # The default dK/dV kernel (4 warps) spills registers; with 8 warps it does not (--compile-only).
    "bwd": [dict(dkdv_warps=8), dict(bwd_k=(1, 8, 8), bwd_q=(1, 8, 8), dkdv_warps=8),
            dict(dq_q=(1, 8, 8), dq_k=(1, 8, 8), dq_warps=4), dict(fwd_q=(1, 8, 16), fwd_k=(1, 4, 16), fwd_warps=8)],
}


# Head dims of the random checks (32-256; 96 runs padded to 128). Each power-of-two block is
# one more compile per kernel: 50 checks take about two minutes, mostly compiling.
# ``--head-dims`` replaces it for a run (glocal.bench.gpu.main sets this module's global).
HEAD_DIMS = (128, 128, 128, 64, 96, 32, 256)


def _random_problem(rng: random.Random) -> dict:
    """One random problem of the correctness sweep: spatial shape, window, heads, head dims, dtype, extras."""
    ndim = rng.choice((1, 2, 2, 3))
    max_len = {1: 300, 2: 24, 3: 10}[ndim]
    spatial, ks, ss, ds, cs = [], [], [], [], []
    for _ in range(ndim):
        length = rng.randint(4, max_len)
        d = rng.choice((1, 1, 1, 2, 3)) if length >= 8 else 1
        k = rng.randint(1, max(1, min(length // d, 9 if ndim > 1 else 40)))
        s = rng.choice((1, 1, rng.randint(1, k)))
        spatial.append(length)
        ks.append(k)
        ss.append(s)
        ds.append(d)
        cs.append(rng.random() < 0.3)
    hkv = rng.choice((1, 2, 4))
    hq = hkv * rng.choice((1, 2))
    d_qk = rng.choice(HEAD_DIMS)
    d_v = d_qk if rng.random() < 0.8 else rng.choice(HEAD_DIMS)
    dtype = rng.choice((torch.bfloat16, torch.bfloat16, torch.float16))
    extra = rng.choice((0, 0, 0, rng.randint(1, 7)))
    return dict(spatial=tuple(spatial), kernel_size=tuple(ks), stride=tuple(ss), dilation=tuple(ds),
                is_causal=tuple(cs), batch=rng.choice((1, 2)), hq=hq, hkv=hkv, d_qk=d_qk, d_v=d_v, dtype=dtype,
                extra=extra)
