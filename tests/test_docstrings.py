"""Every docstring example of every glocal module runs and prints what it shows (GPU-only ones are skipped)."""

import doctest
import importlib
import pkgutil

import pytest

import glocal

MODULES = sorted(m.name for m in pkgutil.walk_packages(glocal.__path__, "glocal.") if not m.name.endswith("__main__"))
# Public modules a user reads first must show an example (the others may, and run if they do).
MUST_HAVE_EXAMPLES = ["glocal.functional", "glocal.masks", "glocal.spec", "glocal.linear", "glocal.global_attention",
                      "glocal.nn.attention", "glocal.nn.global_modules", "glocal.analysis", "glocal.convert",
                      "glocal.numerics", "glocal.hooks", "glocal.config", "glocal.backends", "glocal.ops.neighborhood",
                      "glocal.ops.dense", "glocal.ops.linear", "glocal.ops.global_tokens"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    if name in MUST_HAVE_EXAMPLES:
        assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0
