"""Host side of the Triton kernels: tile choice, launch, autograd, extra keys/values.

Shapes:
    q: [B, *spatial, H_q, D_qk]   k: [B, *spatial, H_kv, D_qk]   v: [B, *spatial, H_kv, D_v]
    out: [B, *spatial, H_q, D_v]   lse: [B, *spatial, H_q] float32

Example:
    >>> import torch  # doctest: +SKIP
    >>> from glocal.spec import make_neighborhood_spec  # doctest: +SKIP
    >>> q = k = v = torch.randn(1, 64, 64, 4, 64, device="cuda", dtype=torch.float16)  # doctest: +SKIP
    >>> out, lse = neighborhood(make_neighborhood_spec((64, 64), 7), q, k, v, 0.125)  # doctest: +SKIP

This module imports Triton at the top; the backend's family module imports it only
inside ``run``, so ``import glocal`` never imports Triton. Tile shapes are scoped with
``glocal.config.triton_tiles(...)`` (``tiles`` here is the same context manager).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from ...config import nan_poisoning_enabled, triton_tile_overrides, triton_tiles
from ...numerics import merge_extra_tokens
from ...spec import axis_window
from . import kernels

# Tile shapes (Z, Y, X) per rank of the problem. Each entry: query box and key
# box of the forward pass (fwd_q, fwd_k), of the dQ pass (dq_q, dq_k), key box
# and query box of the dK/dV pass (bwd_k, bwd_q), and the launch options. A box
# is in dilation-group coordinates; box sizes must be powers of two and >= 16
# on a GPU. The values are the fastest measured on an H100 (docs/gpu.md);
# fwd_split_1d and fwd_tma switch on 1-D forward paths (fwd_tma with fwd_ws
# or fwd_overlap) that are interpreter-tested but not yet timed on a GPU.
_DEFAULTS = {
    1: dict(fwd_q=(1, 1, 128), fwd_k=(1, 1, 128), dq_q=(1, 1, 128), dq_k=(1, 1, 64),
            bwd_k=(1, 1, 64), bwd_q=(1, 1, 64),
            fwd_warps=8, fwd_stages=3, dq_warps=8, dq_stages=2, dkdv_warps=4, dkdv_stages=2),
    2: dict(fwd_q=(1, 8, 8), fwd_k=(1, 8, 8), dq_q=(1, 8, 16), dq_k=(1, 4, 16),
            bwd_k=(1, 8, 8), bwd_q=(1, 4, 8),
            fwd_warps=4, fwd_stages=3, dq_warps=8, dq_stages=2, dkdv_warps=4, dkdv_stages=2),
    3: dict(fwd_q=(4, 4, 8), fwd_k=(4, 4, 4), dq_q=(4, 4, 8), dq_k=(4, 4, 4),
            bwd_k=(2, 4, 8), bwd_q=(2, 4, 8),
            fwd_warps=8, fwd_stages=3, dq_warps=8, dq_stages=2, dkdv_warps=4, dkdv_stages=2),
}

# Head dims above 128 (rows of 256): smaller boxes and shallower pipelines so the
# accumulators fit in registers and the stages in shared memory.
_WIDE = {
    1: dict(fwd_q=(1, 1, 64), fwd_k=(1, 1, 64), dq_q=(1, 1, 64), dq_k=(1, 1, 64), bwd_k=(1, 1, 32),
            bwd_q=(1, 1, 32), fwd_warps=8, fwd_stages=2, dq_stages=1, dkdv_stages=1),
    2: dict(fwd_q=(1, 8, 8), fwd_k=(1, 4, 16), dq_q=(1, 8, 8), dq_k=(1, 4, 16), bwd_k=(1, 4, 8),
            bwd_q=(1, 4, 8), fwd_warps=8, fwd_stages=2, dq_stages=1, dkdv_stages=1),
    3: dict(fwd_q=(4, 4, 4), fwd_k=(4, 4, 4), dq_q=(4, 4, 4), dq_k=(4, 4, 4), bwd_k=(2, 4, 4),
            bwd_q=(2, 4, 4), fwd_warps=8, fwd_stages=2, dq_stages=1, dkdv_stages=1),
}

# Scope tile shapes / launch options (keys of ``_DEFAULTS``), e.g. ``tiles(fwd_q=(1, 4, 4))``: used by
# tests (small tiles exercise multi-tile paths on small grids) and by the GPU benchmark to time
# variants in one run.
tiles = triton_tiles


def _halve(box):
    """The box with half the tokens (largest axis first)."""
    box = list(box)
    axis = max(range(3), key=lambda a: box[a])
    box[axis] //= 2
    return tuple(box)


def config(ndim: int, d_max: int, elem_bytes: int = 2) -> dict:
    """Tile shapes and launch options for a rank, the larger padded head dim and the element size."""
    cfg = dict(_DEFAULTS[ndim])
    if d_max > 128:
        cfg.update(_WIDE[ndim])
    if elem_bytes > 2:
        # float32 (TF32) tiles take twice the bytes: half the tokens per box, two stages.
        for name in ("fwd_q", "fwd_k", "dq_q", "dq_k", "bwd_q", "bwd_k"):
            cfg[name] = _halve(cfg[name])
        cfg.update(fwd_stages=min(cfg["fwd_stages"], 2), dq_stages=min(cfg["dq_stages"], 2),
                   dkdv_stages=min(cfg["dkdv_stages"], 2))
    cfg.update(triton_tile_overrides())
    return cfg


def _pad3(values, fill):
    return (fill,) * (3 - len(values)) + tuple(values)


def _block(d: int) -> int:
    return max(16, 1 << (d - 1).bit_length())


def _problem(spec):
    """Per-axis runtime arguments, padded to 3 axes: L, K, s, d, causal (as 0/1)."""
    L = _pad3(spec.spatial, 1)
    K = _pad3(spec.kernel_size, 1)
    S = _pad3(spec.stride, 1)
    D = _pad3(spec.dilation, 1)
    C = _pad3(tuple(int(c) for c in spec.is_causal), 0)
    return L, K, S, D, C


def _strides(x: torch.Tensor, ndim: int):
    """(batch, z, y, x, head) element strides of a [B, *spatial, H, D] tensor; missing axes get 0."""
    st = x.stride()
    return (st[0],) + _pad3(st[1:1 + ndim], 0) + (st[-2],)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _tiles_per_axis(L, D, box):
    """Tiles per axis covering the longest dilation group, ceil(L / d) tokens."""
    return tuple(_cdiv(_cdiv(length, dil), b) for length, dil, b in zip(L, D, box))


@functools.lru_cache(maxsize=256)
def _ranges_cpu(length: int, ksize: int, stride: int, dil: int, causal: bool, box: int):
    """[dil, n_tiles, 2] int32: per dilation group and key tile of ``box`` keys, the in-group query range
    [first, last + 1) whose windows touch the tile (empty ranges have last < first)."""
    n_tiles = _cdiv(_cdiv(length, dil), box)
    out = torch.zeros(dil, n_tiles, 2, dtype=torch.int32)
    for g in range(dil):
        lg = (length - g + dil - 1) // dil
        x = torch.arange(lg, dtype=torch.int64) * dil + g
        _, lo, hi = axis_window(x, length, ksize, stride, dil, causal)
        k0 = torch.arange(n_tiles, dtype=torch.int64) * box
        # lo and hi never decrease along x, so both ends are binary searches.
        first = torch.searchsorted(hi, k0, right=True)
        last = torch.searchsorted(lo, k0 + box, right=False)
        out[g, :, 0] = first.to(torch.int32)
        out[g, :, 1] = last.to(torch.int32)
    return out


_range_cache: dict = {}


def _ranges(spec, box, device):
    key = (spec, box, str(device))
    hit = _range_cache.get(key)
    if hit is None:
        L, K, S, D, C = _problem(spec)
        hit = tuple(_ranges_cpu(L[a], K[a], S[a], D[a], bool(C[a]), box[a]).to(device) for a in range(3))
        if len(_range_cache) > 64:
            _range_cache.clear()
        _range_cache[key] = hit
    return hit


def _interpreter_compat():
    """Let Triton 3.6's interpreter take loop bounds under NumPy >= 2.4.

    The interpreter holds every scalar as a 1-element array and converts loop
    bounds with ``int(array)``, which NumPy 2.4 rejects for arrays of rank 1.
    This re-registers ``__index__`` to read the single element; it changes
    nothing off the interpreter.
    """
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_glocal_compat", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._glocal_compat = True
    interpreter._patch_lang_tensor = patched


def _launch_checks():
    if os.environ.get("TRITON_INTERPRET") == "1":
        _interpreter_compat()


def _backward_inputs(q, k, v, out, lse, dout, dlse):
    """What both families' backward kernels read and write: contiguous q, k, v, dout, lse, the row term
    delta, and the gradient buffers dq, dk, dv."""
    q, k, v, dout = (x.contiguous() for x in (q, k, v, dout))
    # delta_i = sum_d dO·O - dlse_i: the softmax-backward row term; an lse gradient
    # enters as d(lse)/d(s_ij) = p_ij, i.e. as a shift of delta.
    delta = (dout.float() * out.float()).sum(-1)
    if dlse is not None:
        delta = delta - dlse.float()
    grads = (_alloc(x.shape, x.dtype, x.device) for x in (q, k, v))
    return (q, k, v, dout, lse.contiguous(), delta.contiguous(), *grads)


def _alloc(shape, dtype, device):
    # NaN poisoning (glocal.config.nan_poisoning; GLOCAL_POISON=1 sets it by default) fills kernel outputs with NaN
    # so an element no program writes fails the tests.
    if nan_poisoning_enabled():
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def forward(spec, q, k, v, scale: float):
    """Launch the forward kernel: ``(out [B, *spatial, H_q, D_v], lse [B, *spatial, H_q] float32)``."""
    _launch_checks()
    ndim = spec.ndim
    batch, hq, hkv = q.shape[0], q.shape[-2], k.shape[-2]
    d_qk, d_v = q.shape[-1], v.shape[-1]
    cfg = config(ndim, max(_block(d_qk), _block(d_v)), q.element_size())
    L, K, S, D, C = _problem(spec)
    qbox, kbox = cfg["fwd_q"], cfg["fwd_k"]
    nt = _tiles_per_axis(L, D, qbox)
    out = _alloc(q.shape[:-1] + (d_v,), q.dtype, q.device)
    lse = _alloc(q.shape[:-1], torch.float32, q.device)
    if cfg.get("fwd_tma") and _tma_1d_ok(spec, q, k, v):
        _forward_1d_tma(spec, q, k, v, out, lse, scale, cfg)
        return out, lse
    grid = (nt[0] * nt[1] * nt[2] * D[0] * D[1] * D[2], batch * hq)
    _launch(kernels._fwd_kernel, grid, cfg["fwd_warps"], cfg["fwd_stages"],
            q, k, v, out, lse,
            *_strides(q, ndim), *_strides(k, ndim), *_strides(v, ndim), *_strides(out, ndim),
            *_lse_strides(lse, ndim),
            hq, hq // hkv, *L, *K, *S, *D, *C, *nt,
            scale * kernels.LOG2E, d_qk, d_v,
            *qbox, *kbox, _block(d_qk), _block(d_v), ndim, _block(d_qk) == d_qk and _block(d_v) == d_v,
            ndim == 1 and bool(cfg.get("fwd_split_1d")),
    )
    return out, lse


# The compiled kernel of the latest launch, per kernel name: the GPU benchmark reads its
# registers, spills, shared memory and instructions from here (None under the interpreter).
last_compiled: dict = {}
_compile_only = False


@contextlib.contextmanager
def compile_only():
    """Compile the kernels that calls inside the block would launch, and launch nothing (their outputs
    stay unwritten). With a GPU target set up by the caller this runs on a machine without a GPU
    (``glocal.bench.gpu.offline_report``)."""
    global _compile_only
    saved, _compile_only = _compile_only, True
    try:
        yield
    finally:
        _compile_only = saved


def _launch(kernel, grid, num_warps: int, num_stages: int, *args):
    """Launch ``kernel``; if its pipeline does not fit the GPU's shared memory (smaller than an
    H100's, the card the stage counts were chosen on), retry with fewer stages."""
    from triton.runtime.errors import OutOfResources

    if _compile_only:
        last_compiled[kernel.__name__] = kernel.warmup(*args, grid=grid, num_warps=num_warps, num_stages=num_stages)
        return last_compiled[kernel.__name__]
    while True:
        try:
            compiled = kernel[grid](*args, num_warps=num_warps, num_stages=num_stages)
            last_compiled[kernel.__name__] = compiled
            return compiled
        except OutOfResources:
            if num_stages <= 1:
                raise
            num_stages -= 1


def _tma_1d_ok(spec, q, k, v) -> bool:
    """The TMA forward takes 1-D problems without dilation, one power-of-two head dim, on a Hopper+ GPU."""
    if spec.ndim != 1 or spec.dilation[0] != 1:
        return False
    if q.device.type == "cuda":
        if torch.cuda.get_device_capability(q.device)[0] < 9:
            return False
    elif os.environ.get("TRITON_INTERPRET") != "1" and not _compile_only:
        return False
    width = q.shape[-1]
    if v.shape[-1] != width or _block(width) != width:
        return False
    return all(x.is_contiguous() for x in (k, v)) and k.data_ptr() % 16 == 0 and v.data_ptr() % 16 == 0


def _forward_1d_tma(spec, q, k, v, out, lse, scale, cfg):
    from triton.tools.tensor_descriptor import TensorDescriptor

    batch, length, hq, width = q.shape
    hkv = k.shape[-2]
    bm, bn = cfg["fwd_q"][2], cfg["fwd_k"][2]
    k_desc = TensorDescriptor.from_tensor(k.view(batch * length, hkv * width), [bn, width])
    v_desc = TensorDescriptor.from_tensor(v.view(batch * length, hkv * width), [bn, width])
    grid = (_cdiv(length, bm), batch * hq)
    _launch(kernels._fwd_1d_tma_kernel, grid, cfg["fwd_warps"], cfg["fwd_stages"],
            q, k_desc, v_desc, out, lse,
            q.stride(0), q.stride(1), q.stride(2), out.stride(0), out.stride(1), out.stride(2),
            lse.stride(0), lse.stride(1), lse.stride(2),
            hq, hq // hkv, length, spec.kernel_size[0], spec.stride[0], int(spec.is_causal[0]),
            scale * kernels.LOG2E, bm, bn, width, bool(cfg.get("fwd_ws")), bool(cfg.get("fwd_overlap")),
    )


def _lse_strides(lse: torch.Tensor, ndim: int):
    st = lse.stride()
    return (st[0],) + _pad3(st[1:1 + ndim], 0) + (st[-1],)


def backward(spec, q, k, v, out, lse, dout, dlse, scale: float):
    """Launch the dQ and dK/dV kernels; returns ``(dq, dk, dv)``. ``dlse`` may be None."""
    ndim = spec.ndim
    batch, hq, hkv = q.shape[0], q.shape[-2], k.shape[-2]
    d_qk, d_v = q.shape[-1], v.shape[-1]
    cfg = config(ndim, max(_block(d_qk), _block(d_v)), q.element_size())
    L, K, S, D, C = _problem(spec)
    q, k, v, dout, lse, delta, dq, dk, dv = _backward_inputs(q, k, v, out, lse, dout, dlse)
    common = (*_strides(q, ndim), *_strides(k, ndim), *_strides(v, ndim), *_strides(dout, ndim),
              *_lse_strides(lse, ndim))

    qbox, kbox = cfg["dq_q"], cfg["dq_k"]
    nt = _tiles_per_axis(L, D, qbox)
    grid = (nt[0] * nt[1] * nt[2] * D[0] * D[1] * D[2], batch * hq)
    _launch(kernels._dq_kernel, grid, cfg["dq_warps"], cfg["dq_stages"],
            q, k, v, dout, lse, delta, dq, *common,
            hq, hq // hkv, *L, *K, *S, *D, *C, *nt,
            scale * kernels.LOG2E, scale, d_qk, d_v,
            *qbox, *kbox, _block(d_qk), _block(d_v), ndim,
    )

    kbox, qbox = cfg["bwd_k"], cfg["bwd_q"]
    nt = _tiles_per_axis(L, D, kbox)
    rz, ry, rx = _ranges(spec, kbox, q.device)
    grid = (nt[0] * nt[1] * nt[2] * D[0] * D[1] * D[2], batch * hkv)
    _launch(kernels._dkdv_kernel, grid, cfg["dkdv_warps"], cfg["dkdv_stages"],
            q, k, v, dout, lse, delta, dk, dv, rz, ry, rx, *common,
            hq, hq // hkv, hkv, *L, *K, *S, *D, *C, *nt, rz.shape[1], ry.shape[1], rx.shape[1],
            scale * kernels.LOG2E, scale, d_qk, d_v,
            *kbox, *qbox, _block(d_qk), _block(d_v), ndim,
    )
    return dq, dk, dv


class _NeighborhoodFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, spec, scale):
        out, lse = forward(spec, q, k, v, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.spec, ctx.scale = spec, scale
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv = backward(ctx.spec, q, k, v, out, lse, dout, dlse, ctx.scale)
        return dq, dk, dv, None, None


def neighborhood(spec, q, k, v, scale: float, additional_keys=None, additional_values=None):
    """Neighborhood attention through the fused kernels, with extra keys/values merged by lse."""
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out, lse = _NeighborhoodFn.apply(q, k, v, spec, float(scale))
    if additional_keys is None:
        return out, lse
    return merge_extra_tokens(q, out, lse, additional_keys, additional_values, float(scale))
