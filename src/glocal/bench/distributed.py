"""``glocal bench --suite distributed``: context-parallel attention on 2 and 4 gloo processes of this machine.

For each world size the suite spawns that many processes (``glocal.distributed.launch.run_local``,
one gloo group over loopback) and measures, per op, on every rank:

- bytes sent by the rank (the op's own record, ``glocal.distributed.traffic``) against what a full
  all-gather of the keys and values would send: (world - 1) x the rank's local k and v;
- wall time per call (median of ``repeats``, ranks released together by a barrier), split into
  compute (the attention kernels), communication (time blocked waiting on messages: what overlap
  did not hide) and the rest (slicing, packing, merging); and the time of that all-gather itself;
- for causal ring attention, the attention FLOPs per rank and the measured compute time per rank
  (busiest / least busy), with the load-balanced zigzag layout and the contiguous one;
- the same op on one process over the whole input, with one rank's threads, for scale.

Ops: neighborhood attention on a 2-D grid sharded by rows (256 x 256, K = 7, the issue's
configuration); causal ring attention over 4096 tokens; causal linear attention over 4096 and
16384 tokens (its bytes do not depend on the length). Float32, 4 heads of 32 (``--quick``: small
shapes, a smoke test). On a 2-core machine 4 ranks share 2 cores: times there show the protocol,
not a speedup.

Example:
    >>> from glocal.bench import distributed
    >>> rows = distributed.run(quick=True, worlds=(2,))   # doctest: +SKIP
    >>> print(distributed.format_table(rows))             # doctest: +SKIP
"""

from __future__ import annotations

import os
import statistics
import time

import torch
import torch.distributed as dist

import glocal
import glocal.distributed as gd
from glocal.distributed import comm
from glocal.distributed.launch import run_local

HEADS, HEAD_DIM = 4, 32
WORLDS = (2, 4)


def cases(quick: bool) -> list[dict]:
    """The problems every world size runs (the same list on every rank)."""
    if quick:
        return [dict(op="neighborhood", grid=(32, 32), kernel=7, heads=2, dim=16),
                dict(op="ring", length=256, layout="zigzag", heads=2, dim=16),
                dict(op="ring", length=256, layout="contiguous", heads=2, dim=16),
                dict(op="linear", length=256, heads=2, dim=16), dict(op="linear", length=1024, heads=2, dim=16)]
    return [dict(op="neighborhood", grid=(256, 256), kernel=7, heads=HEADS, dim=HEAD_DIM),
            dict(op="ring", length=4096, layout="zigzag", heads=HEADS, dim=HEAD_DIM),
            dict(op="ring", length=4096, layout="contiguous", heads=HEADS, dim=HEAD_DIM),
            dict(op="linear", length=4096, heads=HEADS, dim=HEAD_DIM),
            dict(op="linear", length=16384, heads=HEADS, dim=HEAD_DIM)]


def _describe(case: dict) -> str:
    if case["op"] == "neighborhood":
        return f"NA 2-D {case['grid'][0]}x{case['grid'][1]} K={case['kernel']}, rows sharded"
    if case["op"] == "ring":
        return f"ring causal T={case['length']} {case['layout']}"
    return f"linear causal T={case['length']}"


def _problem(case: dict, world: int):
    """``(full q, k, v, sharded call, single-process call)``, the full tensors the same on every rank."""
    gen = torch.Generator().manual_seed(0)
    h, d = case["heads"], case["dim"]
    if case["op"] == "neighborhood":
        shape = (1, *case["grid"], h, d)
    else:
        shape = (1, case["length"], h, d)
    q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
    if case["op"] == "neighborhood":
        def sharded(q, k, v):
            return gd.neighborhood_attention(q, k, v, kernel_size=case["kernel"])

        def single(q, k, v):
            return glocal.neighborhood_attention(q, k, v, kernel_size=case["kernel"])
        layout = "contiguous"
    elif case["op"] == "ring":
        layout = case["layout"]

        def sharded(q, k, v):
            return gd.ring_attention(q, k, v, is_causal=True, layout=layout)

        def single(q, k, v):
            return glocal.attention(q, k, v, is_causal=True)
    else:
        layout = "contiguous"

        def sharded(q, k, v):
            return gd.linear_attention(q, k, v, is_causal=True)

        def single(q, k, v):
            return glocal.linear_attention(q, k, v, is_causal=True)
    return (q, k, v), layout, sharded, single


def _timed(call, repeats: int, backward: bool):
    """Median call (by wall time) as ``(wall_s, Traffic)``; every call starts with all ranks at a barrier."""
    samples = []
    for i in range(repeats + 1):  # the first call warms up
        dist.barrier()
        with gd.traffic() as record:
            start = time.perf_counter()
            out = call()
            if backward:
                out.sum().backward()
            wall = time.perf_counter() - start
        if i:
            samples.append((wall, record))
    samples.sort(key=lambda s: s[0])
    return samples[len(samples) // 2]


def _rank(rank: int, world: int, quick: bool, repeats: int) -> list[dict]:
    os.environ.pop("TRITON_INTERPRET", None)
    rows = []
    for case in cases(quick):
        (q, k, v), layout, sharded, single = _problem(case, world)
        local = [gd.shard(t, 1, layout=layout) for t in (q, k, v)]
        row = {"case": _describe(case), **case, "world": world, "rank": rank, "threads": torch.get_num_threads()}
        for mode, backward in (("forward", False), ("forward+backward", True)):
            inputs = [t.detach().requires_grad_(backward) for t in local]
            wall, record = _timed(lambda: sharded(*inputs), repeats, backward)
            row[mode] = {"wall_ms": 1e3 * wall, **record.as_dict()}
        packed = comm.pack([local[1], local[2]])
        group = comm.Group()
        wall, _ = _timed(lambda: comm.all_gather(group, packed), repeats, False)
        row["allgather"] = {"bytes_sent": (world - 1) * packed.numel() * packed.element_size(), "wall_ms": 1e3 * wall}
        # The whole problem on one process (rank 0; the others wait), with one rank's threads.
        dist.barrier()
        if rank == 0:
            times = []
            for i in range(repeats + 1):
                start = time.perf_counter()
                with torch.no_grad():
                    single(q, k, v)
                if i:
                    times.append(time.perf_counter() - start)
            row["single_ms"] = 1e3 * statistics.median(times)
        dist.barrier()
        rows.append(row)
    return rows


def run(quick: bool = False, worlds=WORLDS, repeats: int | None = None, progress=None) -> list[dict]:
    """One summary row per (world size, case); see the module docstring."""
    repeats = repeats or (2 if quick else 5)
    rows = []
    for i, world in enumerate(worlds):
        if progress:
            progress(i, len(worlds))
        per_rank = run_local(_rank, world, (quick, repeats), timeout=900)
        for c in range(len(per_rank[0])):
            rows.append(_summary([ranks[c] for ranks in per_rank]))
    if progress:
        progress(len(worlds), len(worlds))
    return rows


def _summary(ranks: list[dict]) -> dict:
    """The slowest rank's times (the critical path), the largest bytes, and the balance over ranks."""
    first = ranks[0]
    row = {k: first[k] for k in ("case", "op", "world", "threads")}
    row["single_ms"] = first["single_ms"]
    for mode in ("forward", "forward+backward"):
        slowest = max(ranks, key=lambda r: r[mode]["wall_ms"])[mode]
        compute = [1e3 * r[mode]["compute_seconds"] for r in ranks]
        row[mode] = {
            "wall_ms": slowest["wall_ms"], "compute_ms": 1e3 * slowest["compute_seconds"],
            "comm_ms": 1e3 * slowest["comm_seconds"],
            "bytes_sent": max(r[mode]["bytes_sent"] for r in ranks),
            "bytes_by_rank": [r[mode]["bytes_sent"] for r in ranks],
            "messages": max(r[mode]["messages"] for r in ranks),
            "compute_balance": max(compute) / max(min(compute), 1e-9),
        }
        flops = [r[mode]["attention_flops"] for r in ranks]
        if min(flops) > 0:
            row[mode]["flops_by_rank"] = flops
            row[mode]["flops_balance"] = max(flops) / min(flops)
    row["allgather_bytes"] = max(r["allgather"]["bytes_sent"] for r in ranks)
    row["allgather_ms"] = max(r["allgather"]["wall_ms"] for r in ranks)
    if first["op"] == "neighborhood":  # the unit: rows of keys and values of the grid
        row["row_bytes"] = first["grid"][1] * first["heads"] * first["dim"] * 4
    return row


def _mib(n: float) -> str:
    return f"{n / 2 ** 20:.3f}" if n < 2 ** 20 else f"{n / 2 ** 20:.1f}"


def format_table(rows: list[dict]) -> str:
    header = ["ranks", "case", "sent MiB/rank", "all-gather MiB", "x less", "msgs", "fwd ms", "compute", "comm",
              "fwd+bwd ms", "comm", "1-proc fwd ms", "FLOP max/min", "compute max/min"]
    lines = [header]
    for r in rows:
        f, fb = r["forward"], r["forward+backward"]
        lines.append([str(r["world"]), r["case"], _mib(f["bytes_sent"]), _mib(r["allgather_bytes"]),
                      f"{r['allgather_bytes'] / max(f['bytes_sent'], 1):.0f}", str(f["messages"]),
                      f"{f['wall_ms']:.1f}", f"{f['compute_ms']:.1f}", f"{f['comm_ms']:.1f}", f"{fb['wall_ms']:.1f}",
                      f"{fb['comm_ms']:.1f}", f"{r['single_ms']:.1f}",
                      f"{f['flops_balance']:.2f}" if "flops_balance" in f else "-", f"{f['compute_balance']:.2f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.rjust(w) if i != 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
           for line in lines]
    notes = []
    for r in rows:
        if "row_bytes" in r:
            rows_sent, messages = r["forward"]["bytes_sent"] / (2 * r["row_bytes"]), r["forward"]["messages"]
            notes.append(f"{r['world']} ranks, {r['case']}: the busiest rank sends {rows_sent:.0f} rows of keys and "
                         f"values in {messages} message{'s' if messages != 1 else ''} (one per neighbour, "
                         f"{rows_sent / messages:.0f} rows each)")
    if any(r["op"] == "linear" for r in rows):
        notes.append("msgs counts point-to-point messages; linear attention's one state per rank travels in one "
                     "all-gather")
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out + [""] + notes)


def plot(rows: list[dict], path: str) -> None:
    """Forward time per case and world size, split into compute, communication and the rest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['case']}\n{r['world']} ranks" for r in rows]
    compute = [r["forward"]["compute_ms"] for r in rows]
    comm_ms = [r["forward"]["comm_ms"] for r in rows]
    rest = [max(0.0, r["forward"]["wall_ms"] - c - m) for r, c, m in zip(rows, compute, comm_ms)]
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(rows)), 4.5))
    xs = range(len(rows))
    ax.bar(xs, compute, label="compute")
    ax.bar(xs, comm_ms, bottom=compute, label="communication (waited)")
    ax.bar(xs, rest, bottom=[c + m for c, m in zip(compute, comm_ms)], label="rest")
    ax.scatter(xs, [r["single_ms"] for r in rows], color="k", marker="_", s=400, label="one process, whole input")
    ax.set_xticks(list(xs), labels, fontsize=6, rotation=30, ha="right")
    ax.set_ylabel("forward ms (slowest rank)")
    ax.set_title("glocal.distributed on gloo, one machine")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
