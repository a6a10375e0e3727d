"""Context-parallel linear attention: each rank's chunk state, an exclusive prefix over ranks, the local op.

Shapes: q [B, T_q_local, H_q, D_k], k [B, T_kv_local, H_kv, D_k], v [B, T_kv_local, H_kv, D_v];
state (kv [B, H_kv, D_k, D_v], ksum [B, H_kv, D_k]).

Rank r holds the r-th contiguous piece of the sequence. Its keys' state ``S_r = (sum phi(k) v^T,
sum phi(k))`` is all the other ranks need of them: causal, rank r's queries see the initial state
plus ``S_0 + ... + S_{r-1}`` (an exclusive prefix over ranks) and their own keys causally;
non-causal, the initial state plus every other rank's state and all their own keys. So one
all-gather of a fixed-size state per call (and one in backward) is the whole traffic: the bytes
do not depend on the sequence length.

Example (inside an initialised process group):
    >>> import torch, glocal.distributed as gd                            # doctest: +SKIP
    >>> x = gd.shard(torch.randn(1, 8192, 4, 32), dim=1)                  # doctest: +SKIP
    >>> gd.linear_attention(x, x, x, is_causal=True).shape                # doctest: +SKIP
"""

from __future__ import annotations

import torch

from .. import checks
from ..checks import distributed as dist_checks
from ..numerics import FEATURE_MAPS, compute_dtype
from ..numerics import feature_map as feature_map_fn
from ..ops import linear_attention as single_device
from . import comm


class _RankPrefix(torch.autograd.Function):
    """``(incoming, total)`` of per-rank states: incoming = the sum over ranks before this one (causal) or
    every other rank (non-causal); total = the sum over all. Backward gathers the gradients the same way."""

    @staticmethod
    def forward(ctx, kv, ksum, group, is_causal):
        ctx.group, ctx.is_causal, ctx.shapes = group, is_causal, (kv.shape, ksum.shape)
        states = comm.all_gather(group, comm.pack((kv, ksum)))
        incoming = sum((states[r] for r in _sources(group.rank, group.world, is_causal)), torch.zeros_like(states[0]))
        return (*comm.unpack(incoming, ctx.shapes), *comm.unpack(sum(states), ctx.shapes))

    @staticmethod
    def backward(ctx, *grads):  # of kv_in, ksum_in, kv_total, ksum_total
        group, shapes = ctx.group, ctx.shapes
        like = next(g for g in grads if g is not None)
        grads = [torch.zeros(s, dtype=like.dtype, device=like.device) if g is None else g
                 for g, s in zip(grads, shapes + shapes)]
        gathered = comm.all_gather(group, comm.pack(grads))
        n = gathered[0].numel() // 2
        # This rank's state is in every total, and in the incoming state of each rank that lists it as a source.
        readers = [r for r in range(group.world) if group.rank in _sources(r, group.world, ctx.is_causal)]
        mine = sum(g[n:] for g in gathered) + sum((gathered[r][:n] for r in readers), like.new_zeros(n))
        g_kv, g_ksum = comm.unpack(mine, shapes)
        return g_kv, g_ksum, None, None


def _sources(rank: int, world: int, is_causal: bool) -> list[int]:
    """The ranks whose keys rank ``rank``'s queries see."""
    return list(range(rank)) if is_causal else [r for r in range(world) if r != rank]


def linear_attention(q, k, v, feature_map="elu1", is_causal=False, normalize=True, scale=None, chunk_size=64,
                     initial_state=None, return_state=False, group=None, backend=None):
    """Linear attention over a sequence sharded across the ranks of a process group (context parallelism).

    Shapes:
        q: [B, T_q_local, H_q, D_k]   k: [B, T_kv_local, H_kv, D_k]   v: [B, T_kv_local, H_kv, D_v]
        out: [B, T_q_local, H_q, D_v]
        initial_state / returned state: (kv [B, H_kv, D_k, D_v], ksum [B, H_kv, D_k]), the same on every rank
        Rank r holds the r-th contiguous piece (any lengths; causal: q and k/v the same positions).

    The result on each rank is its rows of :func:`glocal.linear_attention` over the whole sequence,
    with the same definitions and options; the returned state (with ``return_state``) is the state
    after the last key of the last rank, on every rank. Traffic: one all-gather of one state per
    rank, whatever the sequence length. Gradients of q, k, v are this rank's rows of the
    single-process gradients; those of the initial state (replicated) are summed over ranks.
    The feature map must be the same function on every rank (a callable is not compared).

    Args: as :func:`glocal.linear_attention`, plus ``group`` (None: the default group); ``backend``
        names the single-device backend.

    Example (run under torchrun or torch.multiprocessing with an initialised group):
        >>> import torch, glocal.distributed as gd                          # doctest: +SKIP
        >>> x = gd.shard(torch.randn(1, 8192, 4, 32), dim=1)                # doctest: +SKIP
        >>> out, state = gd.linear_attention(x, x, x, is_causal=True, return_state=True)  # doctest: +SKIP
    """
    grp = comm.Group(group)

    def local_checks():
        checks.linear_inputs(q, k, v, is_causal, feature_map, FEATURE_MAPS, scale, chunk_size, initial_state)
        dist_checks.causal_self(is_causal, q.shape[1], k.shape[1], "linear attention")

    _, error = comm.capture(local_checks)
    meta = None if error else {
        "shapes": (q.shape[0], q.shape[2:], k.shape[2:], v.shape[2:]), "dtype": str(q.dtype),
        "options": (feature_map if isinstance(feature_map, str) else "callable", bool(is_causal), bool(normalize),
                    scale, int(chunk_size), initial_state is not None, bool(return_state)),
        "requires_grad": (q.requires_grad, k.requires_grad, v.requires_grad),
    }
    metas = comm.agree(grp, meta, error)
    for key, what in (("shapes", "batch, heads and head dims of q, k and v"), ("dtype", "dtype"),
                      ("options", "options (feature_map, is_causal, normalize, scale, chunk_size, initial_state, "
                                  "return_state)"), ("requires_grad", "requires_grad of q, k and v")):
        dist_checks.same_on_ranks(what, [m[key] for m in metas])

    compute = compute_dtype(q)
    with comm.timed("compute"):
        b = feature_map_fn(feature_map)(k.to(compute))
        kv = torch.einsum("bshd,bshe->bhde", b, v.to(compute))
        ksum = b.sum(1)
    kv_in, ksum_in, kv_total, ksum_total = _RankPrefix.apply(kv, ksum, grp, bool(is_causal))
    if initial_state is not None:
        kv0, ksum0 = (comm.replicated(s, grp).to(compute) for s in initial_state)
        kv_in, ksum_in, kv_total, ksum_total = kv_in + kv0, ksum_in + ksum0, kv_total + kv0, ksum_total + ksum0
    with comm.timed("compute"):
        out = single_device(q, k, v, feature_map, is_causal, normalize, scale, chunk_size,
                            initial_state=(kv_in, ksum_in), backend=backend)
    return (out, (kv_total, ksum_total)) if return_state else out
