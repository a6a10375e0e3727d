"""Ring attention: full softmax attention over a sequence sharded across ranks, key/value blocks passed around a ring.

Shapes: q [B, T_q_local, H_q, D], k [B, T_kv_local, H_kv, D], v [B, T_kv_local, H_kv, D_v] on each rank.

At step i rank r holds the key/value block of rank r - i (mod world) and attends it with the
single-device op (``glocal.attention``, lse included); results merge exactly by lse. The next
block is in flight while the current one is computed. Backward is a second ring pass: each block
travels with its key and value gradients, every rank adds its queries' share (the block is
recomputed, its output and lse differentiated with the merge weights), and one last hop brings
the gradients home. Memory per rank stays O(local block), never O(sequence).

Causal layouts: ``"zigzag"`` (load-balanced) cuts the sequence into 2 x world chunks and gives rank
r chunks r and 2 x world - 1 - r; every step then costs every rank the same half block (the
diagonal step a causal block of the same size). ``"contiguous"`` gives rank r the r-th slab; rank r
idles at the steps whose block lies after it (correct, not balanced).

Example (inside an initialised process group):
    >>> import torch, glocal.distributed as gd                            # doctest: +SKIP
    >>> x = gd.shard(torch.randn(1, 4096, 8, 64), dim=1, layout="zigzag")  # doctest: +SKIP
    >>> gd.ring_attention(x, x, x, is_causal=True).shape                  # doctest: +SKIP
    torch.Size([1, 1024, 8, 64])  # on each of 4 ranks
"""

from __future__ import annotations

import torch

from .. import checks
from ..checks import distributed as dist_checks
from ..numerics import compute_dtype, lse_dtype, merge_lse, resolve_scale
from ..ops import attention
from . import comm


def ring_blocks(rank: int, src: int, q_len: int, kv_len: int, is_causal: bool, layout: str):
    """The attention calls of rank ``rank`` on the block of rank ``src``: ``(q_lo, q_hi, kv_lo, kv_hi, causal)``."""
    if not is_causal:
        return [(0, q_len, 0, kv_len, False)]
    if src == rank:
        return [(0, q_len, 0, kv_len, True)]
    if layout == "contiguous":
        return [(0, q_len, 0, kv_len, False)] if src < rank else []
    half = q_len // 2
    if src < rank:  # both local chunks come after the block's first chunk, before its second
        return [(0, q_len, 0, half, False)]
    return [(half, q_len, 0, kv_len, False)]  # only the local second chunk sees the block, all of it


def ring_flops(rank, world, q_len, kv_len, is_causal, layout, batch, heads, dqk, dv) -> int:
    """FLOPs of the attention rank ``rank`` scores over a ring pass (2 x (D_qk + D_v) per query-key pair)."""
    pairs = 0
    for step in range(world):
        for q_lo, q_hi, kv_lo, kv_hi, causal in ring_blocks(rank, (rank - step) % world, q_len, kv_len, is_causal,
                                                            layout):
            n, m = q_hi - q_lo, kv_hi - kv_lo
            pairs += n * (n + 1) // 2 if causal else n * m
    return 2 * (dqk + dv) * heads * batch * pairs


def _step_messages(group, step, block, shapes):
    """Post the block's trip to the next rank and the receipt of the previous rank's; ``(pending, buffer)``."""
    src_next = (group.rank - step - 1) % group.world
    buffer = torch.empty(sum(torch.Size(s).numel() for s in shapes[src_next]), dtype=block[0].dtype,
                         device=block[0].device)
    pending = comm.post(group, [((group.rank + 1) % group.world, comm.pack(block))],
                        [((group.rank - 1) % group.world, buffer)])
    return pending, buffer


class _Ring(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, group, setup):
        is_causal, scale, layout, backend, kv_shapes = setup
        world, rank = group.world, group.rank
        compute = compute_dtype(q)
        out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=compute, device=q.device)
        lse = torch.full(q.shape[:-1], -float("inf"), dtype=compute, device=q.device)
        block = (k, v)
        for step in range(world):
            src = (rank - step) % world
            if step < world - 1:
                pending, buffer = _step_messages(group, step, block, kv_shapes)
            for q_lo, q_hi, kv_lo, kv_hi, causal in ring_blocks(rank, src, q.shape[1], block[0].shape[1],
                                                                is_causal, layout):
                with comm.timed("compute"):
                    o, l = attention(q[:, q_lo:q_hi], block[0][:, kv_lo:kv_hi], block[1][:, kv_lo:kv_hi], causal,
                                     scale, True, backend)
                    merged = _merge(out[:, q_lo:q_hi], lse[:, q_lo:q_hi], o, l)
                    out[:, q_lo:q_hi], lse[:, q_lo:q_hi] = merged
            if step < world - 1:
                pending.wait()
                block = tuple(comm.unpack(buffer, kv_shapes[(rank - step - 1) % world]))
        note_flops(q, k, v, group, setup)
        out, lse = out.to(q.dtype), lse.to(lse_dtype(q))
        ctx.group, ctx.setup = group, setup
        ctx.save_for_backward(q, k, v, out, lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        group, (is_causal, scale, layout, backend, kv_shapes) = ctx.group, ctx.setup
        world, rank = group.world, group.rank
        compute = compute_dtype(q)
        dout = torch.zeros_like(out, dtype=compute) if dout is None else dout.to(compute)
        dlse = torch.zeros_like(lse, dtype=compute) if dlse is None else dlse.to(compute)
        lse_c, out_c = lse.to(compute), out.to(compute)
        dq = torch.zeros(q.shape, dtype=compute, device=q.device)
        block = (k, v, torch.zeros(k.shape, dtype=compute, device=k.device),
                 torch.zeros(v.shape, dtype=compute, device=v.device))
        for step in range(world):
            src = (rank - step) % world
            bk, bv, dk, dv = block
            for q_lo, q_hi, kv_lo, kv_hi, causal in ring_blocks(rank, src, q.shape[1], bk.shape[1], is_causal, layout):
                with comm.timed("compute"):
                    grads = _block_grads(q[:, q_lo:q_hi], bk[:, kv_lo:kv_hi], bv[:, kv_lo:kv_hi], causal, scale,
                                         backend, out_c[:, q_lo:q_hi], lse_c[:, q_lo:q_hi], dout[:, q_lo:q_hi],
                                         dlse[:, q_lo:q_hi])
                dq[:, q_lo:q_hi] += grads[0]
                dk[:, kv_lo:kv_hi] += grads[1]
                dv[:, kv_lo:kv_hi] += grads[2]
            # The block's gradients go on with it; after the last step they reach their owner.
            if world > 1:
                block = _pass_on(group, step, block, kv_shapes, compute)
            else:
                block = (dk, dv)
        dk, dv = block
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


def _pass_on(group, step, block, kv_shapes, compute):
    """Send (k, v, dk, dv) of the held block to the next rank, receive the previous rank's; at the last
    step only the gradients travel, to the block's owner, and (dk, dv) of this rank's own block is returned."""
    world, rank = group.world, group.rank
    last = step == world - 1
    k, v, dk, dv = block
    shapes = kv_shapes[(rank - step - 1) % world]
    grads = torch.empty(sum(torch.Size(s).numel() for s in shapes), dtype=compute, device=k.device)
    sends, recvs = [((rank + 1) % world, comm.pack((dk, dv)), 1)], [((rank - 1) % world, grads, 1)]
    if not last:
        values = torch.empty(grads.numel(), dtype=k.dtype, device=k.device)
        sends.append(((rank + 1) % world, comm.pack((k, v)), 0))
        recvs.append(((rank - 1) % world, values, 0))
    comm.post(group, sends, recvs).wait()
    grads = comm.unpack(grads, shapes)
    return tuple(grads) if last else (*comm.unpack(values, shapes), *grads)


def _merge(out, lse, o, l):
    return merge_lse([out, o.to(out.dtype)], [lse, l.to(lse.dtype)])


def _block_grads(q, k, v, causal, scale, backend, out, lse, dout, dlse):
    """(dq, dk, dv) of one block's share of the merged result: the block recomputed and differentiated.

    With ``out = sum_i w_i o_i``, ``w_i = exp(lse_i - lse)``: ``dL/do_i = w_i dout`` and
    ``dL/dlse_i = w_i (dout . (o_i - out) + dlse)``.
    """
    with torch.enable_grad():
        qb, kb, vb = (t.detach().requires_grad_() for t in (q, k, v))
        o, l = attention(qb, kb, vb, causal, scale, True, backend)
        o_c, l_c = o.to(out.dtype), l.to(out.dtype)
        w = torch.where(torch.isfinite(lse), torch.exp(l_c - lse), torch.zeros_like(lse))
        d_o = w[..., None] * dout
        d_l = w * ((dout * (o_c - out)).sum(-1) + dlse)
        return torch.autograd.grad((o, l), (qb, kb, vb), (d_o.to(o.dtype), d_l.to(l.dtype)))


def note_flops(q, k, v, group, setup):
    is_causal, _, layout, _, _ = setup
    comm.note(attention_flops=ring_flops(group.rank, group.world, q.shape[1], k.shape[1], is_causal, layout,
                                         q.shape[0], q.shape[2], q.shape[3], v.shape[3]))


def ring_attention(q, k, v, is_causal=False, scale=None, return_lse=False, group=None, layout="zigzag",
                   backend=None):
    """Full softmax attention over a sequence sharded across the ranks of a process group (ring attention).

    Shapes:
        q: [B, T_q_local, H_q, D_qk]   k: [B, T_kv_local, H_kv, D_qk]   v: [B, T_kv_local, H_kv, D_v]
        out: [B, T_q_local, H_q, D_v]   lse: [B, T_q_local, H_q]
        H_q a multiple of H_kv (GQA). Local lengths may differ between ranks (``layout="contiguous"``).

    The result on each rank is its rows of ``glocal.attention`` over the whole sequence: non-causal
    (self or cross: every local query against every key of every rank), or causal self attention
    with the sequence laid out by ``layout`` (as :func:`glocal.distributed.shard` lays it out):
    ``"zigzag"`` (default: rank r holds chunks r and 2 x world - 1 - r of 2 x world, so every rank
    scores the same number of query-key pairs) or ``"contiguous"`` (rank r holds the r-th slab).
    Gradients of q, k, v are this rank's rows of the single-process gradients.

    Args:
        is_causal, scale, return_lse: as :func:`glocal.attention`.
        group: the process group (None: the default group).
        layout: how the causal sequence is sharded: "zigzag" or "contiguous" (ignored when non-causal).
        backend: the single-device backend each rank uses (None: the fastest that can run).

    Example (run under torchrun or torch.multiprocessing with an initialised group):
        >>> import torch, glocal.distributed as gd                          # doctest: +SKIP
        >>> x = gd.shard(torch.randn(1, 4096, 8, 64), dim=1, layout="zigzag")  # doctest: +SKIP
        >>> gd.ring_attention(x, x, x, is_causal=True).shape                # doctest: +SKIP
        torch.Size([1, 1024, 8, 64])  # on each of 4 ranks
    """
    grp = comm.Group(group)

    def local_checks():
        checks.sequence_tensors(q, k, v)
        checks.causal_flag(is_causal)
        checks.scale(scale)
        dist_checks.layout(layout)
        dist_checks.causal_self(is_causal, q.shape[1], k.shape[1], "ring attention")

    _, error = comm.capture(local_checks)
    meta = None if error else {
        "q_len": q.shape[1], "kv_shapes": (tuple(k.shape), tuple(v.shape)),
        "shapes": (q.shape[0], q.shape[2:], k.shape[2:], v.shape[2:]), "dtype": str(q.dtype),
        "options": (is_causal, scale, layout, bool(return_lse)),
        "requires_grad": (q.requires_grad, k.requires_grad, v.requires_grad),
    }
    metas = comm.agree(grp, meta, error, per_rank=("q_len", "kv_shapes"))
    for key, what in (("shapes", "batch, heads and head dims of q, k and v"), ("dtype", "dtype"),
                      ("options", "options (is_causal, scale, layout, return_lse)"),
                      ("requires_grad", "requires_grad of q, k and v")):
        dist_checks.same_on_ranks(what, [m[key] for m in metas])
    if is_causal and layout == "zigzag":
        dist_checks.zigzag_lengths([m["q_len"] for m in metas])
    scale = resolve_scale(scale, q.shape[-1] ** -0.5)
    kv_shapes = [m["kv_shapes"] for m in metas]
    out, lse = _Ring.apply(q, k, v, grp, (bool(is_causal), scale, layout, backend, kv_shapes))
    return (out, lse) if return_lse else out
