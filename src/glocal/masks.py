"""Which keys a query attends: index predicates (``mask_mod`` style), dense masks, windows, pooling, pair counts.

A mask_mod is ``fn(b, h, q_idx, kv_idx) -> bool tensor``: True where query
``q_idx`` attends key ``kv_idx``. Tokens of a grid are numbered in row-major
order (the last spatial axis fastest), as ``q.flatten(1, -3)`` numbers them.
The predicates use only integer arithmetic and comparisons, so they broadcast
over index tensors and work as-is inside ``torch.nn.attention.flex_attention``.

Every rule here is written once and used by the references, the backends, analysis and
conversion: the window of DESIGN.md §1 (:func:`glocal.spec.axis_window`, also on float
coordinates through :func:`in_window`), block mean-pooling (:func:`pool_tokens`) and the count of
attended pairs (:func:`attended_pairs`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import checks
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
    """The mask_mod of a spec; None means no mask (every key attended).

    Neighborhood and dense attention have theirs here; any other spec that has a ``mask_mod()``
    method describes its own key sets with it (that is what makes a new family observable by
    ``glocal.analysis.capture``).
    """
    if isinstance(spec, NeighborhoodSpec):
        return neighborhood_mask_mod(spec)
    if isinstance(spec, AttentionSpec):
        return causal_mask_mod(spec.q_len, spec.kv_len) if spec.is_causal else None
    if callable(getattr(spec, "mask_mod", None)):
        return spec.mask_mod()
    raise TypeError(f"mask_mod_for takes a spec with a mask_mod() method, a NeighborhoodSpec or AttentionSpec; "
                    f"got {type(spec).__name__}.")


def has_mask(spec) -> bool:
    """Whether :func:`mask_mod_for` can describe ``spec``'s key sets (a softmax over a known key set)."""
    return isinstance(spec, (NeighborhoodSpec, AttentionSpec)) or callable(getattr(spec, "mask_mod", None))


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
    mask_mod = mask_mod_for(spec) if has_mask(spec) else spec
    if mask_mod is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    q_idx = torch.arange(shape[0], device=device)[:, None]
    kv_idx = torch.arange(shape[1], device=device)[None, :]
    zero = torch.zeros((), dtype=torch.long, device=device)
    return torch.broadcast_to(mask_mod(zero, zero, q_idx, kv_idx), shape).clone()


def in_window(q_coord: torch.Tensor, k_coord: torch.Tensor, extent: torch.Tensor, window: int, causal: bool):
    """Whether each key lies in each query's window (DESIGN.md §1 with stride 1, dilation 1), on float coordinates.

    Shapes: q_coord [B, Q, n], k_coord [B, K, n], extent [B, n] (axis lengths) -> [B, Q, K] bool.
    Per axis the window of ``window`` keys follows :func:`glocal.spec.axis_window`: centred and
    shifted inward at the borders, or (causal) the keys ending at the query; a window longer
    than the axis covers the whole axis. Off-grid tokens (NaN coordinates) are never inside.
    Used by analysis (locality) and conversion (which keys a converted head sees).
    """
    q = q_coord[:, :, None, :]
    k = k_coord[:, None, :, :]
    length = extent[:, None, None, :]
    _, lo, hi = axis_window(q, length, length.clamp(max=window), 1, 1, causal)
    inside = (k >= lo) & (k < hi) & ~torch.isnan(q) & ~torch.isnan(k)
    return inside.all(-1)


def attended_pairs(spec: NeighborhoodSpec) -> int:
    """Attended (query, key) pairs of a neighborhood problem: windows are per-axis products, so the
    total is the product of per-axis sums of window lengths (exact, causal axes included).

    Example:
        >>> from glocal.spec import make_neighborhood_spec
        >>> attended_pairs(make_neighborhood_spec((5,), kernel_size=3))
        15
    """
    total = 1
    for i in range(spec.ndim):
        length, k, s, d, causal = spec.axis(i)
        _, lo, hi = axis_window(torch.arange(length), length, k, s, d, causal)
        total *= int((hi - lo).sum())
    return total


def pool_tokens(x: torch.Tensor, factors) -> torch.Tensor:
    """Average-pool a heads-last grid by ``factors`` per axis; a partial window at the end averages what it holds.

    Shapes: x: [B, *spatial, H, D] -> [B, *ceil(spatial / factors), H, D]. The blocks of a 1-D
    sequence of ``g`` tokens are ``pool_tokens(x, g)``.

    Example:
        >>> import torch
        >>> pool_tokens(torch.randn(1, 10, 7, 2, 8), (4, 2)).shape
        torch.Size([1, 3, 4, 2, 8])
    """
    ndim = x.dim() - 3
    factors = checks.reduction(factors, ndim)
    batch, heads, dim = x.shape[0], x.shape[-2], x.shape[-1]
    # avg_pool wants channels first; with padding 0 and ceil_mode, a window past the end is
    # clipped and divided by the elements it covers (no zeros counted).
    channels = x.movedim((-2, -1), (1, 2)).reshape(batch, heads * dim, *x.shape[1:-2])
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[ndim - 1]
    pooled = pool(channels, factors, factors, ceil_mode=True)
    return pooled.reshape(batch, heads, dim, *pooled.shape[2:]).movedim((1, 2), (-2, -1))
