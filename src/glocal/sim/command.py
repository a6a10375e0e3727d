"""``glocal sim``: tile counts, FLOPs, bytes and the predicted speedup bound of neighborhood attention.

Usage:
    glocal sim --calibrate                                   # measure this machine once (saved as JSON)
    glocal sim --config 2d:64x64,k7,h4,dim64                 # glocal's CPU and Triton tilings, FlexAttention's
    glocal sim --config 2d:64x64,k7 --tile 8x8 --key-tile 8x8 --backward
    glocal sim --config 1d:16384,k512,causal=1 --flat 128
    glocal sim --config 2d:64x64,k8,s8 --search --perfect-stride --json out.json
    glocal sim --report bench.json                           # predicted vs measured rows of glocal bench --json
    glocal sim --report docs/gpu_h100.json                   # ... of the GPU suite's JSON (Triton tiling, its card)

Example:
    >>> from glocal.cli import main
    >>> main(["sim", "--config", "1d:256,k15,h1,dim16", "--flat", "64", "--hardware", "/nonexistent.json"])
    ... # doctest: +ELLIPSIS
    glocal sim 1d:256,k15,h1,dim16 (float32); 256 tokens; no hardware
    tiling ...
    0
"""

from __future__ import annotations

import json
import math
import sys

from ..checks import sim as checks
from .hardware import calibrate, default_path, load_hardware, save_hardware
from .kernels import cpu_tiling, triton_tiling
from .model import (
    Hardware,
    Tiling,
    bytes_moved,
    count_tiles,
    flops,
    predict,
    search_tiles,
    smallest_perfect_stride,
)
from .parse import parse_config
from .report import report

HELP = "analytical model of neighborhood attention: tiles visited/skipped, FLOPs, bytes, speedup bound over dense"


def add_arguments(parser) -> None:
    parser.add_argument("--config", metavar="SPEC",
                        help="problem, as glocal bench --config: Nd:GRID then ,k ,s ,d ,h ,dim ,b ,causal= "
                             "(per-axis values joined by x)")
    parser.add_argument("--tile", metavar="BOX", help="query box, one int or one per axis joined by x (e.g. 8x8)")
    parser.add_argument("--key-tile", metavar="BOX", help="key box (default: the query box; with --flat: its size)")
    parser.add_argument("--flat", type=int, metavar="N", help="flat tiling: runs of N tokens of the row-major order")
    parser.add_argument("--groups", action="store_true", help="with --tile: tile every dilation group on its own")
    parser.add_argument("--query-anchored", action="store_true",
                        help="with --tile: key boxes cut from each query box's window union (implies --groups)")
    parser.add_argument("--search", action="store_true", help="rank power-of-two boxes and flat 32..256 tiles")
    parser.add_argument("--perfect-stride", action="store_true",
                        help="the smallest stride per axis at which every visited tile is full")
    parser.add_argument("--backward", action="store_true", help="forward+backward figures (FLOPs x 3.5)")
    parser.add_argument("--dtype", default="float32", choices=list(checks.DTYPE_BYTES), help="element type")
    parser.add_argument("--hardware", metavar="PATH",
                        help=f"figures from --calibrate (default $GLOCAL_HARDWARE or {'~/.cache/glocal/hardware.json'})")
    parser.add_argument("--calibrate", action="store_true",
                        help="measure peak matmul GFLOP/s and copy GB/s here and save them (to --hardware PATH)")
    parser.add_argument("--report", metavar="BENCH_JSON",
                        help="predicted vs measured for glocal bench --json output, or the GPU suite's JSON "
                             "(glocal bench --device cuda --json; its card's figures unless --hardware)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-': stdout)")


def _tilings(args, problem) -> list[tuple[str, Tiling]]:
    if args.flat:
        key = int(args.key_tile) if args.key_tile else args.flat
        return [("flat", Tiling(args.flat, key, layout="flat"))]
    if args.tile:
        q = checks.tile_text(args.tile, problem.ndim)
        k = checks.tile_text(args.key_tile, problem.ndim) if args.key_tile else q
        groups = args.groups or args.query_anchored
        return [("box", Tiling(q, k, groups=groups, key_anchor="query" if args.query_anchored else "grid"))]
    out = [("glocal cpu", cpu_tiling(problem))]
    try:
        out.append(("glocal triton", triton_tiling(problem)))
    except ValueError:
        pass  # a dtype the Triton kernel does not run (float64)
    out.append(("flex 128", Tiling(128, 128, layout="flat")))
    return out


def _fmt(x, spec):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _table(records) -> str:
    header = ["tiling", "", "q tiles", "visited", "skipped", "partial", "full", "useful GFLOP", "performed GFLOP",
              "density", "MB", "bound", "pred ms", "dense ms", "x dense (bound)"]
    lines = [header]
    for r in records:
        lines.append([r["name"], r["tiling"], str(r["query_tiles"]), str(r["visited"]), str(r["skipped"]),
                      str(r["partial"]), str(r["full"]), _fmt(r["useful_flops"] / 1e9, ".3f"),
                      _fmt(r["performed_flops"] / 1e9, ".3f"), _fmt(r["density"], ".2f"),
                      _fmt(r["bytes"] / 2 ** 20, ".1f"), r.get("bound") or "-", _fmt(r.get("time_ms"), ".3f"),
                      _fmt(r.get("dense_time_ms"), ".2f"), _fmt(r.get("speedup_bound"), ".1f")])
    widths = [max(len(x[i]) for x in lines) for i in range(len(header))]
    out = ["  ".join(x.rjust(w) if i > 1 else x.ljust(w) for i, (x, w) in enumerate(zip(line, widths)))
           for line in lines]
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def _record(name, problem, tiling, hardware, counts=None) -> dict:
    counts = count_tiles(problem, tiling) if counts is None else counts
    fl = flops(problem, counts)
    rec = dict(name=name, tiling=tiling.describe(), query_tile=tiling.query_tile, key_tile=tiling.key_tile,
               layout=tiling.layout, groups=tiling.groups, key_anchor=tiling.key_anchor,
               query_tiles=counts.query_tiles, total=counts.total, visited=counts.visited, skipped=counts.skipped,
               partial=counts.partial, full=counts.full, attended_pairs=counts.attended_pairs,
               computed_pairs=counts.computed_pairs, padded_pairs=counts.padded_pairs, density=counts.density,
               useful_flops=fl.useful, performed_flops=fl.performed, bytes=bytes_moved(problem, tiling, counts))
    if hardware is not None:
        pred = predict(problem, tiling, hardware, counts)
        rec.update(bound=pred.bound, time_ms=pred.time_s * 1e3, dense_time_ms=pred.dense_time_s * 1e3,
                   speedup_bound=pred.speedup_bound)
    return rec


def _write(path, payload) -> None:
    text = json.dumps(payload, indent=2, default=list)
    if path == "-":
        print(text)
        return
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}")


def _hardware(args, needed: bool):
    """The figures to use: None (with a note) where the default file is absent and nothing needs them."""
    path = args.hardware if args.hardware else default_path()
    try:
        return load_hardware(path)
    except ValueError:
        if needed:
            raise
        print(f"no hardware figures at {path}: run `glocal sim --calibrate` for time bounds and speedups "
              f"(counts, FLOPs and bytes below need none)", file=sys.stderr)
        return None


def _report_hardware(args, data):
    """A GPU suite's JSON carries its card's measured figures; bench rows use --hardware (or the calibrated file)."""
    if args.hardware or not (isinstance(data, dict) and "card" in data):
        return _hardware(args, needed=True)
    checks.report_hardware(data)
    return Hardware(1e3 * data["matmul_tflops"], data["bandwidth_gbs"], data["card"])


def main(args) -> int:
    try:
        return _main(args)
    except ValueError as err:
        print(f"glocal sim: {err}", file=sys.stderr)
        return 2


def _main(args) -> int:
    if args.calibrate:
        hw = calibrate()
        path = save_hardware(hw, args.hardware)
        print(f"{hw.name}: peak {hw.peak_gflops:.1f} GFLOP/s (best float32 1024² matmul), bandwidth "
              f"{hw.bandwidth_gbs:.1f} GB/s (best 128 MiB copy, read + write); wrote {path}")
        if not args.config and not args.report:
            return 0
    if args.report:
        with open(args.report) as f:
            data = json.load(f)
        rows = data.get("results", data.get("rows")) if isinstance(data, dict) else data
        result = report(rows, _report_hardware(args, data))
        if args.json:
            _write(args.json, dict(rows=[dict(config=c, measured=m, predicted=p) for c, m, p in result.rows],
                                   spearman=result.spearman))
        return 0
    if not args.config:
        checks.config_text("", "no problem given", "Pass --config, --report or --calibrate.")
    problem = parse_config(args.config, dtype=args.dtype, backward=args.backward)
    hardware = _hardware(args, needed=args.search)
    records = [_record(name, problem, t, hardware) for name, t in _tilings(args, problem)]
    print(f"glocal sim {args.config} ({problem.dtype}{', forward+backward' if problem.backward else ''}); "
          f"{problem.num_tokens} tokens; " + (f"hardware: {hardware.name} ({hardware.peak_gflops:.0f} GFLOP/s, "
                                               f"{hardware.bandwidth_gbs:.1f} GB/s)" if hardware else "no hardware"))
    print(_table(records))
    payload = dict(config=args.config, tokens=problem.num_tokens, backward=problem.backward, dtype=problem.dtype,
                   tilings=records)
    if args.search:
        ranked = search_tiles(problem, hardware=hardware)
        search = [_record(f"#{i + 1}", problem, t, hardware, p.counts) for i, (t, p) in enumerate(ranked[:10])]
        print("\nsearch (best first, by time bound, then performed FLOPs, then bytes):")
        print(_table(search))
        payload["search"] = search
    if args.perfect_stride:
        payload["perfect_stride"] = {}
        print()
        for name, t in _tilings(args, problem):
            stride = smallest_perfect_stride(problem, t)
            payload["perfect_stride"][name] = stride
            print(f"smallest perfectly block-sparse stride for {name} ({t.describe()}): "
                  + ("none up to the kernel size" if stride is None else "x".join(str(s) for s in stride)))
    print("visited = tile pairs computed (some key attended), skipped = fully masked, full = needing no mask; "
          "density = attended / computed pairs; x dense = dense bound / tiled bound (an upper bound).")
    if args.json:
        _write(args.json, payload)
    return 0
