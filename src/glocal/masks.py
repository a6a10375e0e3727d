"""Index predicates in FlexAttention's ``mask_mod`` style, and dense masks.

A mask_mod is ``fn(b, h, q_idx, kv_idx) -> bool tensor``: True where query
``q_idx`` attends key ``kv_idx``. Tokens of a grid are numbered in row-major
order (the last spatial axis fastest), as ``q.flatten(1, -3)`` numbers them.
The predicates use only integer arithmetic and comparisons, so they broadcast
over index tensors and work as-is inside ``torch.nn.attention.flex_attention``.
"""

from __future__ import annotations

import torch

from .spec import AttentionSpec, NeighborhoodSpec, axis_window


def grid_coords(flat_idx, spatial: tuple[int, ...]) -> list:
    """Row-major coordinates of flat token indices on a grid of shape ``spatial``."""
    coords = []
    inner = 1
    for length in reversed(spatial):
        coords.append((flat_idx // inner) % length)
        inner *= length
    return coords[::-1]


def neighborhood_mask_mod(spec: NeighborhoodSpec):
    """mask_mod of neighborhood attention (DESIGN.md §1) over row-major token indices.

    Example:
        >>> from glocal.spec import make_neighborhood_spec
        >>> spec = make_neighborhood_spec((4, 4), kernel_size=3)
        >>> mm = neighborhood_mask_mod(spec)
        >>> bool(mm(0, 0, torch.tensor(0), torch.tensor(5)))  # (0,0) sees (1,1)
        True
    """
    axes = [spec.axis(i) for i in range(spec.ndim)]

    def mask_mod(b, h, q_idx, kv_idx):
        qc = grid_coords(q_idx, spec.spatial)
        kc = grid_coords(kv_idx, spec.spatial)
        keep = None
        for x, y, (length, k, s, d, causal) in zip(qc, kc, axes):
            group, lo, hi = axis_window(x, length, k, s, d, causal)
            yg = y // d
            ok = (y % d == group) & (yg >= lo) & (yg < hi)
            keep = ok if keep is None else keep & ok
        return keep

    return mask_mod


def causal_mask_mod(q_len: int, kv_len: int):
    """Causal mask aligned to the bottom-right corner: ``kv_idx <= q_idx + (kv_len - q_len)``."""
    offset = kv_len - q_len

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + offset

    return mask_mod


def and_masks(*mask_mods):
    """A mask_mod true where every one of ``mask_mods`` is true."""

    def mask_mod(b, h, q_idx, kv_idx):
        keep = mask_mods[0](b, h, q_idx, kv_idx)
        for mm in mask_mods[1:]:
            keep = keep & mm(b, h, q_idx, kv_idx)
        return keep

    return mask_mod


def or_masks(*mask_mods):
    """A mask_mod true where any one of ``mask_mods`` is true."""

    def mask_mod(b, h, q_idx, kv_idx):
        keep = mask_mods[0](b, h, q_idx, kv_idx)
        for mm in mask_mods[1:]:
            keep = keep | mm(b, h, q_idx, kv_idx)
        return keep

    return mask_mod


def mask_mod_for(spec):
    """The mask_mod of a spec (neighborhood or dense attention); None means no mask."""
    if isinstance(spec, NeighborhoodSpec):
        return neighborhood_mask_mod(spec)
    if isinstance(spec, AttentionSpec):
        return causal_mask_mod(spec.q_len, spec.kv_len) if spec.is_causal else None
    raise TypeError(f"mask_mod_for takes a NeighborhoodSpec or AttentionSpec; got {type(spec).__name__}.")


def dense_mask(spec, shape: tuple[int, int] | None = None, device=None) -> torch.Tensor:
    """Boolean ``[N_q, N_kv]`` matrix, True where a query attends a key.

    ``spec`` is a NeighborhoodSpec, an AttentionSpec, or a mask_mod (then
    ``shape=(N_q, N_kv)`` is required). Memory is O(N_q·N_kv): for tests,
    pictures and the reference backend.

    Example:
        >>> from glocal.spec import make_neighborhood_spec
        >>> dense_mask(make_neighborhood_spec((5,), kernel_size=3)).sum(-1).tolist()
        [3, 3, 3, 3, 3]
    """
    if isinstance(spec, NeighborhoodSpec):
        shape = (spec.num_tokens, spec.num_tokens)
    elif isinstance(spec, AttentionSpec):
        shape = (spec.q_len, spec.kv_len)
    elif shape is None:
        raise ValueError("dense_mask of a mask_mod needs shape=(N_q, N_kv); pass the query and key counts.")
    mask_mod = spec if callable(spec) and not isinstance(spec, (NeighborhoodSpec, AttentionSpec)) else mask_mod_for(spec)
    if mask_mod is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    q_idx = torch.arange(shape[0], device=device)[:, None]
    kv_idx = torch.arange(shape[1], device=device)[None, :]
    zero = torch.zeros((), dtype=torch.long, device=device)
    return torch.broadcast_to(mask_mod(zero, zero, q_idx, kv_idx), shape).clone()
