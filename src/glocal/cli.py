"""The ``glocal`` command: ``glocal info`` (and the subcommands later issues add)."""

from __future__ import annotations

import argparse
import sys


def _info(args) -> int:
    import platform

    import torch

    import glocal
    from glocal import backends
    from glocal.spec import make_neighborhood_spec

    print(f"glocal {glocal.__version__}")
    print(f"torch {torch.__version__}, Python {platform.python_version()}, {torch.get_num_threads()} CPU threads")
    devices = ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    print("devices: " + ", ".join(devices))
    probe_devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    spec = make_neighborhood_spec((16, 16), kernel_size=3)
    print("backends (priority order), for a float32 2-D neighborhood problem on each device:")
    for name in backends.BACKENDS:
        package = backends.load(name)
        if package is None:
            print(f"  {name:10s} not in this build")
            continue
        module = backends.load(name, spec.family)
        for device in probe_devices:
            q = torch.zeros(1, 16, 16, 1, 32, device=device)
            tensors = {"q": q, "k": q, "v": q, "additional_keys": None, "additional_values": None}
            reasons = module.can_run(spec, tensors) if module is not None else [f"{name} has no neighborhood path"]
            status = "can run" if not reasons else "cannot run: " + "; ".join(reasons)
            print(f"  {name:10s} {device:5s} {status}")
        families = [f for f in backends.PRIORITY if backends.load(name, f) is not None]
        print(f"  {'':10s} families: {', '.join(families)}")
        describe = getattr(package, "describe", None)
        if describe is not None:
            print(f"  {'':10s} {describe()}")
    return 0


# Subcommands other than info live beside the code they drive; each module has
# HELP, add_arguments(parser) and main(args) -> int, and must import fast.
SUBCOMMANDS = {
    "bench": "glocal.bench.command",
    "inspect": "glocal.analysis.command",
    "convert": "glocal.convert.command",
    "sim": "glocal.sim.command",
}


def main(argv=None) -> int:
    import importlib

    parser = argparse.ArgumentParser(prog="glocal", description="Attention across the locality spectrum.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, devices, and which backends can run here")
    info.set_defaults(func=_info)
    for name, module_name in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if module_name.startswith(err.name or "?"):
                continue  # not in this build yet
            raise
        command = sub.add_parser(name, help=module.HELP)
        module.add_arguments(command)
        command.set_defaults(func=module.main)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
