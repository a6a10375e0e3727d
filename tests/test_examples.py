"""The worked examples run at a tiny size and do what they say."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hybrid_models_example_trains_both_models():
    losses = _load("hybrid_models").main(steps=40, tokens=32, dim=32, verbose=False)
    for name in ("encoder", "decoder"):
        first, last = losses[name][:5], losses[name][-5:]
        # Both start near ln(vocab) = 3.47 and fall as the models learn the token statistics and the copy.
        assert sum(last) / 5 < sum(first) / 5 - 0.1, (name, first, last)
    cached, by_forward = losses["continuations"]
    assert cached.shape == (2, 32) and torch.equal(cached, by_forward)  # step() decodes what the forward computes
