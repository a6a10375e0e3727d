"""Shared test helpers: sweep sizing and seeded generators.

``GLOCAL_SWEEP`` sets how many random configurations a seeded sweep runs; each
sweep has its own default, sized for CI on two CPU cores.
"""

from __future__ import annotations

import os
import re
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


def interpreted(kernels: str, kernel: str, ops: str):
    """Body of a module fixture running the Triton kernels of ``glocal.backends.triton.<kernels>`` through the
    interpreter with NaN-poisoned outputs; yields ``glocal.backends.triton.<ops>``."""
    import importlib

    from glocal import config

    mp = pytest.MonkeyPatch()
    mp.setenv("TRITON_INTERPRET", "1")
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(getattr(importlib.import_module(f"glocal.backends.triton.{kernels}"), kernel),
                      InterpretedFunction):
        # triton decorates its own library for the interpreter only when imported with the variable set.
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set (tests/conftest.py sets it on "
                    "machines without a GPU)")
    with config.nan_poisoning(True):
        yield importlib.import_module(f"glocal.backends.triton.{ops}")
    mp.undo()


def sweep_size(default: int) -> int:
    """Number of configurations a seeded sweep runs: ``GLOCAL_SWEEP`` if set, else ``default``."""
    value = os.environ.get("GLOCAL_SWEEP")
    return int(value) if value else default


@pytest.fixture
def gen() -> torch.Generator:
    """A CPU generator with a fixed seed, so every test draws the same tensors on every run."""
    return torch.Generator().manual_seed(0)


def backend_run(module, spec, q, k, v, scale, additional_keys=None, additional_values=None):
    """``module.run`` of a neighborhood/dense backend module on positional tensors (the protocol takes a dict)."""
    tensors = {"q": q, "k": k, "v": v, "additional_keys": additional_keys, "additional_values": additional_values}
    return module.run(spec, tensors, scale)


def named_tensors(q, k=None, v=None, additional_keys=None, additional_values=None) -> dict:
    """The ``tensors`` dict of a neighborhood/dense problem, for ``can_run``."""
    k = q if k is None else k
    v = q if v is None else v
    return {"q": q, "k": k, "v": v, "additional_keys": additional_keys, "additional_values": additional_values}


def zeros(*shape, dtype=torch.float32, device="cpu"):
    """A zero tensor of ``shape`` (error tests only need shapes, dtypes and devices)."""
    return torch.zeros(*shape, dtype=dtype, device=device)


def raises(exc, *parts):
    """pytest.raises matching every literal ``part`` of the message, in order."""
    return pytest.raises(exc, match=".*".join(re.escape(p) for p in parts))
