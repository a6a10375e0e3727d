"""Shared test helpers: sweep sizing and seeded generators.

``GLOCAL_SWEEP`` sets how many random configurations a seeded sweep runs; each
sweep has its own default, sized for CI on two CPU cores.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

# Without a GPU the Triton kernels are tested on CPU tensors through Triton's interpreter. The
# variable must be set before anything imports triton (FlexAttention, `glocal info`, ...): triton's
# own library functions are decorated for the interpreter, or not, when triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Make tests/bruteforce.py importable as ``bruteforce`` whatever the import mode.
sys.path.insert(0, os.path.dirname(__file__))


def sweep_size(default: int) -> int:
    """Number of configurations a seeded sweep runs: ``GLOCAL_SWEEP`` if set, else ``default``."""
    value = os.environ.get("GLOCAL_SWEEP")
    return int(value) if value else default


@pytest.fixture
def gen() -> torch.Generator:
    """A CPU generator with a fixed seed, so every test draws the same tensors on every run."""
    return torch.Generator().manual_seed(0)
