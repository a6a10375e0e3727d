"""FlexAttention backend vs the reference, on the CPU in inference.

On the CPU the backend runs ``flex_attention`` uncompiled (compiled flex on the
CPU cannot return lse in torch 2.11-2.13), so these tests check the mask_mod,
the extra-key merge, GQA, the lse and the BlockMask cache, not the compiled
kernel; the compiled CUDA path is compared with glocal's Triton kernels by
benchmarks/gpu.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import backend_run

from glocal.backends import flex
from glocal.backends.reference import dense as reference
from glocal.spec import AttentionSpec, make_neighborhood_spec

pytestmark = pytest.mark.skipif(flex._flex_module() is None, reason="this torch has no flex_attention")

CASES = [
    # (spatial, kernel_size, stride, dilation, is_causal, H_q, H_kv, extra tokens)
    ((9, 11), (3, 5), (2, 1), (1, 2), (False, True), 4, 2, 0),
    ((37,), 7, 2, 2, True, 2, 2, 3),
    ((4, 5, 8), (3, 3, 3), (1, 2, 1), (1, 1, 2), (True, False, False), 2, 1, 2),
    ((16, 16), 16, 1, 1, False, 2, 2, 0),  # K = L: full attention
]


@pytest.mark.parametrize("spatial,kernel_size,stride,dilation,causal,hq,hkv,extra", CASES)
def test_matches_reference(gen, spatial, kernel_size, stride, dilation, causal, hq, hkv, extra):
    spec = make_neighborhood_spec(spatial, kernel_size, stride, dilation, causal)
    q = torch.randn(2, *spatial, hq, 16, generator=gen)
    k = torch.randn(2, *spatial, hkv, 16, generator=gen)
    v = torch.randn(2, *spatial, hkv, 32, generator=gen)
    ak = torch.randn(2, extra, hkv, 16, generator=gen) if extra else None
    av = torch.randn(2, extra, hkv, 32, generator=gen) if extra else None
    with torch.no_grad():
        out, lse = backend_run(flex, spec, q, k, v, 0.3, ak, av)
    ref_out, ref_lse = backend_run(reference, spec, q.double(), k.double(), v.double(), 0.3,
                                     None if ak is None else ak.double(), None if av is None else av.double())
    assert out.shape == ref_out.shape and out.dtype == q.dtype
    assert lse.shape == ref_lse.shape and lse.dtype == torch.float32
    assert ((out.double() - ref_out).abs().max() / ref_out.abs().max()).item() <= 1e-4
    assert ((lse.double() - ref_lse).abs().max() / ref_lse.abs().max()).item() <= 1e-4


def test_dense_causal_cross_attention(gen):
    spec = AttentionSpec(6, 10, True)
    q = torch.randn(1, 6, 2, 16, generator=gen)
    k = torch.randn(1, 10, 2, 16, generator=gen)
    v = torch.randn(1, 10, 2, 16, generator=gen)
    with torch.no_grad():
        out, lse = backend_run(flex, spec, q, k, v, 0.25)
    ref_out, ref_lse = backend_run(reference, spec, q, k, v, 0.25)
    assert (out - ref_out).abs().max().item() <= 1e-5
    assert (lse - ref_lse).abs().max().item() <= 1e-5


def test_block_mask_cache_is_bounded_and_reused():
    flex._block_masks.clear()
    first = flex.block_mask(make_neighborhood_spec((8,), 3), 8, 8, 0, "cpu")
    assert flex.block_mask(make_neighborhood_spec((8,), 3), 8, 8, 0, "cpu") is first
    for length in range(9, 9 + flex._CACHE_SIZE + 3):
        flex.block_mask(make_neighborhood_spec((length,), 3), length, length, 0, "cpu")
    assert len(flex._block_masks) == flex._CACHE_SIZE
    assert flex.block_mask(make_neighborhood_spec((8,), 3), 8, 8, 0, "cpu") is not first  # evicted, rebuilt


def test_dispatch_names_flex(gen):
    import glocal

    q = torch.randn(1, 8, 8, 2, 16, generator=gen)
    out = glocal.na2d(q, q, q, kernel_size=3, backend="flex")
    ref = glocal.na2d(q, q, q, kernel_size=3, backend="reference")
    assert (out - ref).abs().max().item() <= 1e-5


# One test per refusal message.

def _tensors(q):
    return {"q": q, "k": q, "v": q, "additional_keys": None, "additional_values": None}


def test_refuses_training_on_cpu():
    q = torch.randn(1, 8, 2, 16, requires_grad=True)
    reasons = flex.can_run(make_neighborhood_spec((8,), 3), _tensors(q))
    assert reasons == ["flex runs on the CPU for inference only (an input requires grad); "
                       "use torch.no_grad() or the cpu/reference backend for training"]


def test_refuses_float64():
    reasons = flex.can_run(make_neighborhood_spec((8,), 3), _tensors(torch.randn(1, 8, 2, 16, dtype=torch.float64)))
    assert reasons == ["flex runs float32, float16 and bfloat16, not float64; use the reference backend"]


def test_refuses_head_dims():
    reasons = flex.can_run(make_neighborhood_spec((8,), 3), _tensors(torch.randn(1, 8, 2, 24)))
    assert reasons == ["flex needs power-of-two head dims >= 16; got q.shape[-1]=24"]


def test_refuses_other_specs():
    reasons = flex.can_run(object(), _tensors(torch.randn(1, 8, 2, 16)))
    assert reasons == ["flex implements neighborhood and full attention, not object"]


def test_refuses_without_flex_attention(monkeypatch):
    monkeypatch.setattr(flex, "_flex_module", lambda: None)
    reasons = flex.can_run(make_neighborhood_spec((8,), 3), _tensors(torch.randn(1, 8, 2, 16)))
    assert reasons == [f"torch {torch.__version__} has no torch.nn.attention.flex_attention (needs torch >= 2.5)"]
