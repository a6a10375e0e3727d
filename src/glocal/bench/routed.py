"""Benchmark family ``routed``: block-routed (MoBA, VMoBA), RAT, Parallax and LLA against dense SDPA.

CPU, float32, batch 1, 4 heads, head dim 64. Each row times one glocal op and its dense baseline
(``torch.nn.functional.scaled_dot_product_attention`` on [B, H, T, D], causal when the op is) in
turns in one process (``timing.interleaved_ms``: median of the repeats), forward and, where the
issue asks, forward+backward. Rows and their targets (the ratio baseline / glocal):

| row | glocal | baseline | target |
|---|---|---|---|
| ``moba`` | moba_attention, causal, T=16384, block 512, top_k 3 | causal SDPA | fwd >= 4x, f+b >= 3x |
| ``moba decode`` | one query over a 65,536-token cache, block 512, top_k 3, block means given | SDPA of that query over the same heads-last cache | >= 10x |
| ``decode copy`` | the same | SDPA over a heads-first contiguous copy of the cache, made outside the timing (dense's best layout) | none (shown) |
| ``vmoba 3-D`` | moba_attention_nd, 16x32x32, block (4, 8, 8), top_k 4 | SDPA over the 16,384 tokens | fwd >= 4x |
| ``rat`` | rat_attention, chunk 16, T=16384 | causal SDPA | fwd >= 3x |
| ``parallax`` | parallax_attention, causal, T=16384, window 512 | causal SDPA | fwd >= 3x |
| ``lla`` | local_linear_attention, causal, T=4096, window 128 | causal SDPA | none (timed) |

``--quick`` shrinks every size (a smoke test; its ratios mean little). The FLOP floor of a row is its
useful FLOPs (attended (query, key) pairs, summed over heads, times the FLOPs one pair costs: 2·(D_qk
+ D_v) for a softmax over keys, 2·(3·D_qk + 2·D_v) for Parallax's three key products and two value
products, plus 2·D_qk² per pair and D_qk³/3 per query for LLA's covariance and solve; times 3.5
forward+backward) over the best of several 1024² sgemm timings; "% floor" is floor / glocal time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..masks import block_means, block_selection, query_blocks
from ..ops import (
    local_linear_attention,
    moba_attention,
    moba_attention_nd,
    moba_selection,
    parallax_attention,
    rat_attention,
)
from .timing import fmt, interleaved_ms, matmul_gflops, peak_cpu_bytes

HEADS, HEAD_DIM = 4, 64
MIB = 2 ** 20

FULL = dict(moba_t=16384, moba_block=512, moba_k=3, decode_t=65536, vmoba_grid=(16, 32, 32), vmoba_block=(4, 8, 8),
            vmoba_k=4, rat_t=16384, rat_chunk=16, parallax_t=16384, parallax_window=512, lla_t=4096, lla_window=128)
QUICK = dict(moba_t=1024, moba_block=128, moba_k=3, decode_t=4096, vmoba_grid=(4, 8, 8), vmoba_block=(2, 4, 4),
             vmoba_k=4, rat_t=1024, rat_chunk=16, parallax_t=1024, parallax_window=128, lla_t=512, lla_window=32)
TARGETS = {"moba": (4.0, 3.0), "moba decode": (10.0, None), "decode copy": (None, None), "vmoba 3-D": (4.0, None),
           "rat": (3.0, None), "parallax": (3.0, None), "lla": (None, None)}


def _randn(*shape, seed: int, grad: bool = False) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x.requires_grad_(grad)


def _qkv(t: int, seed: int, grad: bool = False):
    return [_randn(1, t, HEADS, HEAD_DIM, seed=seed + i, grad=grad) for i in range(3)]


def _sdpa(q, k, v, causal: bool):
    """Dense SDPA on the heads-first layout it wants (the transposes are made once, outside the timing)."""
    qh, kh, vh = (x.detach().transpose(1, 2).contiguous().requires_grad_(x.requires_grad) for x in (q, k, v))
    return lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal), (qh, kh, vh)


def _with_backward(fn, leaves):
    """fn() followed by the backward of sum(out * g) for a fixed g (the gradients are cleared each time)."""
    g = {}

    def both():
        for x in leaves:
            x.grad = None
        out = fn()
        out = out[0] if isinstance(out, tuple) else out
        if "g" not in g:
            g["g"] = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
        (out * g["g"]).sum().backward()

    return both


def _visible_pairs(selection: torch.Tensor, t_kv: int, block: int, causal: bool) -> int:
    """Attended (query, key) pairs of a 1-D routing, summed over batch and heads (exact)."""
    n_blocks, t_q = selection.shape[-1], selection.shape[-2]
    start = torch.arange(n_blocks) * block
    length = (torch.full((n_blocks,), t_kv) - start).clamp(max=block)
    if causal:
        pos = torch.arange(t_q) + (t_kv - t_q)
        visible = (pos[:, None] - start[None, :] + 1).clamp(min=0)
        visible = torch.minimum(visible, length[None, :])
    else:
        visible = length[None, :].expand(t_q, -1)
    return int((selection.long() * visible).sum())


def _row(name: str, glocal_fn, sdpa_fn, repeats: int, flops_fwd: float, gflops: float, io_bytes: int,
         backward: tuple | None = None) -> dict:
    fwd = interleaved_ms({"glocal": glocal_fn, "dense": sdpa_fn}, repeats)
    target_fwd, target_bwd = TARGETS[name]
    row = {"row": name, "glocal_ms": fwd["glocal"], "dense_ms": fwd["dense"],
           "speedup": fwd["dense"] / fwd["glocal"], "target": target_fwd,
           "useful_gflop": flops_fwd / 1e9, "floor_ms": flops_fwd / (gflops * 1e9) * 1e3,
           "glocal_bwd_ms": None, "dense_bwd_ms": None, "speedup_bwd": None, "target_bwd": target_bwd}
    row["floor_fraction"] = row["floor_ms"] / row["glocal_ms"]
    with torch.no_grad():
        row["peak_extra_mib"] = peak_cpu_bytes(glocal_fn) / MIB
    row["peak_vs_qkvo"] = row["peak_extra_mib"] * MIB / io_bytes
    if backward is not None:
        both = interleaved_ms({"glocal": backward[0], "dense": backward[1]}, max(1, repeats // 2 + 1))
        row.update(glocal_bwd_ms=both["glocal"], dense_bwd_ms=both["dense"],
                   speedup_bwd=both["dense"] / both["glocal"])
    return row


def _moba_rows(c: dict, repeats: int, gflops: float) -> list[dict]:
    t, block, top_k = c["moba_t"], c["moba_block"], c["moba_k"]
    q, k, v = _qkv(t, 0, grad=True)
    glocal = lambda: moba_attention(q, k, v, block, top_k=top_k)  # noqa: E731
    sdpa, leaves = _sdpa(q, k, v, True)
    with torch.no_grad():
        pairs = _visible_pairs(moba_selection(q, k, block, top_k=top_k), t, block, True)
    io = 4 * q.numel() * 4
    row = _row("moba", _detached(glocal), _detached(sdpa), repeats, pairs * 2 * 2 * HEAD_DIM, gflops, io,
               backward=(_with_backward(glocal, (q, k, v)), _with_backward(sdpa, leaves)))
    row["config"] = f"causal T={t}, block {block}, top_k {top_k}"

    # Decoding: one query at the end of a heads-last cache whose block means a cache keeps incrementally.
    t_cache = c["decode_t"]
    kc, vc = _randn(1, t_cache, HEADS, HEAD_DIM, seed=10), _randn(1, t_cache, HEADS, HEAD_DIM, seed=11)
    qt = _randn(1, 1, HEADS, HEAD_DIM, seed=12)
    means = block_means(kc, (block,))
    decode = lambda: moba_attention(qt, kc, vc, block, top_k=top_k, block_means=means)  # noqa: E731
    same_cache = lambda: F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (qt, kc, vc)))  # noqa: E731
    copied, _ = _sdpa(qt, kc, vc, False)
    sel = block_selection(qt, means, query_blocks((t_cache,), (block,), 1), True, top_k)
    flops = _visible_pairs(sel, t_cache, block, True) * 2 * 2 * HEAD_DIM
    io = (qt.numel() * 2 + kc.numel() * 2) * 4
    decode_rows = []
    for name, dense in (("moba decode", same_cache), ("decode copy", copied)):
        r = _row(name, decode, dense, max(repeats, 20), flops, gflops, io)
        r["config"] = f"1 query, {t_cache}-token cache, block {block}, top_k {top_k}, means given"
        decode_rows.append(r)

    grid, box, top_k = c["vmoba_grid"], c["vmoba_block"], c["vmoba_k"]
    n = grid[0] * grid[1] * grid[2]
    qg, kg, vg = (_randn(1, *grid, HEADS, HEAD_DIM, seed=20 + i) for i in range(3))
    nd = lambda: moba_attention_nd(qg, kg, vg, box, top_k=top_k)  # noqa: E731
    dense, _ = _sdpa(qg.flatten(1, 3), kg.flatten(1, 3), vg.flatten(1, 3), False)
    sel = block_selection(qg.flatten(1, 3), block_means(kg, box), query_blocks(grid, box, n), False, top_k)
    sizes = _box_sizes(grid, box)
    pairs = int((sel.long() * sizes).sum())
    row_nd = _row("vmoba 3-D", nd, dense, repeats, pairs * 2 * 2 * HEAD_DIM, gflops, 4 * qg.numel() * 4)
    row_nd["config"] = f"{'x'.join(map(str, grid))} ({n} tokens), block {box}, top_k {top_k}"
    return [row, *decode_rows, row_nd]


def _box_sizes(grid, box) -> torch.Tensor:
    """Tokens in each box of a grid (edge boxes partial), in row-major box order."""
    per_axis = [torch.tensor([min(b, length - s) for s in range(0, length, b)]) for length, b in zip(grid, box)]
    sizes = per_axis[0]
    for axis in per_axis[1:]:
        sizes = (sizes[:, None] * axis[None, :]).reshape(-1)
    return sizes


def _detached(fn):
    """fn under no_grad: a forward timing must not build a graph."""
    def call():
        with torch.no_grad():
            return fn()
    return call


def _rat_row(c: dict, repeats: int, gflops: float) -> dict:
    t, chunk = c["rat_t"], c["rat_chunk"]
    q, k, v = _qkv(t, 30, grad=True)
    gk = torch.sigmoid(_randn(1, t, HEADS, HEAD_DIM, seed=33)).requires_grad_(True)
    gv = torch.sigmoid(_randn(1, t, HEADS, HEAD_DIM, seed=34)).requires_grad_(True)
    glocal = lambda: rat_attention(q, k, v, gk, gv, chunk)  # noqa: E731
    sdpa, leaves = _sdpa(q, k, v, True)
    chunks_before = torch.arange(t) // chunk
    pairs = int((chunks_before + 1).sum()) * HEADS
    row = _row("rat", _detached(glocal), _detached(sdpa), repeats, pairs * 2 * 2 * HEAD_DIM, gflops,
               4 * q.numel() * 4, backward=(_with_backward(glocal, (q, k, v, gk, gv)), _with_backward(sdpa, leaves)))
    row["config"] = f"T={t}, chunk {chunk}"
    return row


def _window_pairs(t: int, window: int) -> int:
    """Keys of causal windows of ``window`` keys ending at each query, summed over queries and heads."""
    return int(torch.arange(1, t + 1).clamp(max=window).sum()) * HEADS


def _parallax_rows(c: dict, repeats: int, gflops: float) -> list[dict]:
    t, window = c["parallax_t"], c["parallax_window"]
    q, k, v = _qkv(t, 40, grad=True)
    r = (_randn(1, t, HEADS, HEAD_DIM, seed=43) * 0.1).requires_grad_(True)
    glocal = lambda: parallax_attention(q, r, k, v, window_size=window)  # noqa: E731
    sdpa, leaves = _sdpa(q, k, v, True)
    flops = _window_pairs(t, window) * 2 * (3 * HEAD_DIM + 2 * HEAD_DIM)
    row = _row("parallax", _detached(glocal), _detached(sdpa), repeats, flops, gflops, 5 * q.numel() * 4,
               backward=(_with_backward(glocal, (q, r, k, v)), _with_backward(sdpa, leaves)))
    row["config"] = f"causal T={t}, window {window}"

    t, window = c["lla_t"], c["lla_window"]
    q, k, v = _qkv(t, 50)
    lla = lambda: local_linear_attention(q, k, v, window_size=window)  # noqa: E731
    sdpa, _ = _sdpa(q, k, v, True)
    flops = (_window_pairs(t, window) * 2 * (3 * HEAD_DIM + 2 * HEAD_DIM + HEAD_DIM ** 2)
             + t * HEADS * HEAD_DIM ** 3 / 3)
    row_lla = _row("lla", _detached(lla), _detached(sdpa), max(1, repeats // 2), flops, gflops, 4 * q.numel() * 4)
    row_lla["config"] = f"causal T={t}, window {window}"
    return [row, row_lla]


def run(repeats: int, quick: bool, progress=None) -> list[dict]:
    """Measure the family; one dict per row (see the module docstring). ``progress(rows_done, rows)``."""
    sizes = QUICK if quick else FULL
    gflops = matmul_gflops(torch.float32, repeats)
    rows = []
    for measure in (_moba_rows, _rat_row, _parallax_rows):
        made = measure(sizes, repeats, gflops)
        rows.extend(made if isinstance(made, list) else [made])
        if progress:
            progress(len(rows), len(TARGETS))
    for row in rows:
        row["matmul_gflops"] = gflops
    return rows


def format_table(rows) -> str:
    """The family's rows as a plain-text table."""
    head = (f"{'row':12s} {'config':58s} {'glocal ms':>10s} {'dense ms':>9s} {'x dense':>8s} {'target':>7s} "
            f"{'f+b ms':>8s} {'dense f+b':>10s} {'x f+b':>6s} {'target':>7s} {'% floor':>8s} {'peak MiB':>9s} "
            f"{'x qkvo':>7s}")
    lines = [f"routed family: CPU float32, batch 1, {HEADS} heads, head dim {HEAD_DIM}", head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['row']:12s} {r['config']:58s} {r['glocal_ms']:10.2f} {r['dense_ms']:9.1f} {r['speedup']:8.1f} "
            f"{fmt(r['target']):>7s} {fmt(r['glocal_bwd_ms']):>8s} {fmt(r['dense_bwd_ms']):>10s} "
            f"{fmt(r['speedup_bwd']):>6s} {fmt(r['target_bwd']):>7s} {r['floor_fraction']:8.0%} "
            f"{r['peak_extra_mib']:9.1f} {r['peak_vs_qkvo']:7.2f}")
    lines.append("x dense = dense time / glocal time, in the same run; % floor = useful FLOPs at the measured sgemm "
                 "rate / glocal time; peak = extra memory of the glocal forward (x qkvo: over q+k+v+out).")
    return "\n".join(lines)


def plot(rows, path: str, title: str) -> None:
    """Bar chart of the speedups over dense attention (log scale), with each row's target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values, targets = [], [], []
    for r in rows:
        labels.append(r["row"] + " fwd")
        values.append(r["speedup"])
        targets.append(r["target"])
        if r["speedup_bwd"] is not None:
            labels.append(r["row"] + " f+b")
            values.append(r["speedup_bwd"])
            targets.append(r["target_bwd"])
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(range(len(values)), values, color="#2a9d8f", label="dense time / glocal time")
    marked = [(i, t) for i, t in enumerate(targets) if t is not None]
    for n, (i, t) in enumerate(marked):
        ax.plot([i - 0.4, i + 0.4], [t, t], color="#e76f51", lw=2, label="target" if n == 0 else None)
    ax.set_yscale("log")
    ax.set_xticks(range(len(values)), labels, rotation=30, ha="right")
    ax.set_ylabel("speedup over dense SDPA")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
