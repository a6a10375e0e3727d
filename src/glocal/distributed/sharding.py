"""Sharding helpers: this rank's piece of a tensor every rank holds (``shard``), and the whole back (``gather``).

Layouts along the sharded axis: ``"contiguous"`` (rank r holds the r-th slab; near-equal sizes,
the first ``L % world`` ranks one longer, as ``torch.tensor_split``; or explicit ``sizes``) and
``"zigzag"`` (the axis cut into 2 x world equal chunks, rank r holding chunks r and 2 x world - 1 - r:
the load-balanced layout of causal ring attention).

Example (inside an initialised process group of 4 ranks):
    >>> import torch, glocal.distributed as gd                            # doctest: +SKIP
    >>> x = torch.arange(16.0)[None, :, None, None]                        # doctest: +SKIP
    >>> gd.shard(x, 1, layout="zigzag").flatten().tolist()                 # doctest: +SKIP
    [0.0, 1.0, 14.0, 15.0]   # on rank 0
    >>> torch.equal(gd.gather(gd.shard(x, 1, layout="zigzag"), 1, layout="zigzag"), x)  # doctest: +SKIP
    True
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .. import checks
from ..checks import distributed as dist_checks
from ..checks.base import int_at_least
from . import comm


def _pieces(length: int, world: int, layout: str, sizes=None) -> list[list[tuple[int, int]]]:
    """Per rank, the ``(start, length)`` ranges of the axis it holds, in its local order."""
    if layout == "zigzag":
        chunk = length // (2 * world)
        return [[(r * chunk, chunk), ((2 * world - 1 - r) * chunk, chunk)] for r in range(world)]
    if sizes is None:
        sizes = [length // world + (1 if r < length % world else 0) for r in range(world)]
    starts = [sum(sizes[:r]) for r in range(world)]
    return [[(start, size)] for start, size in zip(starts, sizes)]


def _dim(x, dim) -> int:
    """``dim`` as a non-negative axis of ``x`` (negative counts from the end)."""
    checks.is_tensor("x", x)
    dim = int_at_least("dim", dim, -x.dim(), "the sharded axis of x", 1)
    if dim >= x.dim():
        raise ValueError(f"dim must be an axis of x, -{x.dim()} <= dim < {x.dim()}; got dim={dim} for x of shape "
                         f"{tuple(x.shape)}. Pass e.g. dim=1 (the first axis after the batch).")
    return dim % x.dim()


def shard(x: torch.Tensor, dim: int, group=None, layout: str = "contiguous", sizes=None) -> torch.Tensor:
    """This rank's piece of ``x`` (the same full tensor on every rank) along axis ``dim``.

    Shapes: x [..., L, ...] -> [..., L_r, ...]; ``dim`` counts the batch axis (1 is the first spatial or
    sequence axis of a heads-last tensor). Differentiable (the gradient is zero off this rank's piece).

    Args:
        layout: "contiguous" or "zigzag" (L a multiple of 2 x world).
        sizes: contiguous only: one length per rank, summing to L (None: near-equal).

    Example (4 ranks): ``shard(torch.randn(1, 256, 256, 4, 32), dim=1)`` is ``[1, 64, 256, 4, 32]`` on each rank.
    """
    grp = comm.Group(group)
    dist_checks.layout(layout)
    dim = _dim(x, dim)
    length = x.shape[dim]
    dist_checks.shard_length(length, grp.world, layout)
    if sizes is not None:
        sizes = dist_checks.shard_sizes(sizes, length, grp.world)
    pieces = _pieces(length, grp.world, layout, sizes)[grp.rank]
    return torch.cat([x.narrow(dim, start, n) for start, n in pieces], dim) if len(pieces) > 1 \
        else x.narrow(dim, *pieces[0])


class _Gather(torch.autograd.Function):
    """All-gather along ``dim``; backward sums the gradient over ranks and keeps this rank's piece, the adjoint
    when each rank's loss is one term of a sum (as data-parallel training treats ranks)."""

    @staticmethod
    def forward(ctx, x, grp, dim, lengths, layout):
        ctx.grp, ctx.dim, ctx.lengths, ctx.layout = grp, dim, lengths, layout
        width = max(lengths)
        padded = torch.cat([x, x.new_zeros(_with(x.shape, dim, width - x.shape[dim]))], dim) if x.shape[dim] < width \
            else x
        parts = [p.narrow(dim, 0, n) for p, n in zip(comm.all_gather(grp, padded), lengths)]
        return _assemble(parts, dim, lengths, layout)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        comm.note(bytes_sent=2 * (ctx.grp.world - 1) * grad.numel() * grad.element_size() // ctx.grp.world)
        with comm.timed("comm"):
            dist.all_reduce(grad, group=ctx.grp.handle)
        pieces = _pieces(sum(ctx.lengths), ctx.grp.world, ctx.layout, list(ctx.lengths))[ctx.grp.rank]
        return torch.cat([grad.narrow(ctx.dim, s, n) for s, n in pieces], ctx.dim), None, None, None, None


def _with(shape, dim, n):
    shape = list(shape)
    shape[dim] = n
    return shape


def _assemble(parts, dim, lengths, layout):
    if layout == "contiguous":
        return torch.cat(parts, dim)
    world, half = len(parts), lengths[0] // 2
    chunks = [None] * (2 * world)
    for r, part in enumerate(parts):
        chunks[r], chunks[2 * world - 1 - r] = part.narrow(dim, 0, half), part.narrow(dim, half, half)
    return torch.cat(chunks, dim)


def gather(x: torch.Tensor, dim: int, group=None, layout: str = "contiguous") -> torch.Tensor:
    """The whole tensor from every rank's piece along ``dim`` (the inverse of :func:`shard`), on every rank.

    Shapes: x [..., L_r, ...] -> [..., sum_r L_r, ...]; pieces may differ in length (contiguous).
    Differentiable: backward sums the gradient over ranks and returns this rank's piece.

    Example (4 ranks): ``gather(shard(x, 1), 1)`` equals ``x`` on every rank.
    """
    grp = comm.Group(group)

    def local_checks():
        dist_checks.layout(layout)
        return _dim(x, dim)

    dim, error = comm.capture(local_checks)
    meta = None if error else {"length": x.shape[dim], "rest": (tuple(_with(x.shape, dim, 0)), str(x.dtype))}
    metas = comm.agree(grp, meta, error, per_rank=("length",))
    dist_checks.same_on_ranks("shape off the gathered axis and dtype", [m["rest"] for m in metas])
    lengths = tuple(m["length"] for m in metas)
    if layout == "zigzag":
        dist_checks.zigzag_lengths(list(lengths))
    return _Gather.apply(x, grp, dim, lengths, layout)
