"""GPU suite: check the Triton kernels against the reference, then time them against FlexAttention and SDPA.

Shapes (every timed config): q, k, v: [1, *spatial, 8 heads, 128] bfloat16.

Example:
    $ PYTHONPATH=src python benchmarks/gpu.py --json gpu.json      # on a CUDA machine
    >>> import argparse, glocal.bench.gpu as gpu  # doctest: +SKIP
    >>> gpu.main(argparse.Namespace(repeats=100, quick=False, json=None))  # doctest: +SKIP

Method (DESIGN.md §5): every figure is a median of ``triton.testing.do_bench``
(device events) in one process, glocal next to compiled FlexAttention with
the same mask over row-major tokens (its native [B, H, N, D] layout, so its
transposes are not timed) and dense SDPA (causal when the config is). Useful
FLOPs count only attended (query, key) pairs: 4·D per pair forward (QK and
PV), 3.5x that forward+backward. The FLOP floor is useful FLOPs over the
measured bf16 matmul rate of the same card.

Modules: ``configs`` (what runs), ``correctness`` (the random sweep against the reference),
``timing`` (the timed table), ``report`` (the compiler's report, also offline for sm_90) and
``isolation`` (each task in a child process with a time limit). The names below are re-exported
here; ``isolation`` calls ``check``, ``matmul_tflops`` and ``time_config`` through this package,
so replacing them here (as the tests do) replaces them for the whole suite.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from ...backends import triton as triton_backend
from ...masks import attended_pairs
from . import configs
from .configs import _SMALL_1D, CONFIGS, HEAD_DIMS, VARIANTS, _random_problem
from .correctness import _rel, check
from .isolation import _child, _child_command, _options, _run_task, run_isolated
from .report import (
    _offline_target,
    _report_line,
    _resources,
    _triton_version,
    kernel_report,
    offline_report,
    print_offline,
)
from .timing import _bench, copy_gbs, matmul_tflops, print_table, time_config

# Attended (query, key) pairs of a neighborhood spec (the suite's old name for it).
_useful_pairs = attended_pairs

__all__ = [
    "CONFIGS", "VARIANTS", "HEAD_DIMS", "add_arguments", "main", "check", "time_config", "matmul_tflops", "copy_gbs",
    "print_table", "kernel_report", "offline_report", "print_offline", "run_isolated",
    "_SMALL_1D", "_random_problem", "_rel", "_useful_pairs", "_bench", "_report_line", "_resources",
    "_offline_target", "_triton_version", "_options", "_child_command", "_child", "_run_task",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The suite's command-line options (``benchmarks/gpu.py``, ``python -m glocal.bench.gpu``, its children)."""
    parser.add_argument("--repeats", type=int, default=100, help="do_bench time budget per figure, in ms")
    parser.add_argument("--quick", action="store_true", help="fewer random checks, shorter timing")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--checks", type=int, default=None, help="random correctness problems (default 60)")
    parser.add_argument("--variants", action="store_true", help="also time alternative tile shapes")
    parser.add_argument("--variant-keys", default="1,2,3,bwd",
                        help="which variant lists to time with --variants (1, 2, 3: forward by rank; bwd)")
    parser.add_argument("--head-dims", default=None, help="comma list of head dims for the random checks")
    parser.add_argument("--only", default=None, help="time only configs whose name contains this text")
    parser.add_argument("--budget", type=int, default=150,
                        help="seconds each config may take (the checks get twice that); past it the config's "
                             "process prints its Python stack and is stopped, and the run goes on")
    parser.add_argument("--in-process", action="store_true",
                        help="run everything in this process (no per-config time limit)")
    parser.add_argument("--compile-only", action="store_true",
                        help="no GPU needed: compile every config's kernels (and with --variants the variants) "
                             "for sm_90 here and print registers, spills, shared memory, programs per SM and "
                             "instruction counts")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)


def main(args) -> int:
    """Run the suite; ``args`` needs ``repeats``, ``quick``, ``json`` (others optional). Returns an exit code.

    The checks and each config run in a process of their own with a time limit (``--budget``), so a
    stalled compile or launch costs that config only and leaves its Python stack in the output.
    """
    global HEAD_DIMS
    if not triton_backend.triton_installed():
        print("triton is not installed: pip install glocal[triton]", file=sys.stderr)
        return 2
    opt = _options(args)
    if getattr(args, "compile_only", False):
        if os.environ.get("TRITON_INTERPRET") == "1":
            print("--compile-only compiles real kernels: unset TRITON_INTERPRET (it is set to 1)", file=sys.stderr)
            return 2
        rows = offline_report(opt["variants"], opt["only"])
        print_offline(rows, 90)
        if opt["json"]:
            with open(opt["json"], "w") as f:
                json.dump(dict(target="sm_90", triton=_triton_version(), rows=rows), f, indent=1)
        return 1 if any("error" in r for r in rows) else 0
    if not torch.cuda.is_available():
        print("the GPU suite needs a CUDA device; none is visible (--compile-only needs none)", file=sys.stderr)
        return 2
    if opt["head_dims"]:
        # the random problems read configs.HEAD_DIMS; this package's copy follows it
        HEAD_DIMS = configs.HEAD_DIMS = tuple(int(x) for x in opt["head_dims"].split(","))
    if getattr(args, "child", None):
        return _child(opt, args.child)
    card = torch.cuda.get_device_name()
    print(f"device: {card}, torch {torch.__version__}", flush=True)
    result = dict(card=card, torch=torch.__version__)
    path = opt["json"]

    def save():  # after every task, so a run cut short keeps what it measured
        if path:
            with open(path, "w") as f:
                json.dump(result, f, indent=1, default=str)

    checked, error = _run_task(opt, "check", 2 * opt["budget"])
    checked = checked or {}
    result["matmul_tflops"] = checked.get("matmul_tflops")
    result["bandwidth_gbs"] = checked.get("bandwidth_gbs")
    if checked.get("check"):
        result["check"] = checked["check"]
    elif opt["checks"] > 0:
        result["check"] = dict(problems=opt["checks"], worst_fwd=float("nan"), worst_bwd=float("nan"),
                               failures=[f"the checks did not finish: {error}"])
    save()
    rows = result["rows"] = []
    for index, cfg in enumerate(CONFIGS):
        if opt["only"] and opt["only"] not in cfg["name"]:
            continue
        print(f"timing {cfg['name']} ...", flush=True)
        row, error = _run_task(opt, f"config:{index}", opt["budget"])
        if row is None or "sdpa_ms" not in row:
            row = dict(row or {}, name=cfg["name"], error=error or "no result")
        elif error:
            row["stopped"] = error  # its main figures are in; some variants may be missing
        if "error" in row:
            print(f"  error: {row['error']}", flush=True)
        else:
            print(f"  glocal {row['glocal_ms']:.3f} ms, flex {row['flex_ms']:.3f} ms, sdpa {row['sdpa_ms']:.3f} ms, "
                  f"{row['vs_flex']:.2f}x flex; glocal vs flex rel. diff {row['agree_vs_flex']:.1e}", flush=True)
        rows.append(row)
        save()
    print_table(rows, card, result["matmul_tflops"])
    if "check" in result:
        c = result["check"]
        print(f"checks: {c['problems']} random problems vs the float32 reference, worst relative error "
              f"forward {c['worst_fwd']:.2e}, backward {c['worst_bwd']:.2e}, {len(c['failures'])} over tolerance")
    if path:
        save()
        print(f"wrote {path}")
    if opt["json_stdout"]:
        print(json.dumps(result, default=str))
    bad = result.get("check", {}).get("failures")
    return 1 if bad or any("error" in r for r in rows) else 0
