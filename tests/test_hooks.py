"""The attention-call protocol: ``choose_backend`` hands every op of every describable family to the observers."""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

import glocal
from glocal import backends, hooks
from glocal.analysis import ScaleKeys, capture, steer
from glocal.numerics import dense_attention


@dataclass(frozen=True)
class BandSpec:
    """A family no part of glocal knows: each query attends the keys within ``width`` positions."""

    family: ClassVar[str] = "band"
    width: int

    def mask_mod(self):
        width = self.width
        return lambda b, h, q_idx, kv_idx: (q_idx - kv_idx).abs() <= width


def _band_backend():
    def run(spec, tensors, scale):
        n = tensors["q"].shape[1]
        i = torch.arange(n)
        return dense_attention(tensors["q"], tensors["k"], tensors["v"], scale, (i[:, None] - i).abs() <= spec.width)

    return types.SimpleNamespace(NAME="cpu", can_run=lambda spec, tensors: [], run=run)


@pytest.fixture
def band_family(monkeypatch):
    """Register the band family with one backend, the way a new family module would be registered."""
    module = _band_backend()
    real_load = backends.load
    monkeypatch.setattr(backends, "load", lambda name, family=None: module if family == "band" else
                        real_load(name, family))
    monkeypatch.setitem(backends.PRIORITY, "band", {"cpu": ("cpu",)})

    def band_attention(q, k, v, width):
        spec, tensors = BandSpec(width), {"q": q, "k": k, "v": v}
        return backends.choose_backend(spec, tensors).run(spec, tensors, q.shape[-1] ** -0.5)[0]

    return band_attention


def test_capture_records_an_op_it_has_never_seen(band_family, gen):
    q, k, v = (torch.randn(1, 12, 2, 8, generator=gen) for _ in range(3))
    with capture(None) as rec:
        out = band_family(q, k, v, 2)
    (probs,) = rec.maps[0]
    i = torch.arange(12)
    band = (i[:, None] - i).abs() <= 2
    assert probs.shape == (1, 2, 12, 12)
    assert (probs[..., ~band] == 0).all() and torch.allclose(probs.sum(-1), torch.ones(1, 2, 12))
    # The recorded map is the op's attention: applied to v it gives the op's output.
    assert torch.allclose(torch.einsum("bhqk,bkhd->bqhd", probs, v), out, atol=1e-5)


def test_steering_rewrites_an_op_it_has_never_seen(band_family, gen):
    q, k, v = (torch.randn(1, 12, 2, 8, generator=gen) for _ in range(3))
    with steer(None, ScaleKeys(keys=[0], factor=0.0)):
        out = band_family(q, k, v, 3)
    i = torch.arange(12)
    allowed = ((i[:, None] - i).abs() <= 3) & (i[None, :] != 0)
    want, _ = dense_attention(q, k, v, 8 ** -0.5, allowed)
    assert torch.allclose(out, want, atol=1e-5)


def test_observers_see_every_softmax_family_but_not_linear_attention(gen):
    x = torch.randn(1, 10, 2, 8, generator=gen)
    img = torch.randn(1, 4, 4, 2, 8, generator=gen)
    seen = []
    with hooks.observe_ops(lambda call: seen.append(tuple(call.q.shape))):
        glocal.na1d(x, x, x, kernel_size=3)
        glocal.attention(x, x, x, is_causal=True)
        glocal.global_token_attention(img, img, img, 3, pool=2)  # a neighborhood call with extra tokens
        glocal.linear_attention(x, x, x)  # no softmax key set: not an attention map
    assert seen == [(1, 2, 10, 8), (1, 2, 10, 8), (1, 2, 16, 8)]


def test_an_observer_sees_no_calls_made_by_observers(gen):
    x = torch.randn(1, 10, 2, 8, generator=gen)
    seen = []

    def observer(call):
        seen.append(call.layer)
        glocal.attention(x, x, x)  # an observer's own attention is not observed again

    with hooks.observe_ops(observer):
        glocal.attention(x, x, x)
    assert seen == [-1]
    assert hooks.op_observers() == []


def test_op_call_puts_extra_tokens_after_the_grid(gen):
    q = torch.randn(2, 3, 4, 2, 8, generator=gen)
    extra = torch.randn(2, 5, 1, 8, generator=gen)
    allowed = torch.zeros(12, 12, dtype=torch.bool)
    call = hooks.op_call(q, q[..., :1, :], q[..., :1, :], 0.5, allowed, (3, 4), extra, extra)
    assert call.k.shape == (2, 2, 17, 8)  # kv head repeated for the 2 query heads
    assert call.allowed.shape == (1, 1, 12, 17) and call.allowed[..., 12:].all() and not call.allowed[..., :12].any()
    assert torch.isnan(call.k_pos.coord[0, 12:]).all() and not torch.isnan(call.q_pos.coord).any()
