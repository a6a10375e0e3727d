"""Run one config of the GPU suite a few times, for a profiler (Nsight Compute) to read one launch.

Shapes: q, k, v: [1, *spatial, 8 heads, 128] bfloat16, the suite's configs (glocal.bench.gpu.CONFIGS).

Usage (on a CUDA machine; docs/gpu.md has the ncu command around it):
    PYTHONPATH=src python benchmarks/gpu_profile.py --config "1-D 32768 K=2048 fwd" --options '{"fwd_tma": true}'
    PYTHONPATH=src python benchmarks/gpu_profile.py --config "1-D 32768 K=2048 fwd" --flex
"""

import argparse
import json
import sys

import torch


def main(argv=None) -> int:
    from glocal.bench import gpu

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a config name of glocal.bench.gpu.CONFIGS, or part of it")
    parser.add_argument("--options", default="{}", help="ops.tiles() options as JSON (lists for boxes)")
    parser.add_argument("--flex", action="store_true", help="run compiled FlexAttention instead of glocal")
    parser.add_argument("--launches", type=int, default=3, help="calls after one warm-up call (default 3)")
    args = parser.parse_args(argv)
    matches = [c for c in gpu.CONFIGS if args.config in c["name"]]
    if len(matches) != 1:
        names = ", ".join(repr(c["name"]) for c in gpu.CONFIGS)
        print(f"--config must pick one config; {args.config!r} matches {len(matches)} of: {names}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gpu_profile.py needs a CUDA device; none is visible", file=sys.stderr)
        return 2
    cfg = matches[0]
    options = {key: tuple(val) if isinstance(val, list) else val for key, val in json.loads(args.options).items()}

    from glocal.backends import flex
    from glocal.backends.triton import ops
    from glocal.spec import make_neighborhood_spec

    spec = make_neighborhood_spec(cfg["spatial"], cfg["kernel_size"], 1, 1, cfg["causal"])
    q, k, v = (torch.randn(1, *cfg["spatial"], 8, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    n = spec.num_tokens
    if args.flex:
        qt, kt, vt = (x.reshape(1, n, 8, 128).transpose(1, 2).contiguous() for x in (q, k, v))
        bm = flex.block_mask(spec, n, n, 0, q.device)
        flex_fn = torch.compile(flex._flex_module().flex_attention, dynamic=False)

        def run():
            return flex_fn(qt, kt, vt, block_mask=bm, scale=128 ** -0.5)
    else:
        def run():
            with ops.tiles(**options):
                return ops.neighborhood(spec, q, k, v, 128 ** -0.5)

    with torch.no_grad():
        for _ in range(1 + args.launches):
            run()
    torch.cuda.synchronize()
    print(f"ran {'Flex' if args.flex else 'glocal ' + str(options)} on {cfg['name']} {1 + args.launches} times")
    return 0


if __name__ == "__main__":
    sys.exit(main())
