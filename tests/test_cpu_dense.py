"""The CPU dense backend (torch's flash kernel) against the reference: output, lse and every gradient."""

from __future__ import annotations

import pytest
import torch

import glocal
from glocal.backends import choose_backend
from glocal.spec import AttentionSpec

CASES = [  # (B, T_q, T_kv, H_q, H_kv, D, causal)
    (2, 17, 17, 4, 4, 16, False),
    (2, 17, 17, 4, 2, 16, True),
    (1, 5, 33, 2, 1, 8, True),   # causal cross: bottom-right, a prefix seen by every query
    (1, 9, 40, 3, 3, 32, False),
    (1, 1, 50, 4, 2, 16, True),  # one decoding step
    (3, 64, 64, 2, 2, 64, True),
    (1, 3, 11, 2, 2, 6, False),  # channels strided too (below)
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_cpu_dense_equals_the_reference(case, dtype):
    b, tq, tkv, hq, hkv, d, causal = case
    gen = torch.Generator().manual_seed(tq * 100 + tkv)
    # Strided inputs: heads-first storage viewed heads-last, as a projection's output often is.
    q = torch.randn(b, hq, tq, d, generator=gen).transpose(1, 2)
    k = torch.randn(b, hkv, tkv, d, generator=gen).transpose(1, 2)
    v = torch.randn(b, hkv, tkv, d, generator=gen).transpose(1, 2)
    if d == 6:  # channels not contiguous either (e.g. pooled tokens moved back from channels-first)
        q = torch.randn(b, d, tq, hq, generator=gen).permute(0, 2, 3, 1)
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    ref_leaves = [t.double().detach().requires_grad_() for t in (q, k, v)]
    out, lse = glocal.attention(*leaves, is_causal=causal, return_lse=True, backend="cpu")
    ref, ref_lse = glocal.attention(*ref_leaves, is_causal=causal, return_lse=True, backend="reference")
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2}[dtype]
    assert out.dtype == dtype and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(out.double(), ref, atol=tol * ref.abs().max().item(), rtol=0)
    torch.testing.assert_close(lse.double(), ref_lse, atol=tol * ref_lse.abs().max().item(), rtol=0)
    dout = torch.randn(out.shape, generator=gen).to(dtype)
    dlse = torch.randn(lse.shape, generator=gen)
    grads = torch.autograd.grad((out * dout).sum() + (lse * dlse.to(lse.dtype)).sum(), leaves)
    ref_grads = torch.autograd.grad((ref * dout.double()).sum() + (ref_lse * dlse.double()).sum(), ref_leaves)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, atol=tol * 4 * r.abs().max().item(), rtol=0)


def test_cpu_dense_is_chosen_on_the_cpu_and_gives_way_where_it_cannot_run():
    q = torch.randn(1, 8, 2, 16)
    spec = AttentionSpec(8, 8, False)
    assert choose_backend(spec, {"q": q, "k": q, "v": q}).NAME == "cpu"
    v = torch.randn(1, 8, 2, 8)  # D_v != D_qk: the kernel cannot; the reference runs
    assert choose_backend(spec, {"q": q, "k": q, "v": v}).NAME == "reference"
    with pytest.raises(RuntimeError, match="backend .cpu. cannot run this problem: .*D_v == D_qk"):
        glocal.attention(q, q, v, backend="cpu")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_masked_attention_equals_dense_attention_with_empty_rows(dtype):
    from glocal.backends.cpu.dense import masked_attention
    from glocal.numerics import dense_attention

    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, n, 3, 8, generator=gen, dtype=dtype).requires_grad_() for n in (12, 7, 7))
    allowed = torch.rand(12, 7, generator=gen) < 0.5
    allowed[3] = False  # a query with no key: output 0, lse -inf
    out, lse = masked_attention(q, k, v, 0.3, allowed)
    ref, ref_lse = dense_attention(q, k, v, 0.3, allowed)
    assert bool(torch.isneginf(lse[:, 3]).all()) and bool((out[:, 3] == 0).all())
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(lse, ref_lse, atol=tol, rtol=tol)
    finite = torch.isfinite(ref_lse)
    grads = torch.autograd.grad(out.sum() + lse[finite].sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.sum() + ref_lse[finite].sum(), (q, k, v))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=tol * 10, rtol=tol * 10)
