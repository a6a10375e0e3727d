"""FlexAttention backend: the spec turned into a mask_mod and a cached BlockMask, run by ``flex_attention``.

Shapes:
    q: [B, *spatial, H_q, D_qk]   k: [B, *spatial, H_kv, D_qk]   v: [B, *spatial, H_kv, D_v]
    (or [B, T, H, D] sequences for full attention)
    additional_keys: [B, S, H_kv, D_qk]   additional_values: [B, S, H_kv, D_v]
    out: [B, *spatial, H_q, D_v]   lse: [B, *spatial, H_q] float32

Example:
    >>> import torch, glocal
    >>> q = k = v = torch.randn(1, 8, 8, 2, 16)
    >>> glocal.na2d(q, k, v, kernel_size=3, backend="flex").shape
    torch.Size([1, 8, 8, 2, 16])

Tokens are flattened row-major (last spatial axis fastest), so the BlockMask
is FlexAttention's 128x128 block grid over that order. Extra keys/values are
appended after the grid's tokens and attended by every query (an or-ed
mask_mod), so they share the one softmax. On CUDA ``flex_attention`` runs compiled
(``torch.compile``) unless ``glocal.config.flex_compile(False)`` is in scope (the default
comes from ``GLOCAL_FLEX_COMPILE``; ``0`` turns it off). On the CPU it runs inference
only and uncompiled (eager flex is a dense implementation, O(N^2) memory),
since compiled flex on the CPU cannot return lse.
"""

from __future__ import annotations

import collections

import torch

from .. import config
from ..masks import mask_mod_for, or_masks
from ..spec import AttentionSpec, NeighborhoodSpec

NAME = "flex"
FAMILIES = ("neighborhood", "dense")

_CACHE_SIZE = 32
_block_masks: collections.OrderedDict = collections.OrderedDict()
_compiled = {}


def _flex_module():
    try:
        from torch.nn.attention import flex_attention
    except ImportError:
        return None
    return flex_attention


def can_run(spec, tensors: dict) -> list[str]:
    """Reasons this backend cannot run the problem (empty list: it can)."""
    if not isinstance(spec, (NeighborhoodSpec, AttentionSpec)):
        return [f"flex implements neighborhood and full attention, not {type(spec).__name__}"]
    if _flex_module() is None:
        return [f"torch {torch.__version__} has no torch.nn.attention.flex_attention (needs torch >= 2.5)"]
    reasons = []
    q, v = tensors["q"], tensors["v"]
    named = [(n, tensors.get(n)) for n in ("q", "k", "v", "additional_keys", "additional_values")]
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(x is not None and x.requires_grad for _, x in named):
        reasons.append("flex runs on the CPU for inference only (an input requires grad); "
                       "use torch.no_grad() or the cpu/reference backend for training")
    if q.device.type not in ("cpu", "cuda"):
        reasons.append(f"flex runs on CPU and CUDA tensors, not {q.device.type!r}")
    if q.dtype == torch.float64:
        reasons.append("flex runs float32, float16 and bfloat16, not float64; use the reference backend")
    for name, x in (("q", q), ("v", v)):
        width = x.shape[-1]
        if width < 16 or width & (width - 1):
            reasons.append(f"flex needs power-of-two head dims >= 16; got {name}.shape[-1]={width}")
            break
    return reasons


def _mask_mod(spec, n_grid: int, n_extra: int):
    base = mask_mod_for(spec)
    if n_extra == 0:
        return base

    def extra(b, h, q_idx, kv_idx):
        return kv_idx >= n_grid

    if base is None:
        return None
    return or_masks(base, extra)


def block_mask(spec, n_q: int, n_kv: int, n_extra: int, device):
    """The BlockMask of ``spec`` (with ``n_extra`` always-attended keys after the grid), LRU-cached.

    The cache key is (spec, extra count, device); the spec holds the shape.
    """
    key = (spec, n_q, n_kv, n_extra, str(device))
    hit = _block_masks.get(key)
    if hit is not None:
        _block_masks.move_to_end(key)
        return hit
    fa = _flex_module()
    mm = _mask_mod(spec, n_kv, n_extra)
    if mm is None:
        def mm(b, h, q_idx, kv_idx):
            return q_idx >= 0
    # On CUDA the mask is evaluated by a compiled kernel block by block; eagerly it would
    # materialise [N_q, N_kv] index tensors (34 GB of int64 for a 16x64x64 grid).
    compiled = torch.device(device).type == "cuda"
    bm = fa.create_block_mask(mm, None, None, n_q, n_kv + n_extra, device=device, _compile=compiled)
    _block_masks[key] = bm
    if len(_block_masks) > _CACHE_SIZE:
        _block_masks.popitem(last=False)
    return bm


def _attention_fn(device):
    fa = _flex_module()
    # Compiled flex on the CPU cannot return lse (torch 2.11-2.13), so the CPU runs it eagerly.
    if not config.flex_compile_enabled() or device.type != "cuda":
        return fa.flex_attention
    if "fn" not in _compiled:
        _compiled["fn"] = torch.compile(fa.flex_attention, dynamic=False)
    return _compiled["fn"]


def run(spec, tensors: dict, scale: float):
    """``(out [B, *spatial, H_q, D_v], lse [B, *spatial, H_q] float32)``."""
    q, k, v = tensors["q"], tensors["k"], tensors["v"]
    additional_keys, additional_values = tensors.get("additional_keys"), tensors.get("additional_values")
    batch, hq, hkv = q.shape[0], q.shape[-2], k.shape[-2]
    qt = q.reshape(batch, -1, hq, q.shape[-1]).transpose(1, 2)
    kt = k.reshape(batch, -1, hkv, k.shape[-1]).transpose(1, 2)
    vt = v.reshape(batch, -1, hkv, v.shape[-1]).transpose(1, 2)
    n_q, n_kv = qt.shape[2], kt.shape[2]
    n_extra = 0
    if additional_keys is not None:
        n_extra = additional_keys.shape[1]
        kt = torch.cat([kt, additional_keys.transpose(1, 2)], dim=2)
        vt = torch.cat([vt, additional_values.transpose(1, 2)], dim=2)
    bm = block_mask(spec, n_q, n_kv, n_extra, q.device)
    out, lse = _attention_fn(q.device)(qt, kt, vt, block_mask=bm, scale=float(scale), enable_gqa=hq != hkv,
                               return_lse=True)
    out = out.transpose(1, 2).reshape(*q.shape[:-1], v.shape[-1])
    lse = lse.transpose(1, 2).reshape(q.shape[:-1]).float()
    return out, lse


def describe() -> str:
    if _flex_module() is None:
        return f"flex: unavailable (torch {torch.__version__} has no flex_attention)"
    mode = "compiled on CUDA" if config.flex_compile_enabled() else "eager"
    return f"flex: torch.nn.attention.flex_attention ({mode}; eager, inference only, on the CPU), cached BlockMask"
