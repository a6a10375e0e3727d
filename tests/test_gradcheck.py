"""torch.autograd.gradcheck in float64 on small problems (out and lse, every input)."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import glocal


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # gradcheck runs thousands of tiny forwards; on a busy machine intra-op threads only add
    # synchronisation (measured 4x slower with 2 threads under load), so run this module on one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def leaf(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()


@pytest.mark.parametrize(
    "fn, grid, options",
    [
        (glocal.na1d, (7,), dict(kernel_size=3)),
        (glocal.na1d, (8,), dict(kernel_size=4, stride=2, dilation=2)),
        (glocal.na1d, (9,), dict(kernel_size=3, stride=3, dilation=2, is_causal=True, scale=0.7)),
        (glocal.na2d, (3, 4), dict(kernel_size=(3, 2), stride=(1, 2), dilation=(1, 2), is_causal=(True, False))),
        (glocal.na2d, (3, 3), dict(kernel_size=2, is_causal=True, scale=0.0)),
        (glocal.na3d, (2, 3, 4), dict(kernel_size=(2, 3, 2), stride=(2, 1, 1), dilation=(1, 1, 2),
                                      is_causal=(False, True, False))),
    ],
)
@pytest.mark.parametrize("extra", [False, True])
def test_neighborhood_gradcheck(gen, fn, grid, options, extra):
    # MQA (2 query heads, 1 kv head) and D_v != D_qk, so the head mapping is differentiated too.
    q, k, v = leaf(gen, 1, *grid, 2, 2), leaf(gen, 1, *grid, 1, 2), leaf(gen, 1, *grid, 1, 3)
    inputs = [q, k, v]
    if extra:
        inputs += [leaf(gen, 1, 2, 1, 2), leaf(gen, 1, 2, 1, 3)]

    def f(q, k, v, ak=None, av=None):
        return fn(q, k, v, **options, additional_keys=ak, additional_values=av, return_lse=True,
                  backend="reference")

    assert gradcheck(f, inputs)


@pytest.mark.parametrize("t_q, t_kv, is_causal", [(4, 6, True), (5, 5, True), (3, 4, False)])
def test_attention_gradcheck(gen, t_q, t_kv, is_causal):
    q, k, v = leaf(gen, 2, t_q, 2, 3), leaf(gen, 2, t_kv, 1, 3), leaf(gen, 2, t_kv, 1, 4)

    def f(q, k, v):
        return glocal.attention(q, k, v, is_causal=is_causal, return_lse=True, backend="reference")

    assert gradcheck(f, (q, k, v))


def test_attention_gradcheck_rows_that_see_nothing(gen):
    # T_q > T_kv causal: the first rows attend no key; their output is the constant 0 and
    # every gradient must stay finite (lse is -inf there, so only out is checked numerically).
    q, k, v = leaf(gen, 1, 5, 2, 3), leaf(gen, 1, 3, 2, 3), leaf(gen, 1, 3, 2, 3)

    def f(q, k, v):
        return glocal.attention(q, k, v, is_causal=True, backend="reference")

    assert gradcheck(f, (q, k, v))
    out, lse = glocal.attention(q, k, v, is_causal=True, return_lse=True, backend="reference")
    (out.sum() + lse[:, 2:].sum()).backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))
    assert torch.equal(q.grad[:, :2], torch.zeros_like(q.grad[:, :2]))


def test_merge_gradcheck(gen):
    outs = [leaf(gen, 2, 3, 2, 4) for _ in range(3)]
    lses = [leaf(gen, 2, 3, 2) for _ in range(3)]

    def f(*xs):
        return glocal.merge_attentions(list(xs[:3]), list(xs[3:]))

    assert gradcheck(f, (*outs, *lses))


def test_merge_gradcheck_through_attention(gen):
    # The whole hybrid path: neighborhood branch + extra-token branch, merged.
    q, k, v = leaf(gen, 1, 6, 2, 3), leaf(gen, 1, 6, 2, 3), leaf(gen, 1, 6, 2, 3)
    ek, ev = leaf(gen, 1, 2, 2, 3), leaf(gen, 1, 2, 2, 3)

    def f(q, k, v, ek, ev):
        a = glocal.na1d(q, k, v, kernel_size=3, is_causal=True, return_lse=True, backend="reference")
        b = glocal.attention(q, ek, ev, return_lse=True, backend="reference")
        return glocal.merge_attentions([a[0], b[0]], [a[1], b[1]])

    assert gradcheck(f, (q, k, v, ek, ev))


def test_merge_gradient_of_an_empty_part_is_zero(gen):
    out_a, lse_a = leaf(gen, 1, 4, 2, 3), leaf(gen, 1, 4, 2)
    out_b = leaf(gen, 1, 4, 2, 3)
    lse_b = torch.full((1, 4, 2), -float("inf"), dtype=torch.float64, requires_grad=True)
    out, lse = glocal.merge_attentions([out_a, out_b], [lse_a, lse_b])
    torch.testing.assert_close(out, out_a.detach(), rtol=0, atol=1e-12)
    (out.sum() + lse.sum()).backward()
    assert torch.equal(out_b.grad, torch.zeros_like(out_b.grad))
    assert torch.isfinite(lse_b.grad).all() and torch.isfinite(lse_a.grad).all()
