"""Every docstring example of the public modules runs and prints what it shows."""

import doctest
import importlib

import pytest

MODULES = [
    "glocal.functional",
    "glocal.masks",
    "glocal.spec",
    "glocal.linear",
    "glocal.global_attention",
    "glocal.nn.attention",
    "glocal.nn.global_modules",
    "glocal.analysis",
    "glocal.convert",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0
