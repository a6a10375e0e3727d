"""Checks of glocal.distributed: the process group, the shard axis, the slabs, and agreement between ranks.

A check that depends on what other ranks hold runs after the ranks have exchanged a description of
their inputs, on every rank with the same values, so every rank raises the same error and none is
left waiting for a message that will not come.

Example:
    >>> from glocal.checks.distributed import shard_dim
    >>> shard_dim(1, 2)
    1
"""

from __future__ import annotations

from .base import choice, int_at_least

LAYOUTS = ("contiguous", "zigzag")


def process_group(available: bool, initialized: bool) -> None:
    if not available:
        raise ValueError("glocal.distributed needs torch.distributed, which this torch build lacks "
                         "(torch.distributed.is_available() is False). Install a torch build with distributed support.")
    if not initialized:
        raise ValueError("glocal.distributed needs an initialised process group; torch.distributed.is_initialized() "
                         "is False. Call torch.distributed.init_process_group('gloo' or 'nccl', ...) first "
                         "(torchrun sets up the environment for it).")


def shard_dim(value, ndim: int) -> int:
    """The spatial axis the grid is sharded along: ``0 <= shard_dim < ndim`` (0 is the first spatial axis)."""
    value = int_at_least("shard_dim", value, 0, "the spatial axis the grid is sharded along", 0)
    if value >= ndim:
        raise ValueError(f"shard_dim must be a spatial axis of the {ndim}-D grid, 0 <= shard_dim < {ndim}; got "
                         f"shard_dim={value}. Pass the index of the sharded axis among the spatial axes "
                         f"(0 for the first, after the batch axis).")
    return value


def layout(value) -> None:
    choice("layout", value, LAYOUTS)


def rank_refused(rank: int, world: int, message: str) -> ValueError:
    """The error every other rank raises when one rank's own checks refused its input."""
    return ValueError(f"rank {rank} of {world} refused its input, so every rank stops (the same call must succeed "
                      f"on every rank): {message}")


def same_on_ranks(what: str, values: list) -> None:
    """Every rank passed the same ``what`` (one entry of ``values`` per rank)."""
    if any(v != values[0] for v in values):
        by_rank = ", ".join(f"rank {i}: {v!r}" for i, v in enumerate(values))
        raise ValueError(f"every rank must pass the same {what}; got {by_rank}. Shard only along the sharded axis "
                         f"and pass the same options on every rank.")


def slab_lengths(lengths: list, what: str) -> None:
    """Every rank holds at least one position along the sharded axis."""
    empty = [i for i, n in enumerate(lengths) if n < 1]
    if empty:
        raise ValueError(f"every rank must hold at least one position along {what}; got lengths by rank {lengths} "
                         f"(ranks {empty} hold none). Shard into at most as many pieces as there are positions, "
                         f"e.g. with glocal.distributed.shard.")


def zigzag_lengths(lengths: list) -> None:
    """The zigzag layout: every rank holds two mirrored chunks of one length, so an even and equal length."""
    if any(n != lengths[0] for n in lengths) or lengths[0] % 2:
        raise ValueError(f"layout='zigzag' needs every rank to hold two chunks of equal length (an even local length, "
                         f"the same on every rank); got local lengths by rank {lengths}. Shard with "
                         f"glocal.distributed.shard(x, 1, layout='zigzag') (the sequence a multiple of 2 x world size), "
                         f"or pass layout='contiguous'.")


def causal_self(is_causal: bool, q_len: int, kv_len: int, op: str) -> None:
    """Causal context parallelism shards one sequence: q and k/v hold the same positions on each rank."""
    if is_causal and q_len != kv_len:
        raise ValueError(f"causal {op} shards one sequence, so each rank's q and k/v must hold the same positions; "
                         f"got T_q={q_len}, T_kv={kv_len} on this rank. Pass is_causal=False for cross attention.")


def shard_sizes(sizes, length: int, world: int) -> list[int]:
    """Explicit slab sizes for shard(): one per rank, each >= 1, summing to the axis length."""
    sizes = [int(s) for s in sizes]
    if len(sizes) != world or sum(sizes) != length or min(sizes) < 1:
        raise ValueError(f"sizes must give every one of the {world} ranks at least one position and sum to the axis "
                         f"length {length}; got sizes={sizes}. Pass {world} positive sizes summing to {length}, or "
                         f"sizes=None for near-equal slabs.")
    return sizes


def shard_length(length: int, world: int, layout_name: str) -> None:
    """Enough positions for every rank (contiguous), or a multiple of 2 x world (zigzag)."""
    if layout_name == "zigzag" and length % (2 * world):
        raise ValueError(f"layout='zigzag' cuts the axis into 2 x world = {2 * world} equal chunks; got length "
                         f"{length}, not a multiple of {2 * world}. Pad the sequence to a multiple of {2 * world}.")
    if length < world:
        raise ValueError(f"an axis of length {length} cannot give each of {world} ranks a position. Shard a longer "
                         f"axis or use fewer ranks.")


def wrap_module(module, supported: tuple) -> None:
    names = ", ".join(t.__name__ for t in supported)
    raise TypeError(f"glocal.distributed.wrap shards attention modules of types {names} (and models that contain "
                    f"them); got a {type(module).__name__}, which holds none. Wrap a model containing one of them.")


def wrap_layout(module, layout_name: str) -> None:
    """Neighborhood layers need contiguous slabs: a window's keys are its grid neighbours."""
    if layout_name != "contiguous":
        raise ValueError(f"{type(module).__name__} shards a grid into contiguous slabs; got layout={layout_name!r}. "
                         f"Wrap with layout='contiguous' (causal full attention then runs without load balancing).")
