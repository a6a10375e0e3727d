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
    spatial = x.shape[1:-2]
    if all(n % f == 0 for n, f in zip(spatial, factors)):
        # Whole windows only: means over the window axes of a view, no channels-first copy (10x faster),
        # one axis at a time from the innermost (about 4x faster than one mean over all of them).
        shape = [x.shape[0]]
        for n, f in zip(spatial, factors):
            shape += [n // f, f]
        pooled = x.reshape(*shape, *x.shape[-2:])
        for axis in range(2 * ndim, 1, -2):
            pooled = pooled.mean(axis)
        return pooled
    batch, heads, dim = x.shape[0], x.shape[-2], x.shape[-1]
    # avg_pool wants channels first; with padding 0 and ceil_mode, a window past the end is
    # clipped and divided by the elements it covers (no zeros counted).
    channels = x.movedim((-2, -1), (1, 2)).reshape(batch, heads * dim, *x.shape[1:-2])
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[ndim - 1]
    pooled = pool(channels, factors, factors, ceil_mode=True)
    return pooled.reshape(batch, heads, dim, *pooled.shape[2:]).movedim((1, 2), (-2, -1))


# ---------------------------------------------------------------------------------------------------
# Block routing (MoBA for sequences, VMoBA for grids): block layout, block means, block selection.
# The op computes the routing once with these and hands it to every backend as data; decoding caches
# use the same functions, so there is one definition of which blocks a query attends.

# Routing is computed in slices of queries so that its temporaries (gates, sort indices) stay near
# this many elements, whatever T_q.
_ROUTING_ELEMENTS = 1 << 20
# With at most this many blocks to pick per query, top_k picks them by repeated argmax (exact: argmax
# returns the first maximum, i.e. the lower block index on ties) instead of a full stable sort.
_ARGMAX_PICKS = 8


def block_layout(grid, block_shape, device=None) -> torch.Tensor:
    """Block index of every token of ``grid`` cut into boxes of ``block_shape``: a ``[N]`` long tensor.

    Tokens are numbered row-major (as ``x.flatten(1, -3)`` numbers them); a token at coordinate ``c``
    is in the box ``c // block_shape`` (per axis), and boxes are numbered row-major over the box grid
    ``ceil(grid / block_shape)``. Edge boxes are partial when a size does not divide its axis.

    Example:
        >>> block_layout((5,), (2,)).tolist()
        [0, 0, 1, 1, 2]
        >>> block_layout((2, 3), (1, 2)).tolist()
        [0, 0, 1, 2, 2, 3]
    """
    grid = tuple(int(x) for x in grid)
    n_tokens = 1
    for length in grid:
        n_tokens *= length
    coords = grid_coords(torch.arange(n_tokens, device=device), grid)
    index = torch.zeros(n_tokens, dtype=torch.long, device=device)
    for c, length, b in zip(coords, grid, block_shape):
        index = index * (-(-length // b)) + c // b
    return index


def query_blocks(grid, block_shape, q_len: int, device=None) -> torch.Tensor:
    """The own block of each query: ``[q_len]`` long. Queries are the last ``q_len`` tokens of ``grid``.

    For a sequence query i sits at position ``p_i = T_kv - q_len + i`` and its block is
    ``p_i // block_size`` (computed for the queries only, so a decoding step costs O(q_len)).

    Example:
        >>> query_blocks((10,), (4,), 3).tolist()
        [1, 2, 2]
    """
    if len(grid) == 1:
        positions = torch.arange(grid[0] - q_len, grid[0], device=device)
        return positions // block_shape[0]
    layout = block_layout(grid, block_shape, device)
    return layout[layout.shape[0] - q_len:]


def block_means(k: torch.Tensor, block_shape) -> torch.Tensor:
    """Mean key of every block: ``k [B, *grid, H_kv, D]`` -> ``[B, n_blocks, H_kv, D]``, blocks row-major.

    A partial edge block averages the keys it holds (no padding counted). Computed in float32
    (float64 for float64 keys) and detached: the routing is not differentiated.

    Example:
        >>> k = torch.arange(5.0).reshape(1, 5, 1, 1)
        >>> block_means(k, (2,)).flatten().tolist()
        [0.5, 2.5, 4.0]
    """
    compute = torch.float64 if k.dtype == torch.float64 else torch.float32
    grid = tuple(k.shape[1:-2])
    flat = k.detach().flatten(1, -3).to(compute)
    layout = block_layout(grid, block_shape, k.device)
    n_blocks = 1
    for length, b in zip(grid, block_shape):
        n_blocks *= -(-length // b)
    sums = flat.new_zeros(k.shape[0], n_blocks, k.shape[-2], k.shape[-1]).index_add_(1, layout, flat)
    counts = torch.bincount(layout, minlength=n_blocks).to(compute)
    return sums / counts[:, None, None]


def own_block_means(k: torch.Tensor, block_size: int, q_len: int) -> torch.Tensor:
    """The causal gate key of each query's own block: the mean of its block's keys up to the query.

    Shapes: k [B, T_kv, H_kv, D] -> [B, T_q, H_kv, D] for the queries at positions T_kv - T_q + i
    (bottom-right, as in glocal.moba_attention); float32 (float64 for float64 keys), detached.

    Example:
        >>> k = torch.arange(5.0).reshape(1, 5, 1, 1)
        >>> own_block_means(k, 2, 3).flatten().tolist()   # positions 2, 3, 4: blocks [2, 3], [2, 3], [4]
        [2.0, 2.5, 4.0]
    """
    compute = torch.float64 if k.dtype == torch.float64 else torch.float32
    length = k.shape[1]
    positions = torch.arange(length - q_len, length, device=k.device)
    starts = positions // block_size * block_size
    rows = k.detach()[:, int(starts[0]) if q_len else 0:].to(compute)  # the queries' blocks start here
    offset = int(starts[0]) if q_len else 0
    # Sums inside each block from its start: a cumulative sum restarted at every block (exact per block).
    padded = -(-rows.shape[1] // block_size) * block_size
    blocks = torch.nn.functional.pad(rows, (0, 0, 0, 0, 0, padded - rows.shape[1])).unflatten(1, (-1, block_size))
    sums = blocks.cumsum(2).flatten(1, 2)[:, positions - offset]
    return sums / (positions - starts + 1).to(compute)[:, None, None]


def block_selection(q: torch.Tensor, means: torch.Tensor, own_block: torch.Tensor, is_causal: bool,
                    top_k: int | None = None, threshold: float | None = None,
                    own_means: torch.Tensor | None = None) -> torch.Tensor:
    """Which key blocks each query attends (MoBA / VMoBA routing): a bool ``[B, H_q, T_q, n_blocks]``.

    Shapes: q [B, T_q, H_q, D] (grids flattened), means [B, n_blocks, H_kv, D] (:func:`block_means`),
    own_block [T_q] long (:func:`query_blocks`). Query head h reads kv head h // (H_q // H_kv).

    The gate of a block is the unscaled dot product ``q . mean(k_block)``, computed in float32
    (float64 for float64) and not differentiated. The eligible blocks of a query are every block
    (``is_causal=False``) or its own block and the blocks before it (causal; never a later block).
    The own block is always selected. Then exactly one of:

    - ``top_k``: the own block plus the ``top_k - 1`` highest-gated other eligible blocks (all of
      them if fewer exist); ties go to the lower block index.
    - ``threshold=tau`` in [0, 1]: the gates over the eligible blocks are min-max normalised to
      [0, 1] (all equal, e.g. one eligible block: every share equal) and divided by their sum (the
      shares); the own block's share counts first, then the other eligible blocks are added in
      descending gate order (ties: lower index) while the share accumulated so far is below tau.
      tau = 0 keeps the own block only; tau = 1 keeps every eligible block.

    ``own_means`` [B, T_q, H_kv, D] replaces the gate key of each query's own block (only the
    threshold rule reads the own block's gate): causal routing passes :func:`own_block_means`, the
    mean of the own block's keys up to the query, so that a later key of that block never changes
    an earlier query's routing (the forward then equals decoding token by token).

    Example:
        >>> q = torch.ones(1, 4, 1, 2)
        >>> means = torch.tensor([[[[1.0, 0]], [[3.0, 0]], [[2.0, 0]], [[0.0, 0]]]])
        >>> own = torch.tensor([0, 1, 2, 3])
        >>> block_selection(q, means, own, is_causal=True, top_k=2)[0, 0].int().tolist()
        [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 1, 0, 1]]
    """
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    batch, tq, hq, dim = q.shape
    n_blocks, hkv = means.shape[1], means.shape[2]
    selection = torch.empty(batch, hq, tq, n_blocks, dtype=torch.bool, device=q.device)  # every slice is written
    if selection.numel() == 0:
        return selection
    # [B, H_kv, 1, D, n]: every query head of a group reads its kv head's means.
    means_t = means.detach().to(compute).permute(0, 2, 3, 1).unsqueeze(2)
    blocks = torch.arange(n_blocks, device=q.device)
    step = max(1, _ROUTING_ELEMENTS // max(1, batch * hq * n_blocks))
    with torch.no_grad():
        for t0 in range(0, tq, step):
            t1 = min(t0 + step, tq)
            qc = q[:, t0:t1].detach().to(compute).unflatten(2, (hkv, hq // hkv)).permute(0, 2, 3, 1, 4)
            gates = torch.matmul(qc, means_t).reshape(batch, hq, t1 - t0, n_blocks)
            own = blocks == own_block[t0:t1, None]  # [t, n]
            if own_means is not None and threshold is not None:
                om = own_means[:, t0:t1].detach().to(compute).permute(0, 2, 1, 3).unsqueeze(2)  # [B, H_kv, 1, t, D]
                own_gate = (qc * om).sum(-1).reshape(batch, hq, t1 - t0, 1)
                gates = torch.where(own, own_gate, gates)
            eligible = blocks <= own_block[t0:t1, None] if is_causal else torch.ones_like(own)
            selection[:, :, t0:t1] = _select(gates, own, eligible, top_k, threshold)
    return selection


def _select(gates, own, eligible, top_k, threshold):
    """The routing rule of :func:`block_selection` on one slice: gates [B, H, t, n], own/eligible [t, n]."""
    others = eligible & ~own
    if top_k is not None and top_k - 1 >= own.shape[-1] - 1 or threshold is not None and threshold >= 1:
        return eligible.expand_as(gates)
    if top_k is not None and top_k == 1 or threshold is not None and threshold <= 0:
        return own.expand_as(gates)
    # -inf on the blocks that cannot be picked, added in place (a broadcast add is far cheaper than masked_fill).
    key = gates.clone() if threshold is not None else gates
    key += torch.zeros(others.shape, dtype=gates.dtype, device=gates.device).masked_fill_(~others, -float("inf"))
    chosen = torch.zeros_like(gates, dtype=torch.bool)
    if top_k is not None and top_k - 1 <= _ARGMAX_PICKS:
        for _ in range(top_k - 1):
            # The first maximum (ties: the lower block index); max's indices are ~2x faster than argmax here.
            best = key.max(-1, keepdim=True).indices
            chosen.scatter_(-1, best, True)
            key.scatter_(-1, best, -float("inf"))
        return own | (chosen & others)
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices  # stable: ties keep index order
    if top_k is not None:
        chosen.scatter_(-1, order[..., :top_k - 1], True)
        return own | (chosen & others)
    # Threshold: min-max normalised gates over the eligible blocks, as shares of their sum.
    low = gates.masked_fill(~eligible, float("inf")).amin(-1, keepdim=True)
    high = gates.masked_fill(~eligible, -float("inf")).amax(-1, keepdim=True)
    spread = high - low
    norm = torch.where(spread > 0, (gates - low) / torch.where(spread > 0, spread, 1.0), 1.0)
    norm = norm.masked_fill(~eligible, 0.0)
    share = norm / norm.sum(-1, keepdim=True)
    own_share = share.masked_fill(~own, 0.0).sum(-1, keepdim=True)
    sorted_share = share.masked_fill(~others, 0.0).gather(-1, order)
    before = own_share + sorted_share.cumsum(-1) - sorted_share  # share accumulated before each block
    chosen.scatter_(-1, order, before < threshold)
    return own | (chosen & others)
