"""``python -m glocal.bench.gpu``: the GPU suite from the command line (also how it starts its child processes).

Example:
    $ PYTHONPATH=src python -m glocal.bench.gpu --compile-only --only 3-D   # no GPU needed
"""

import argparse
import sys

from glocal.bench import gpu

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m glocal.bench.gpu", description=gpu.__doc__.splitlines()[0])
    gpu.add_arguments(parser)
    sys.exit(gpu.main(parser.parse_args()))
