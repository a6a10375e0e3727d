"""Reference of block-routed attention (MoBA, VMoBA): the routing made a dense key mask, one masked softmax.

The rule (the contract every backend implements): with the routing ``selection [B, H_q, T_q,
n_blocks]`` (``glocal.masks.block_selection``), query i attends key y iff
``selection[b, h, i, block(y)]`` and, when causal, ``y <= p_i`` with ``p_i = T_kv - T_q + i``.
``block(y)`` is the row-major index of the box of ``spec.block_shape`` holding token y of the grid
``spec.grid`` (``y // block_size`` for sequences). One softmax over the attended keys; a query
attending nothing gets output 0 and lse -inf.

Shapes: q [B, *grid_q, H_q, D], k [B, *grid, H_kv, D], v [B, *grid, H_kv, D_v] (sequences:
grid_q = (T_q,), grid = (T_kv,); grids: grid_q = grid, tokens numbered row-major), selection as
above; returns out [B, *grid_q, H_q, D_v] and lse [B, *grid_q, H_q]. Memory O(T_q * T_kv): for
tests. Computed in float32 (float64 for float64), plain autograd.

Example:
    >>> import torch
    >>> from glocal.backends.reference import block_sparse
    >>> from glocal.spec import BlockSparseSpec
    >>> q = k = v = torch.randn(1, 8, 2, 4)
    >>> selection = torch.ones(1, 2, 8, 2, dtype=torch.bool)
    >>> spec = BlockSparseSpec((8,), (4,), 8, is_causal=True, top_k=2)
    >>> out, lse = block_sparse.run(spec, {"q": q, "k": k, "v": v, "selection": selection}, 0.5)
    >>> out.shape, lse.shape
    (torch.Size([1, 8, 2, 4]), torch.Size([1, 8, 2]))
"""

from __future__ import annotations

import torch

from ...numerics import dense_attention
from ...spec import BlockSparseSpec

NAME = "reference"


def can_run(spec, tensors: dict) -> list[str]:
    if not isinstance(spec, BlockSparseSpec):
        return [f"reference does not implement {type(spec).__name__} as block-sparse attention"]
    return []


def token_blocks(grid, block_shape, device=None) -> torch.Tensor:
    """Block index of every token (row-major tokens, row-major boxes), written out axis by axis."""
    n_tokens = 1
    for length in grid:
        n_tokens *= length
    rest = torch.arange(n_tokens, device=device)
    block, box_stride = torch.zeros_like(rest), 1
    for length, size in reversed(list(zip(grid, block_shape))):
        coordinate, rest = rest % length, rest // length
        block = block + (coordinate // size) * box_stride
        box_stride *= -(-length // size)
    return block


def run(spec: BlockSparseSpec, tensors: dict, scale: float):
    """``(out, lse)`` from the dense mask of the routing; see the module docstring."""
    q, k, v, selection = tensors["q"], tensors["k"], tensors["v"], tensors["selection"]
    qf, kf, vf = q.flatten(1, -3), k.flatten(1, -3), v.flatten(1, -3)
    tq, tkv = qf.shape[1], kf.shape[1]
    block_of_key = token_blocks(spec.grid, spec.block_shape, q.device)
    allowed = selection[..., block_of_key]  # [B, H_q, T_q, T_kv]
    if spec.is_causal:
        position = torch.arange(tq, device=q.device) + (tkv - tq)
        allowed = allowed & (torch.arange(tkv, device=q.device)[None, :] <= position[:, None])
    out, lse = dense_attention(qf, kf, vf, scale, allowed)
    return out.reshape(*q.shape[:-1], v.shape[-1]), lse.reshape(q.shape[:-1])
