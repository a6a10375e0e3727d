"""Context-parallel neighborhood attention: each rank holds a slab of the grid, neighbours exchange halos.

Shapes: q [B, *local_spatial, H_q, D], k [B, *local_spatial, H_kv, D], v [B, *local_spatial, H_kv, D_v];
rank r holds the positions ``offset_r .. offset_r + L_r - 1`` of the global grid along ``shard_dim``
(rank order, any ``L_r >= 1``), the whole of every other axis.

How a slab computes exactly what one device would (DESIGN.md §1 on the global grid): the queries are
cut into chunks of rows; each chunk runs the single-device op on a *key slab*, a range of global rows
that holds every key its queries attend, starts at a multiple of ``stride x dilation`` (so dilation
groups and stride groups line up with the global ones) and reaches every stride group's leader, so
no window of the chunk's queries is shifted at a slab border that is not a border of the grid. Each
slab is checked against the global windows before use. Only the rows some query attends cross
ranks (from as many ranks as hold them, so a slab thinner than the halo is served by several);
rows a slab holds only to place its leaders are zeros. The interior chunk, whose key slab is
local, runs while the halos are in flight; the border chunks run when they arrive. Backward: the
gradients of the received rows go back to their owners (one message per neighbour again).

Example (inside an initialised process group; 2-D, sharded by rows):
    >>> import glocal.distributed as gd                                    # doctest: +SKIP
    >>> q = gd.shard(torch.randn(1, 64, 64, 4, 32), dim=1)                 # doctest: +SKIP
    >>> out = gd.neighborhood_attention(q, q, q, kernel_size=7)             # doctest: +SKIP
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .. import checks
from ..checks import distributed as dist_checks
from ..ops import neighborhood_attention as single_device
from ..spec import axis_window, make_neighborhood_spec
from . import comm


def _keys_and_leaders(rows: torch.Tensor, axis: tuple):
    """Per query row (global): the first key row, one past the last key row, one past its stride leader's row."""
    length, k, s, d, causal = axis
    group, lo, hi = axis_window(rows, length, k, s, d, causal)
    group_len = (length - group + d - 1) // d
    lead = torch.minimum((rows // d // s) * s + (s - 1 if causal else s // 2), group_len - 1)
    return lo * d + group, (hi - 1) * d + group + 1, lead * d + group + 1


def _slab(a: int, b: int, axis: tuple) -> tuple[int, int, int, int]:
    """Key slab of query rows ``[a, b)``: ``(slab_lo, slab_hi, key_lo, key_hi)``, global rows, half-open.

    ``[key_lo, key_hi)`` holds every key the rows attend; the slab contains it, starts at a multiple
    of stride x dilation, reaches every leader, and is at least K x dilation long (a valid problem).
    """
    length, k, s, d, causal = axis
    rows = torch.arange(a, b)
    first, end, lead_end = _keys_and_leaders(rows, axis)
    key_lo, key_hi = int(first.min()), int(end.max())
    align = s * d
    lo, hi = key_lo // align * align, max(key_hi, int(lead_end.max()))
    while hi - lo < k * d:
        if hi < length:
            hi = min(length, lo + k * d)
        else:
            lo = max(0, lo - align)
    # The argument above, checked: the slab's own windows are the global ones.
    group, g_lo, g_hi = axis_window(rows, length, k, s, d, causal)
    s_group, s_lo, s_hi = axis_window(rows - lo, hi - lo, k, s, d, causal)
    shift = lo // d
    if not bool(((s_group == group) & (s_lo + shift == g_lo) & (s_hi + shift == g_hi)).all()):
        raise RuntimeError(f"internal error in glocal.distributed: the key slab [{lo}, {hi}) of rows [{a}, {b}) does "
                           f"not reproduce their windows for axis {axis}; please report it")
    return lo, hi, key_lo, key_hi


@dataclass(frozen=True)
class Chunk:
    """Query rows ``[q_lo, q_hi)`` computed on the key slab ``[slab_lo, slab_hi)`` (global rows)."""

    q_lo: int
    q_hi: int
    slab_lo: int
    slab_hi: int
    local: bool  # the slab lies inside this rank's rows: it can run before the halos arrive


@dataclass(frozen=True)
class RankPlan:
    """One rank's rows ``[lo, hi)``, its chunks, and the rows it receives: ``[recv_lo, lo)`` and ``[hi, recv_hi)``."""

    lo: int
    hi: int
    chunks: tuple[Chunk, ...]
    recv_lo: int
    recv_hi: int
    ext_lo: int  # the rows every chunk's slab lies in
    ext_hi: int


def _longest_run(flags: torch.Tensor) -> tuple[int, int]:
    best, start = (0, 0), None
    for i, flag in enumerate(flags.tolist() + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return best


def _rank_plan(lo: int, hi: int, axis: tuple) -> RankPlan:
    length, k, s, d, causal = axis
    rows = torch.arange(lo, hi)
    first, end, lead_end = _keys_and_leaders(rows, axis)
    align = s * d
    # Rows whose own slab is local; their longest run is the interior.
    inside = (first >= -(-lo // align) * align) & (torch.maximum(end, lead_end) <= hi)
    a, b = _longest_run(inside)
    spans = []
    if b > a:
        interior = _slab(lo + a, lo + b, axis)
        if interior[0] >= lo and interior[1] <= hi:
            spans = [(lo, lo + a), (lo + a, lo + b), (lo + b, hi)]
    if not spans:
        spans = [(lo, hi)]
    chunks, key_lo, key_hi = [], lo, hi
    for q_lo, q_hi in spans:
        if q_hi > q_lo:
            s_lo, s_hi, k_lo, k_hi = _slab(q_lo, q_hi, axis)
            chunks.append(Chunk(q_lo, q_hi, s_lo, s_hi, s_lo >= lo and s_hi <= hi))
            key_lo, key_hi = min(key_lo, k_lo), max(key_hi, k_hi)
    ext_lo = min([lo] + [c.slab_lo for c in chunks])
    ext_hi = max([hi] + [c.slab_hi for c in chunks])
    return RankPlan(lo, hi, tuple(chunks), key_lo, key_hi, ext_lo, ext_hi)


@functools.lru_cache(maxsize=256)
def halo_plan(lengths: tuple[int, ...], axis: tuple) -> tuple[RankPlan, ...]:
    """The plan of every rank for slabs of ``lengths`` along an axis ``(L, K, stride, dilation, causal)``."""
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    return tuple(_rank_plan(offsets[r], offsets[r + 1], axis) for r in range(len(lengths)))


def _overlap(a_lo, a_hi, b_lo, b_hi) -> tuple[int, int]:
    lo, hi = max(a_lo, b_lo), min(a_hi, b_hi)
    return lo, max(lo, hi)


def messages(plans: tuple[RankPlan, ...], rank: int):
    """``(sends, recvs)``: ``(other rank, first global row, rows)`` this rank sends / receives, by rank."""
    me = plans[rank]
    sends, recvs = [], []
    for other, plan in enumerate(plans):
        if other == rank:
            continue
        for lo, hi in ((plan.recv_lo, plan.lo), (plan.hi, plan.recv_hi)):  # what `other` needs from me
            a, b = _overlap(lo, hi, me.lo, me.hi)
            if b > a:
                sends.append((other, a, b - a))
        for lo, hi in ((me.recv_lo, me.lo), (me.hi, me.recv_hi)):  # what I need from `other`
            a, b = _overlap(lo, hi, plan.lo, plan.hi)
            if b > a:
                recvs.append((other, a, b - a))
    return sends, recvs


def _rows_shape(x: torch.Tensor, dim: int, n: int) -> tuple:
    shape = list(x.shape)
    shape[dim] = n
    return tuple(shape)


class _Halo(torch.autograd.Function):
    """The received halo rows of k and v as outputs of the local k and v: backward sends their gradients to
    the ranks that own them and adds the gradients other ranks send back for the rows this rank sent."""

    @staticmethod
    def forward(ctx, exchange, k, v):
        # k and v pass through, so this backward runs whenever theirs does (also on a rank that only
        # sends); the received rows are views of buffers the posted receives are still filling.
        ctx.exchange = exchange
        return (k, v, *(t for pair in exchange.received for t in pair))

    @staticmethod
    def backward(ctx, grad_k, grad_v, *grads):
        ex = ctx.exchange
        pairs = [grads[i:i + 2] for i in range(0, len(grads), 2)]
        sends = []
        for (src, _, _), received, pair in zip(ex.recvs, ex.received, pairs):
            sends.append((src, comm.pack([torch.zeros_like(t) if g is None else g
                                          for t, g in zip(received, pair)])))
        buffers = [torch.empty(sum(torch.Size(s).numel() for s in shapes), dtype=ex.dtype, device=ex.device)
                   for shapes in ex.send_shapes]
        comm.post(ex.group, sends, [(dst, buf) for (dst, _, _), buf in zip(ex.sends, buffers)]).wait()
        grad_k = torch.zeros(ex.shapes[0], dtype=ex.dtype, device=ex.device) if grad_k is None else grad_k.clone()
        grad_v = torch.zeros(ex.shapes[1], dtype=ex.dtype, device=ex.device) if grad_v is None else grad_v.clone()
        for (_, start, n), buf, shapes in zip(ex.sends, buffers, ex.send_shapes):
            gk, gv = comm.unpack(buf, shapes)
            grad_k.narrow(ex.dim, start - ex.lo, n).add_(gk)
            grad_v.narrow(ex.dim, start - ex.lo, n).add_(gv)
        return None, grad_k, grad_v


class _Exchange:
    """The halo messages of one call, posted at construction; ``received`` holds, after ``wait``, the rows
    received from each source (k and v views of one message buffer per source)."""

    def __init__(self, group, plans, k, v, dim):
        self.group, self.dim, self.lo = group, dim, plans[group.rank].lo
        self.dtype, self.device, self.shapes = k.dtype, k.device, (k.shape, v.shape)
        self.sends, self.recvs = messages(plans, group.rank)
        self.send_shapes = [(_rows_shape(k, dim, n), _rows_shape(v, dim, n)) for _, _, n in self.sends]
        recv_shapes = [(_rows_shape(k, dim, n), _rows_shape(v, dim, n)) for _, _, n in self.recvs]
        buffers = [torch.empty(sum(torch.Size(s).numel() for s in shapes), dtype=k.dtype, device=k.device)
                   for shapes in recv_shapes]
        self.received = [comm.unpack(buf, shapes) for buf, shapes in zip(buffers, recv_shapes)]
        sends = [(dst, comm.pack([x.detach().narrow(dim, start - self.lo, n) for x in (k, v)]))
                 for dst, start, n in self.sends]
        self.pending = comm.post(group, sends, [(src, buf) for (src, _, _), buf in zip(self.recvs, buffers)])

    @property
    def active(self) -> bool:
        return bool(self.sends or self.recvs)

    def wait(self):
        self.pending.wait()


def _extended(local, received_rows, plan: RankPlan, recvs, dim):
    """Rows ``[ext_lo, ext_hi)`` of the global tensor: local rows, received rows, zeros elsewhere."""
    left = [t for (_, start, _), t in zip(recvs, received_rows) if start < plan.lo]
    right = [t for (_, start, _), t in zip(recvs, received_rows) if start >= plan.hi]
    pieces = [torch.zeros(_rows_shape(local, dim, plan.recv_lo - plan.ext_lo), dtype=local.dtype, device=local.device),
              *left, local, *right,
              torch.zeros(_rows_shape(local, dim, plan.ext_hi - plan.recv_hi), dtype=local.dtype, device=local.device)]
    return torch.cat([p for p in pieces if p.shape[dim]], dim)


def neighborhood_attention(q, k, v, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
                           additional_keys=None, additional_values=None, return_lse=False, group=None, shard_dim=0,
                           backend=None):
    """Neighborhood attention on a grid sharded across the ranks of a process group (context parallelism).

    Shapes:
        q: [B, *local_spatial, H_q, D_qk]   k: [B, *local_spatial, H_kv, D_qk]   v: [B, *local_spatial, H_kv, D_v]
        additional_keys / additional_values: [B, S, H_kv, D_qk] / [B, S, H_kv, D_v], the same on every rank
        out: [B, *local_spatial, H_q, D_v]   lse: [B, *local_spatial, H_q]
        Rank r holds a contiguous slab of the global grid along spatial axis ``shard_dim`` (rank order;
        slabs may be unequal, each at least one position), and all of every other axis.

    The result on each rank is its slab of ``glocal.neighborhood_attention`` over the global grid,
    every option included (the border rule of DESIGN.md §1 applies to the global grid). Only the
    rows of keys and values some query attends cross ranks: (K // 2) x dilation rows per side and
    neighbour for a non-causal axis of stride 1. Gradients of q, k, v are this rank's slab of the
    single-process gradients; those of the extra tokens (replicated) are summed over ranks, so every
    rank gets the single-process gradient. Every rank must call with the same options; a bad input
    on one rank stops every rank with an error (no rank waits forever).

    Args: as :func:`glocal.neighborhood_attention`, plus
        group: the torch.distributed process group (None: the default group).
        shard_dim: the sharded spatial axis (0: the first after the batch axis).
        backend: the single-device backend each rank uses (None: the fastest that can run).

    Example (run under torchrun or torch.multiprocessing with an initialised group):
        >>> import torch, glocal.distributed as gd                          # doctest: +SKIP
        >>> x = gd.shard(torch.randn(1, 256, 256, 4, 32), dim=1)           # doctest: +SKIP
        >>> gd.neighborhood_attention(x, x, x, kernel_size=7).shape        # doctest: +SKIP
        torch.Size([1, 64, 256, 4, 32])  # on each of 4 ranks
    """
    grp = comm.Group(group)

    def local_checks():
        ndim = checks.neighborhood_tensors(q, k, v, None)
        checks.additional_kv(q, k, v, additional_keys, additional_values)
        checks.scale(scale)
        axis = dist_checks.shard_dim(shard_dim, ndim)
        options = tuple(checks.per_axis(name, value, ndim, kind) for name, value, kind in (
            ("kernel_size", kernel_size, int), ("stride", stride, int), ("dilation", dilation, int),
            ("is_causal", is_causal, bool)))
        return axis, options

    checked, error = comm.capture(local_checks)
    axis, options = checked or (0, None)
    dim = 1 + axis
    meta = None if error else {
        "length": q.shape[dim],
        "shapes": tuple(_rows_shape(t, dim, 0) for t in (q, k, v)),
        "extra": None if additional_keys is None else (tuple(additional_keys.shape), tuple(additional_values.shape)),
        "dtype": str(q.dtype), "options": options, "scale": scale, "shard_dim": axis, "return_lse": bool(return_lse),
        "requires_grad": tuple(bool(t is not None and t.requires_grad)
                               for t in (q, k, v, additional_keys, additional_values)),
    }
    metas = comm.agree(grp, meta, error, per_rank=("length",))
    for key in ("shard_dim", "shapes", "extra", "dtype", "options", "scale", "return_lse", "requires_grad"):
        dist_checks.same_on_ranks(key.replace("_", " ") if key != "shapes" else
                                  "shapes of q, k and v off the sharded axis", [m[key] for m in metas])
    lengths = tuple(m["length"] for m in metas)
    dist_checks.slab_lengths(list(lengths), f"spatial axis {axis} (shard_dim)")
    spatial = list(q.shape[1:-2])
    spatial[axis] = sum(lengths)
    spec = make_neighborhood_spec(spatial, *options)  # the global problem: refused alike on every rank

    plans = halo_plan(lengths, spec.axis(axis))
    plan = plans[grp.rank]
    extra_k, extra_v = comm.replicated(additional_keys, grp), comm.replicated(additional_values, grp)

    def run(chunk, q_slab, k_slab, v_slab):
        with comm.timed("compute"):
            res = single_device(q_slab, k_slab, v_slab, spec.kernel_size, spec.stride, spec.dilation, spec.is_causal,
                                scale, extra_k, extra_v, True, backend)
        start = chunk.q_lo - chunk.slab_lo
        return [t.narrow(dim, start, chunk.q_hi - chunk.q_lo) for t in res]

    def local_rows(x, chunk):
        return x.narrow(dim, chunk.slab_lo - plan.lo, chunk.slab_hi - chunk.slab_lo)

    exchange = _Exchange(grp, plans, k, v, dim)
    received = []
    if exchange.active:
        k, v, *received = _Halo.apply(exchange, k, v)
    results = {}
    for i, chunk in enumerate(plan.chunks):  # the interior, while the halos travel
        if chunk.local:
            results[i] = run(chunk, local_rows(q, chunk), local_rows(k, chunk), local_rows(v, chunk))
    exchange.wait()
    if any(not c.local for c in plan.chunks):
        k_ext = _extended(k, received[0::2], plan, exchange.recvs, dim)
        v_ext = _extended(v, received[1::2], plan, exchange.recvs, dim)
        q_ext = _extended(q, [torch.zeros(_rows_shape(q, dim, n), dtype=q.dtype, device=q.device)
                              for _, _, n in exchange.recvs], plan, exchange.recvs, dim)
        for i, chunk in enumerate(plan.chunks):
            if not chunk.local:
                rows = (chunk.slab_lo - plan.ext_lo, chunk.slab_hi - chunk.slab_lo)
                results[i] = run(chunk, *(x.narrow(dim, *rows) for x in (q_ext, k_ext, v_ext)))
    parts = [results[i] for i in range(len(plan.chunks))]
    out = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts], dim)
    if not return_lse:
        return out
    lse = parts[0][1] if len(parts) == 1 else torch.cat([p[1] for p in parts], dim)
    return out, lse
