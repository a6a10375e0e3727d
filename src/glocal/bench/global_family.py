"""Benchmark family ``global``: causal linear attention vs causal dense SDPA, and decoding.

CPU, float32, batch 1, 4 heads, head dim 64 (the issue's setting). Rows:

- ``prefill`` at T = 4096, 16384, 65536 (quick: 1024, 4096): causal linear attention (chunked,
  glocal.linear_attention), non-causal linear attention, causal dense SDPA
  (torch.nn.functional.scaled_dot_product_attention; skipped above 16384 tokens, where one call
  takes tens of seconds on a CPU), and the peak memory each allocates beyond its inputs and output.
- ``decode``: 1,000 tokens (quick: 100) generated one at a time with linear_attention_step, vs
  re-running the causal forward over the whole prefix at every step. The re-run baseline is timed
  on every 50th step (quick: every 10th) and scaled by that stride; the row says so.

Every ratio is measured in the same process, one after the other (DESIGN.md §5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops import linear_attention, linear_attention_step
from .timing import matmul_gflops, median_ms, peak_cpu_bytes

HEADS, HEAD_DIM = 4, 64
SDPA_MAX_T = 16384
MIB = 2 ** 20


def _inputs(t: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, t, HEADS, HEAD_DIM, generator=gen) for _ in range(3)]


def _prefill_row(t: int, repeats: int, gflops: float) -> dict:
    q, k, v = _inputs(t)
    out_bytes = t * HEADS * HEAD_DIM * 4
    causal = lambda: linear_attention(q, k, v, is_causal=True)  # noqa: E731
    noncausal = lambda: linear_attention(q, k, v)  # noqa: E731
    row = {
        "family": "global", "case": "prefill", "T": t,
        "causal_linear_ms": median_ms(causal, repeats, 1),
        "noncausal_linear_ms": median_ms(noncausal, repeats, 1),
        "causal_linear_extra_mib": (peak_cpu_bytes(causal) - out_bytes) / MIB,
        "causal_sdpa_ms": None, "causal_sdpa_extra_mib": None,
    }
    if t <= SDPA_MAX_T:
        qh, kh, vh = (x.transpose(1, 2).contiguous() for x in (q, k, v))
        sdpa = lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)  # noqa: E731
        row["causal_sdpa_ms"] = median_ms(sdpa, max(1, min(repeats, 3)), 1)
        row["causal_sdpa_extra_mib"] = (peak_cpu_bytes(sdpa) - out_bytes) / MIB
    # FLOP floor: building the state and reading it, 2 * D_k * D_v each per token and head, the
    # least any linear-attention algorithm does (the in-chunk scores come on top).
    row["floor_ms"] = 4 * t * HEADS * HEAD_DIM * HEAD_DIM / (gflops * 1e9) * 1e3
    row["floor_fraction"] = row["floor_ms"] / row["causal_linear_ms"]
    row["speedup_vs_sdpa"] = (row["causal_sdpa_ms"] / row["causal_linear_ms"]) if row["causal_sdpa_ms"] else None
    row["causal_over_noncausal"] = row["causal_linear_ms"] / row["noncausal_linear_ms"]
    return row


def _decode_row(steps: int, stride: int, repeats: int) -> dict:
    q, k, v = _inputs(steps, seed=1)

    def decode():
        state = None
        for t in range(steps):
            _, state = linear_attention_step(q[:, t], k[:, t], v[:, t], state)

    def rerun_sampled():
        # Re-running the causal forward over the prefix at step t costs O(t); time every
        # stride-th step and scale by the stride to estimate all steps.
        for t in range(stride - 1, steps, stride):
            linear_attention(q[:, :t + 1], k[:, :t + 1], v[:, :t + 1], is_causal=True)

    step_ms = median_ms(decode, repeats, 1)
    rerun_ms = median_ms(rerun_sampled, max(1, min(repeats, 3)), 1) * stride
    return {
        "family": "global", "case": "decode", "T": steps, "step_decode_ms": step_ms,
        "rerun_forward_ms": rerun_ms, "rerun_sampled_every": stride, "speedup_vs_rerun": rerun_ms / step_ms,
    }


def run(repeats: int, quick: bool) -> list[dict]:
    """Measure the family; one dict per row (see the module docstring)."""
    with torch.no_grad():
        lengths = (1024, 4096) if quick else (4096, 16384, 65536)
        gflops = matmul_gflops(torch.float32, repeats)
        rows = [_prefill_row(t, repeats, gflops) for t in lengths]
        rows.append(_decode_row(100, 10, repeats) if quick else _decode_row(1000, 50, repeats))
    return rows


def _fmt(x, digits=1):
    return "n/a" if x is None else f"{x:.{digits}f}"


def format_table(rows) -> str:
    """The family's rows as a plain-text table."""
    lines = [f"global family: CPU float32, batch 1, {HEADS} heads, head dim {HEAD_DIM}",
             f"{'T':>7} {'causal lin ms':>14} {'non-causal ms':>14} {'causal SDPA ms':>15} "
             f"{'x vs SDPA':>10} {'causal/nc':>10} {'lin extra MiB':>14} {'SDPA extra MiB':>15} "
             f"{'floor ms':>9} {'of floor':>9}"]
    for r in rows:
        if r["case"] != "prefill":
            continue
        lines.append(f"{r['T']:>7} {_fmt(r['causal_linear_ms']):>14} {_fmt(r['noncausal_linear_ms']):>14} "
                     f"{_fmt(r['causal_sdpa_ms']):>15} {_fmt(r['speedup_vs_sdpa']):>10} "
                     f"{_fmt(r['causal_over_noncausal'], 2):>10} {_fmt(r['causal_linear_extra_mib'], 2):>14} "
                     f"{_fmt(r['causal_sdpa_extra_mib'], 2):>15} {_fmt(r['floor_ms'], 2):>9} "
                     f"{r['floor_fraction']:>9.0%}")
    for r in rows:
        if r["case"] == "decode":
            lines.append(
                f"decode {r['T']} tokens: linear_attention_step {r['step_decode_ms']:.1f} ms, re-running the causal "
                f"forward each step {r['rerun_forward_ms']:.1f} ms (timed every {r['rerun_sampled_every']}th step, "
                f"scaled), {r['speedup_vs_rerun']:.1f}x")
    lines.append("extra MiB: peak allocation during the call minus its output (inputs are allocated before it).")
    lines.append("floor: 4 * T * H * D^2 FLOPs (state build + readout) at the measured 1024^2 sgemm rate; "
                 "'of floor' = floor / causal linear time.")
    return "\n".join(lines)
