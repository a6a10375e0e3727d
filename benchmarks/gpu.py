"""GPU benchmark of neighborhood attention: correctness checks, then glocal vs FlexAttention vs SDPA.

Usage (on a CUDA machine): PYTHONPATH=src python benchmarks/gpu.py [--quick] [--variants] [--json out.json]
The same suite runs as `glocal bench --device cuda`; see docs/gpu.md for the method and measured numbers.
"""

import argparse
import sys

from glocal.bench import gpu

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    gpu.add_arguments(parser)
    sys.exit(gpu.main(parser.parse_args()))
