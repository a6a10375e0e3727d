"""Content-routed block attention: MoBA (sequences, causal or not) and VMoBA (grids, non-causal).

Shapes (heads-last as everywhere in glocal):
    sequences: q [B, T_q, H_q, D], k [B, T_kv, H_kv, D], v [B, T_kv, H_kv, D_v] -> out [B, T_q, H_q, D_v]
    grids:     q, k [B, *spatial, H, D], v [B, *spatial, H_kv, D_v] (1 to 3 axes) -> out [B, *spatial, H_q, D_v]
    selection (the routing): bool [B, H_q, T_q, n_blocks]; lse: [B, T_q (or *spatial), H_q]

Keys are cut into blocks (``block_size`` positions, or boxes of ``block_shape`` on a grid; edge blocks
partial). Each query gates every block by ``q . mean(k_block)`` (unscaled, per query head, the kv
head's means under GQA), always attends its own block and adds the best other blocks (``top_k``) or
blocks up to a share of the normalised gates (``threshold``); :func:`glocal.masks.block_selection`
states the rule. Then one softmax over the union of the selected blocks' keys (token-causal inside
the own block when causal). The routing is computed once here and handed to the backend as
``tensors["selection"]``: query i attends key y iff ``selection[b, h, i, block(y)]`` and, when
causal, ``y <= p_i = T_kv - T_q + i``. docs/moba.md describes the semantics, the fast CPU path and
where this differs from the MoBA and VMoBA papers' code.

Example:
    >>> import torch, glocal
    >>> q = k = v = torch.randn(1, 64, 2, 16)
    >>> glocal.moba_attention(q, k, v, block_size=16, top_k=2).shape
    torch.Size([1, 64, 2, 16])
"""

from __future__ import annotations

from .. import checks
from ..backends import choose_backend
from ..masks import block_means as compute_block_means
from ..masks import block_selection, own_block_means, query_blocks
from ..numerics import resolve_scale
from ..spec import BlockSparseSpec


def _routing(q, spec: BlockSparseSpec, k, means):
    """The selection of ``spec`` for flat queries ``q [B, T_q, H_q, D]`` (means computed from k when None)."""
    if means is None:
        means = compute_block_means(k, spec.block_shape)
    own = query_blocks(spec.grid, spec.block_shape, spec.q_len, q.device)
    # Causal threshold routing reads the own block's gate: from its keys up to the query only.
    own_means = own_block_means(k, spec.block_shape[0], spec.q_len) \
        if spec.is_causal and spec.threshold is not None else None
    return block_selection(q, means, own, spec.is_causal, spec.top_k, spec.threshold, own_means)


def _run(spec, q, k, v, selection, scale, return_lse, backend):
    tensors = {"q": q, "k": k, "v": v, "selection": selection}
    out, lse = choose_backend(spec, tensors, backend).run(spec, tensors, scale)
    return (out, lse) if return_lse else out


def moba_selection(q, k, block_size, top_k=None, is_causal=True, threshold=None, block_means=None):
    """The routing of :func:`moba_attention`: which key blocks each query attends, as a bool tensor.

    Shapes:
        q: [B, T_q, H_q, D]   k: [B, T_kv, H_kv, D]   block_means: [B, n_blocks, H_kv, D] or None
        returns: [B, H_q, T_q, n_blocks] bool, n_blocks = ceil(T_kv / block_size)

    This is exactly the selection :func:`moba_attention` uses with the same arguments (the rule is
    :func:`glocal.masks.block_selection`). Query i sits at position T_kv - T_q + i; its own block is
    always selected. ``block_means`` (the mean of the real keys of each block) replaces computing
    them from ``k``; a decoding cache keeps them up to date incrementally.

    Example:
        >>> import torch, glocal
        >>> q = k = torch.randn(1, 10, 2, 8)
        >>> sel = glocal.moba_selection(q, k, block_size=4, top_k=2)
        >>> sel.shape, sel.sum(-1).max().item()
        (torch.Size([1, 2, 10, 3]), 2)
    """
    checks.moba_tensors("moba_selection", q, k)
    spec = _sequence_spec(q, k, block_size, top_k, is_causal, threshold, block_means)
    return _routing(q, spec, k, block_means)


def _sequence_spec(q, k, block_size, top_k, is_causal, threshold, block_means) -> BlockSparseSpec:
    block_size = checks.block_size(block_size)
    checks.causal_flag(is_causal)
    checks.routing(top_k, threshold)
    spec = BlockSparseSpec((k.shape[1],), (block_size,), q.shape[1], is_causal,
                           None if top_k is None else int(top_k), None if threshold is None else float(threshold))
    checks.block_means(block_means, k, spec.n_blocks)
    return spec


def moba_attention(q, k, v, block_size, top_k=None, is_causal=True, threshold=None, scale=None, return_lse=False,
                   backend=None, block_means=None):
    """MoBA: each query attends its own key block and the blocks its gates select, in one softmax.

    Shapes:
        q: [B, T_q, H_q, D]   k: [B, T_kv, H_kv, D]   v: [B, T_kv, H_kv, D_v]   (T_q <= T_kv)
        block_means: [B, n_blocks, H_kv, D] or None, n_blocks = ceil(T_kv / block_size)
        out: [B, T_q, H_q, D_v]   lse: [B, T_q, H_q] (float32; float64 for float64 inputs)
        H_q must be a multiple of H_kv (GQA/MQA: query head h reads kv head h // (H_q // H_kv)).

    The queries are the last T_q positions (bottom-right, as glocal.attention): query i sits at
    p_i = T_kv - T_q + i, so decoding one token over a KV cache is this call with T_q = 1. Keys are
    cut into blocks of ``block_size`` positions (the last may be partial); a block's gate is
    ``q . mean(k_block)`` (unscaled, not differentiated; the attention is differentiated).

    - Causal (MoBA): a query attends its own block p_i // block_size token-causally (keys up to
      p_i) and the ``top_k - 1`` highest-gated blocks strictly before it (all of them if fewer
      exist), never a later block. ``top_k`` counts the own block: ``top_k=1`` is the own block
      only (MoBA's code runs full causal attention there instead). Ties go to the lower block.
    - Non-causal (``is_causal=False``): the own block, fully visible, plus the ``top_k - 1`` best
      other blocks.
    - ``threshold=tau`` instead of ``top_k`` (VMoBA's rule per query and head): the gates over the
      eligible blocks are min-max normalised, the own block's share of their sum counts first, and
      the other blocks are added best-first while the accumulated share is below tau; tau in
      [0, 1], 0 keeps the own block, 1 every eligible block. See glocal.masks.block_selection.

    Exactly one of ``top_k`` and ``threshold`` is given. ``scale=None`` means D ** -0.5 (it scales
    the attention scores, not the gates; an explicit 0.0 is honoured). ``block_means`` (the means of
    the real keys of each block) skips computing them from ``k``, e.g. in a decoding cache.
    ``backend``: None chooses (on the CPU the gathered-block path ``cpu``; on CUDA Triton first), or
    name one of glocal.available_backends(). :func:`moba_selection` returns the routing itself.

    Example:
        >>> import torch, glocal
        >>> q = k = v = torch.randn(1, 256, 4, 32)
        >>> out, lse = glocal.moba_attention(q, k, v, block_size=64, top_k=2, return_lse=True)
        >>> out.shape, lse.shape
        (torch.Size([1, 256, 4, 32]), torch.Size([1, 256, 4]))
        >>> step = glocal.moba_attention(q[:, -1:], k, v, block_size=64, top_k=2)  # decode the last token
        >>> torch.allclose(step, out[:, -1:], atol=1e-5)
        True
    """
    checks.moba_tensors("moba_attention", q, k, v)
    checks.scale(scale)
    spec = _sequence_spec(q, k, block_size, top_k, is_causal, threshold, block_means)
    selection = _routing(q, spec, k, block_means)
    return _run(spec, q, k, v, selection, resolve_scale(scale, q.shape[-1] ** -0.5), return_lse, backend)


def moba_attention_nd(q, k, v, block_shape, top_k=None, threshold=None, scale=None, return_lse=False, backend=None):
    """VMoBA: block-routed self attention on a 1-D, 2-D or 3-D grid, the blocks boxes of ``block_shape``.

    Shapes:
        q: [B, *spatial, H_q, D]   k: [B, *spatial, H_kv, D]   v: [B, *spatial, H_kv, D_v]
        out: [B, *spatial, H_q, D_v]   lse: [B, *spatial, H_q] (float32; float64 for float64 inputs)

    The grid is cut into boxes of ``block_shape`` (an int or one per axis; edge boxes are partial,
    sizes need not divide, a size at least the axis length spans the axis). Tokens are numbered
    row-major and a token's block is the row-major index of its box. Non-causal: every query
    attends its own box and the boxes selected by ``top_k`` or ``threshold`` among all others, with
    the rules of :func:`moba_attention`. ``scale=None`` means D ** -0.5.

    VMoBA's layer-wise recurrent partition is a choice of block shapes on one video grid
    [B, T, X, Y, H, D]: temporal (t, X, Y), spatial (T, x, y) and spatio-temporal (t, x, y) blocks,
    cycled layer by layer: ``block_shape = [(2, X, Y), (T, 8, 8), (2, 8, 8)][layer % 3]``.

    Example:
        >>> import torch, glocal
        >>> q = k = v = torch.randn(1, 4, 16, 16, 2, 16)   # [B, T, X, Y, H, D]
        >>> shapes = [(1, 16, 16), (4, 8, 8), (2, 8, 8)]    # temporal, spatial, spatio-temporal
        >>> [glocal.moba_attention_nd(q, k, v, s, top_k=2).shape[1:4] for s in shapes]
        [torch.Size([4, 16, 16]), torch.Size([4, 16, 16]), torch.Size([4, 16, 16])]
    """
    ndim = checks.moba_grid_tensors(q, k, v)
    block_shape = checks.block_shape(block_shape, ndim)
    checks.routing(top_k, threshold)
    checks.scale(scale)
    grid = tuple(q.shape[1:-2])
    spec = BlockSparseSpec(grid, tuple(max(1, min(b, length)) for b, length in zip(block_shape, grid)),
                           q.flatten(1, -3).shape[1], False, None if top_k is None else int(top_k),
                           None if threshold is None else float(threshold))
    selection = _routing(q.flatten(1, -3), spec, k, None)
    return _run(spec, q, k, v, selection, resolve_scale(scale, q.shape[-1] ** -0.5), return_lse, backend)
