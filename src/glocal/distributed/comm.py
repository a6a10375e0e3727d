"""The traffic of glocal.distributed over torch.distributed: agreement between ranks, point-to-point
messages, collectives, and a per-rank record of bytes sent and time spent.

Everything here runs on the process group the caller passes (``None``: the default group), with
the backend it was created with (gloo on CPUs, NCCL on GPUs). Messages with no elements are not
sent; both sides know every size in advance (from :func:`agree`), so none is waited for.

Example (inside an initialised process group):
    >>> import glocal.distributed as gd                                    # doctest: +SKIP
    >>> with gd.traffic() as record:                                       # doctest: +SKIP
    ...     out = gd.neighborhood_attention(q, k, v, kernel_size=7)
    >>> record.bytes_sent, record.comm_seconds                             # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from contextvars import ContextVar
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from ..checks import distributed as dist_checks


@dataclass
class Traffic:
    """What this rank did inside a :func:`traffic` block.

    bytes_sent: payload bytes this rank sent (point-to-point, and its share of collectives:
        (world - 1) x its input for an all-gather); messages: point-to-point sends;
    comm_seconds: time blocked waiting on communication (what overlap did not hide);
    compute_seconds: time in attention kernels; attention_flops: 2 x (D_qk + D_v) x heads x batch
    x the query-key pairs this rank's kernels scored (ring attention; the balance of causal work).
    """

    bytes_sent: int = 0
    messages: int = 0
    comm_seconds: float = 0.0
    compute_seconds: float = 0.0
    attention_flops: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


_RECORD: ContextVar[Traffic | None] = ContextVar("glocal_distributed_traffic", default=None)


@contextlib.contextmanager
def traffic():
    """Record this rank's traffic and time inside the block; yields the :class:`Traffic` being filled."""
    record = Traffic()
    token = _RECORD.set(record)
    try:
        yield record
    finally:
        _RECORD.reset(token)


def note(**amounts) -> None:
    record = _RECORD.get()
    if record is not None:
        for name, amount in amounts.items():
            setattr(record, name, getattr(record, name) + amount)


@contextlib.contextmanager
def timed(kind: str):
    """Add the block's wall time to ``comm_seconds`` or ``compute_seconds`` of the active record."""
    if _RECORD.get() is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        note(**{f"{kind}_seconds": time.perf_counter() - start})


class Group:
    """This rank's place in a process group (``None``: the default group)."""

    def __init__(self, group=None):
        dist_checks.process_group(dist.is_available(), dist.is_available() and dist.is_initialized())
        self.handle = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        # Where this group's small collectives live: NCCL takes only tensors on this process's GPU.
        nccl = dist.get_backend(group) == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def global_rank(self, rank: int) -> int:
        return rank if self.handle is None else dist.get_global_rank(self.handle, rank)


def capture(check):
    """Run ``check()``; return ``(result, None)``, or ``(None, error)`` when it refused (ValueError/TypeError)."""
    try:
        return check(), None
    except (ValueError, TypeError) as err:
        return None, err


# What one small int64 all-gather of agree() carries per rank: a status, the fingerprint of the part of
# the description that must match (2 ints), the count of per-rank ints and up to _OWN_INTS of them.
_OWN_INTS = 16


def _ints(value):
    """The ints of an int or a nested tuple of ints (lengths, shapes), flattened; None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, (tuple, list)):
        out = []
        for item in value:
            ints = _ints(item)
            if ints is None:
                return None
            out += ints
        return out
    return None


def _rebuild(template, ints: list):
    """``template``'s structure (from :func:`_ints`) filled with ``ints`` in order (consumed from the front)."""
    if isinstance(template, int):
        return ints.pop(0)
    return tuple(_rebuild(item, ints) for item in template)


def _fingerprint(value) -> list[int]:
    """Two int64 of a hash of ``repr(value)``, the same in every process (Python's hash() is not)."""
    digest = hashlib.blake2b(repr(value).encode(), digest_size=16).digest()
    return [int.from_bytes(digest[:8], "little", signed=True), int.from_bytes(digest[8:], "little", signed=True)]


def agree(group: Group, meta, error: BaseException | None, per_rank: tuple = ()) -> list:
    """Exchange every rank's description of its input (and its own checks' verdict); returns one per rank.

    ``meta``: None, a tuple, or a dict whose keys in ``per_rank`` may differ between ranks (ints or
    tuples of ints: local lengths and shapes); everything else is expected to be the same on every rank
    (the caller checks it on what this returns, so a mismatch gets its message). When any rank's checks
    refused its input, every rank raises: that rank its own error, the others an error naming it. So a
    bad input on one rank never leaves the others waiting.

    The usual case, no refusal and the shared part the same everywhere, costs one all-gather of a few
    int64 (the shared part compared by a fingerprint); any other case takes a pickled exchange of the
    whole descriptions (``all_gather_object``, two collectives), which the error messages quote.
    """
    shared = {k: v for k, v in meta.items() if k not in per_rank} if isinstance(meta, dict) else meta
    own = tuple(meta[k] for k in per_rank) if isinstance(meta, dict) else ()
    ints = None if error is not None else _ints(own)
    status = 1 if error is not None else 2 if ints is None or len(ints) > _OWN_INTS else 0
    ints = ints if status == 0 else []
    structure = repr(_rebuild(own, [0] * len(ints))) if status == 0 else ""
    row = [status, *_fingerprint((shared, structure)), len(ints), *ints, *[0] * (_OWN_INTS - len(ints))]
    mine = torch.tensor(row, dtype=torch.int64, device=group.device)
    rows = [torch.empty_like(mine) for _ in range(group.world)]
    with timed("comm"):
        dist.all_gather(rows, mine, group=group.handle)
        rows = [r.tolist() for r in rows]
    if all(r[0] == 0 and r[1:3] == row[1:3] for r in rows):
        return [dict(meta, **dict(zip(per_rank, _rebuild(own, r[4:4 + r[3]])))) if isinstance(meta, dict) else meta
                for r in rows]
    gathered = [None] * group.world
    payload = (meta, None if error is None else (type(error).__name__, str(error)))
    with timed("comm"):
        dist.all_gather_object(gathered, payload, group=group.handle)
    for rank, (_, refusal) in enumerate(gathered):
        if refusal is not None:
            if rank == group.rank:
                raise error
            raise dist_checks.rank_refused(rank, group.world, refusal[1])
    return [m for m, _ in gathered]


class Pending:
    """Posted point-to-point messages; :meth:`wait` blocks until all are done (counted as communication)."""

    def __init__(self, works, keep):
        self.works, self.keep = works, keep

    def wait(self) -> None:
        with timed("comm"):
            for work in self.works:
                work.wait()
        self.works, self.keep = [], []


def post(group: Group, sends, recvs) -> Pending:
    """Post ``sends`` (``(dst, tensor[, tag])``) and ``recvs`` (``(src, buffer[, tag])``, filled in place).

    Empty messages are skipped (both sides know every size). Two messages between one pair of ranks in
    one call need distinct tags, and (for NCCL, which matches by order, not tag) the same order on both
    sides. All are posted as one batch: NCCL runs a pair's messages in one stream, so a receive posted
    alone before its own rank's send would wait forever for a peer doing the same."""
    ops, keep = [], []
    for src, buffer, *tag in recvs:
        if buffer.numel():
            ops.append(dist.P2POp(dist.irecv, buffer, group.global_rank(src), group.handle, tag[0] if tag else 0))
    for dst, tensor, *tag in sends:
        if tensor.numel():
            tensor = tensor.contiguous()
            keep.append(tensor)  # alive until the send completes
            ops.append(dist.P2POp(dist.isend, tensor, group.global_rank(dst), group.handle, tag[0] if tag else 0))
            note(bytes_sent=tensor.numel() * tensor.element_size(), messages=1)
    return Pending(dist.batch_isend_irecv(ops) if ops else [], keep)


def all_gather(group: Group, x: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``x`` (one shape on every rank), in rank order."""
    x = x.contiguous()
    out = [torch.empty_like(x) for _ in range(group.world)]
    note(bytes_sent=(group.world - 1) * x.numel() * x.element_size())
    with timed("comm"):
        dist.all_gather(out, x, group=group.handle)
    return out


def pack(tensors) -> torch.Tensor:
    """One flat message from several tensors of one dtype."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unpack(flat: torch.Tensor, shapes) -> list[torch.Tensor]:
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    return [piece.view(shape) for piece, shape in zip(flat.split(sizes), shapes)]


class Replicated(torch.autograd.Function):
    """A tensor every rank holds the same copy of (extra tokens, an initial state): the identity forward;
    backward sums the gradient over ranks, so each rank's gradient is the single-process one."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        note(bytes_sent=2 * (ctx.group.world - 1) * grad.numel() * grad.element_size() // ctx.group.world)
        with timed("comm"):
            dist.all_reduce(grad, group=ctx.group.handle)
        return grad, None


def replicated(x, group: Group):
    """``x`` marked as the same on every rank (see :class:`Replicated`); None and no-grad tensors pass through."""
    if x is None or not x.requires_grad or group.world == 1:
        return x
    return Replicated.apply(x, group)
