"""Parallax and Local Linear Attention: reference vs a brute-force loop, the fast path vs the reference,
gradcheck, the identities (r = 0 and ridge -> infinity are softmax attention, LLA is a per-query weighted
least-squares fit), and glocal.nn.ParallaxAttention."""

from __future__ import annotations

import math
import random

import pytest
import torch
from conftest import sweep_size
from torch.autograd import gradcheck

import glocal
from glocal.backends.cpu import local_linear as fast
from glocal.bench.timing import peak_cpu_bytes

F64 = torch.float64


def rand(gen, *shape, dtype=F64, factor=1.0):
    return (torch.randn(*shape, generator=gen, dtype=F64) * factor).to(dtype).requires_grad_(True)


def problem(gen, batch, length, hq, hkv, dim, dim_v, dtype=F64, probe=0.3):
    """q, r, k, v (r smaller than q: a probe is a correction, and keeps LLA-sized outputs moderate)."""
    return (rand(gen, batch, length, hq, dim, dtype=dtype),
            rand(gen, batch, length, hq, dim, dtype=dtype, factor=probe),
            rand(gen, batch, length, hkv, dim, dtype=dtype), rand(gen, batch, length, hkv, dim_v, dtype=dtype))


def assert_close(got, want, tol):
    scale = max(want.abs().max().item(), 1.0) if want.numel() else 1.0
    assert got.shape == want.shape
    assert torch.isfinite(got).all()
    err = (got.double() - want.double()).abs().max().item() if want.numel() else 0.0
    assert err <= tol * scale, err


# --- brute force, written from the rules of the brief (no glocal code) --------------------------


def window_keys(i: int, length: int, window, causal: bool) -> list[int]:
    """Keys query i attends: causal [i - K + 1, i] clipped at 0; else K keys centred, shifted inward."""
    kernel = length if window is None else min(window, length)
    if causal:
        return list(range(max(0, i - kernel + 1), i + 1))
    left = kernel // 2
    right = kernel - 1 - left
    centre = min(max(i, left), length - 1 - right)
    return list(range(centre - left, centre + right + 1))


def brute_force(q, r, k, v, window, causal, scale, ridge=None):
    """(out, lse) by a loop over batches, heads and queries, float64."""
    batch, length, hq, dim = q.shape
    group = hq // k.shape[2]
    out = torch.zeros(batch, length, hq, v.shape[-1], dtype=F64)
    lse = torch.zeros(batch, length, hq, dtype=F64)
    for b in range(batch):
        for h in range(hq):
            for i in range(length):
                js = window_keys(i, length, window, causal)
                keys, values = k[b, js, h // group].double(), v[b, js, h // group].double()
                query = q[b, i, h].double()
                logits = scale * keys @ query
                s = torch.softmax(logits, 0)
                mu = s @ keys
                if ridge is None:
                    probe = r[b, i, h].double()
                else:
                    sigma = sum(s[j] * torch.outer(keys[j] - mu, keys[j] - mu) for j in range(len(js)))
                    probe = torch.linalg.solve(sigma + ridge * torch.eye(dim, dtype=F64), mu - query)
                out[b, i, h] = sum(s[j] * values[j] * (1 - probe @ (keys[j] - mu)) for j in range(len(js)))
                lse[b, i, h] = torch.logsumexp(logits, 0)
    return out, lse


def call(q, r, k, v, window, causal, scale=None, ridge=None, backend=None):
    if ridge is None:
        return glocal.parallax_attention(q, r, k, v, window, causal, scale, return_lse=True, backend=backend)
    return glocal.local_linear_attention(q, k, v, window, causal, ridge, scale, return_lse=True, backend=backend)


REFERENCE_CASES = [  # (T, window, causal, H_q, H_kv, D, D_v, ridge)
    (9, 3, True, 2, 1, 4, 3, None), (9, 4, False, 2, 2, 3, 5, None), (7, None, True, 1, 1, 4, 4, None),
    (7, None, False, 4, 2, 3, 2, None), (6, 1, False, 2, 1, 3, 3, None), (5, 9, False, 1, 1, 4, 2, None),
    (9, 3, True, 2, 1, 4, 3, 0.5), (9, 4, False, 1, 1, 3, 5, 0.1), (7, None, False, 2, 1, 3, 2, 1.0),
    (6, 1, True, 1, 1, 3, 3, 0.01), (5, 8, True, 2, 2, 2, 3, 0.3),
]


@pytest.mark.parametrize("case", REFERENCE_CASES)
def test_reference_matches_brute_force(gen, case):
    length, window, causal, hq, hkv, dim, dim_v, ridge = case
    q, r, k, v = problem(gen, 2, length, hq, hkv, dim, dim_v)
    out, lse = call(q, r, k, v, window, causal, scale=0.7, ridge=ridge, backend="reference")
    want, want_lse = brute_force(q, r, k, v, window, causal, 0.7, ridge)
    assert out.dtype == F64 and lse.dtype == F64
    assert_close(out, want, 1e-10)
    assert_close(lse, want_lse, 1e-10)


# --- the fast path against the reference ----------------------------------------------------------


def check_against_reference(gen, batch, length, window, causal, hq, hkv, dim, dim_v, ridge=None, scale=None,
                            dtype=F64, tol=1e-9):
    """Output, lse and the gradient of every input (through both outputs), fast path vs float64 reference."""
    q, r, k, v = problem(gen, batch, length, hq, hkv, dim, dim_v, dtype)
    inputs = [q, r, k, v] if ridge is None else [q, k, v]
    with glocal.config.nan_poisoning(True):
        out, lse = call(q, r, k, v, window, causal, scale, ridge, backend="cpu")
    assert out.dtype == dtype and lse.dtype == (F64 if dtype == F64 else torch.float32)
    ref_inputs = [x.detach().double().requires_grad_(True) for x in (q, r, k, v)]
    ref, ref_lse = call(*ref_inputs, window, causal, scale, ridge, backend="reference")
    assert_close(out, ref, tol)
    assert_close(lse, ref_lse, tol)
    g_out = torch.randn(ref.shape, generator=gen, dtype=F64)
    g_lse = torch.randn(ref_lse.shape, generator=gen, dtype=F64)
    with glocal.config.nan_poisoning(True):
        got = torch.autograd.grad((out.double() * g_out).sum() + (lse.double() * g_lse).sum(), inputs)
    ref_used = ref_inputs if ridge is None else [ref_inputs[0]] + ref_inputs[2:]
    want = torch.autograd.grad((ref * g_out).sum() + (ref_lse * g_lse).sum(), ref_used)
    for a, b in zip(got, want):
        assert a.dtype == dtype
        assert_close(a, b, tol)


@pytest.mark.parametrize("window", [None, 1, 2, 5, 16, 40, 80])
@pytest.mark.parametrize("causal", [True, False])
def test_parallax_windows_match_reference(gen, window, causal):
    # T = 37 is no multiple of any tile size: a partial last tile with padding queries.
    check_against_reference(gen, 2, 37, window, causal, 4, 2, 8, 5)


@pytest.mark.parametrize("length, window, causal, hq, hkv", [(400, 64, True, 1, 1), (400, 64, False, 1, 1),
                                                             (333, 100, True, 4, 2), (333, 99, False, 2, 1)])
def test_long_sequences_with_interior_tiles(gen, length, window, causal, hq, hkv):
    # Many interior tiles of 64 query rows (band blocks, masked at their edges only), border tiles, a
    # partial last tile.
    check_against_reference(gen, 1, length, window, causal, hq, hkv, 8, 4)


@pytest.mark.parametrize("window, causal, budget", [(5, True, 1), (9, False, 64), (16, False, 3000), (None, True, 500),
                                                    (None, False, 1), (30, True, 1 << 19)])
@pytest.mark.parametrize("ridge", [None, 0.3])
def test_batches_of_every_size(gen, monkeypatch, window, causal, budget, ridge):
    # A small score budget splits runs into one-tile, one-head batches (strided views, folded
    # sub-blocks); a large one puts whole runs of several heads in one batch.
    monkeypatch.setattr(fast, "BLOCK_FLOATS", budget)
    monkeypatch.setattr(fast, "LLA_BLOCK_FLOATS", 1 if budget < 100 else 1 << 22)
    check_against_reference(gen, 2, 70, window, causal, 2, 1, 6, 4, ridge=ridge)


@pytest.mark.parametrize("window", [None, 1, 3, 12])
@pytest.mark.parametrize("causal", [True, False])
def test_local_linear_windows_match_reference(gen, window, causal):
    check_against_reference(gen, 1, 29, window, causal, 2, 1, 4, 3, ridge=0.2)


def test_seeded_sweep(gen):
    rng = random.Random(0)
    for _ in range(sweep_size(8)):
        hkv = rng.choice([1, 2])
        length = rng.randint(1, 60)
        check_against_reference(
            gen, rng.choice([1, 2]), length, rng.choice([None, 1, 2, rng.randint(1, 70)]), rng.random() < 0.5,
            hkv * rng.choice([1, 2, 4]), hkv, rng.choice([2, 4, 8]), rng.choice([1, 3, 8]),
            ridge=rng.choice([None, None, 0.05, 1.0]), scale=rng.choice([None, 0.4]))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("ridge", [None, 1.0])
def test_low_precision_against_float64_reference(gen, dtype, tol, ridge):
    # The reference runs on the same (rounded) inputs in float64; the fast path computes in float32.
    check_against_reference(gen, 1, 150, 40, True, 2, 1, 16, 16, ridge=ridge, dtype=dtype, tol=tol)
    check_against_reference(gen, 1, 90, 20, False, 2, 2, 16, 8, ridge=ridge, dtype=dtype, tol=tol)


@pytest.mark.parametrize("ridge", [None, 0.5])
def test_noncontiguous_inputs_and_inputs_unchanged(gen, ridge):
    # laid out [B, H, T, D] and transposed: strided, not contiguous
    q, r, k, v = (torch.randn(2, 2, 33, 8, generator=gen, dtype=F64).transpose(1, 2) for _ in range(4))
    copies = [x.clone() for x in (q, r, k, v)]
    for backend in ("cpu", "reference"):
        out, lse = call(q, r, k, v, 6, False, ridge=ridge, backend=backend)
        want, want_lse = call(*(x.contiguous() for x in (q, r, k, v)), 6, False, ridge=ridge, backend=backend)
        # Equal up to float64 rounding: BLAS may pick other kernels (summation orders) for strided operands
        # (seen for the reference's einsums on an AMD EPYC: 1.3e-15).
        torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
        torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip((q, r, k, v), copies))


@pytest.mark.parametrize("batch, length", [(0, 5), (2, 0)])
@pytest.mark.parametrize("ridge", [None, 0.5])
def test_empty_batch_and_sequence(batch, length, ridge):
    q = torch.randn(batch, length, 2, 4, requires_grad=True)
    k, v = torch.randn(batch, length, 1, 4, requires_grad=True), torch.randn(batch, length, 1, 3, requires_grad=True)
    for backend in ("cpu", "reference"):
        out, lse = call(q, q, k, v, 3, True, ridge=ridge, backend=backend)
        assert out.shape == (batch, length, 2, 3) and lse.shape == (batch, length, 2)
        (out.sum() + lse.sum()).backward()
        assert q.grad.shape == q.shape and k.grad.shape == k.shape


@pytest.mark.parametrize("window, causal", [(3, True), (4, False), (None, False), (None, True)])
@pytest.mark.parametrize("ridge", [None, 0.3])
def test_gradcheck(gen, monkeypatch, window, causal, ridge):
    # several batches: the overlap-add of span gradients (fewer for LLA, whose forward is many small solves)
    monkeypatch.setattr(fast, "BLOCK_FLOATS", 40 if ridge is None else 400)
    q, r, k, v = problem(gen, 1, 10 if ridge is None else 8, 2, 1, 3, 2)

    def f(q, r, k, v):
        return call(q, r, k, v, window, causal, scale=0.8, ridge=ridge, backend="cpu")

    def g(q, k, v):
        return call(q, None, k, v, window, causal, scale=0.8, ridge=ridge, backend="cpu")

    assert gradcheck(f, (q, r, k, v)) if ridge is None else gradcheck(g, (q, k, v))


# --- identities ------------------------------------------------------------------------------------


@pytest.mark.parametrize("window, causal", [(1, True), (6, True), (7, False), (40, False), (None, True),
                                            (None, False)])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_zero_probe_is_softmax_attention(gen, window, causal, backend):
    q, _, k, v = problem(gen, 2, 33, 4, 2, 8, 5)
    out, lse = glocal.parallax_attention(q, torch.zeros_like(q), k, v, window, causal, return_lse=True,
                                         backend=backend)
    if window is None:
        want, want_lse = glocal.attention(q, k, v, is_causal=causal, return_lse=True)
    else:  # glocal's 1-D neighborhood attention with K = min(window, T)
        want, want_lse = glocal.na1d(q, k, v, kernel_size=min(window, 33), is_causal=causal, return_lse=True)
    assert_close(out, want, 1e-10)
    assert_close(lse, want_lse, 1e-10)


@pytest.mark.parametrize("window, causal", [(5, True), (8, False), (None, True)])
def test_large_ridge_tends_to_softmax_attention(gen, window, causal):
    q, _, k, v = problem(gen, 1, 30, 2, 1, 6, 4)
    softmax = glocal.parallax_attention(q, torch.zeros_like(q), k, v, window, causal)
    errors = []
    for ridge in (1e2, 1e4, 1e6, 1e10):
        out = glocal.local_linear_attention(q, k, v, window, causal, ridge=ridge)
        errors.append((out - softmax).abs().max().item())
    # the correction is O(1 / ridge): each factor 100 in ridge shrinks it about 100-fold
    assert errors[0] > 1e-4 and errors[1] < errors[0] / 30 and errors[2] < errors[1] / 30 and errors[3] < 1e-8


def weighted_least_squares_intercept(q, k, v, window, causal, scale, ridge):
    """a_i of min_{a, b} sum_j s_ij |v_j - a - b^T (k_j - q_i)|^2 + ridge |b|^2 per query, by torch.linalg.lstsq."""
    batch, length, hq, dim = q.shape
    group = hq // k.shape[2]
    out = torch.zeros(batch, length, hq, v.shape[-1], dtype=F64)
    for b in range(batch):
        for h in range(hq):
            for i in range(length):
                js = window_keys(i, length, window, causal)
                keys, values = k[b, js, h // group], v[b, js, h // group]
                s = torch.softmax(scale * keys @ q[b, i, h], 0)
                design = torch.cat([torch.ones(len(js), 1, dtype=F64), keys - q[b, i, h]], 1)
                # rows sqrt(s_j) [1, k_j - q_i] -> sqrt(s_j) v_j, plus sqrt(ridge) e_d -> 0 (ridge on b only)
                penalty = torch.cat([torch.zeros(dim, 1, dtype=F64), math.sqrt(ridge) * torch.eye(dim, dtype=F64)], 1)
                a = torch.cat([s.sqrt()[:, None] * design, penalty])
                y = torch.cat([s.sqrt()[:, None] * values, torch.zeros(dim, v.shape[-1], dtype=F64)])
                out[b, i, h] = torch.linalg.lstsq(a, y).solution[0]
    return out


@pytest.mark.parametrize("window, causal, ridge", [(5, True, 0.05), (6, False, 1.0), (None, True, 0.01),
                                                   (None, False, 0.3)])
def test_local_linear_is_per_query_weighted_least_squares(gen, window, causal, ridge):
    q, k, v = (torch.randn(1, 12, 2, 3, generator=gen, dtype=F64) for _ in range(3))
    want = weighted_least_squares_intercept(q, k, v, window, causal, 0.9, ridge)
    for backend in ("cpu", "reference"):
        out = glocal.local_linear_attention(q, k, v, window, causal, ridge, scale=0.9, backend=backend)
        assert_close(out, want, 1e-9)


def test_local_linear_is_parallax_with_the_solved_probe(gen):
    # LLA's r is rho_i = (Sigma_i + ridge I)^-1 (mu_i - q_i): feed that probe to Parallax.
    q, _, k, v = problem(gen, 1, 9, 1, 1, 3, 2)
    q, k, v = q.detach(), k.detach(), v.detach()
    rho = torch.zeros_like(q)
    for i in range(9):
        js = window_keys(i, 9, 4, True)
        keys = k[0, js, 0]
        s = torch.softmax(3 ** -0.5 * keys @ q[0, i, 0], 0)
        mu = s @ keys
        sigma = (s[:, None, None] * (keys - mu)[:, :, None] * (keys - mu)[:, None, :]).sum(0)
        rho[0, i, 0] = torch.linalg.solve(sigma + 0.2 * torch.eye(3, dtype=F64), mu - q[0, i, 0])
    want = glocal.parallax_attention(q, rho, k, v, 4)
    assert_close(glocal.local_linear_attention(q, k, v, 4, True, 0.2), want, 1e-10)


def test_memory_of_a_windowed_problem_grows_linearly():
    # Forward + backward; a T x T score matrix at T = 8192 would be 256 MiB on its own.
    def peak(length):
        q, r, k, v = (torch.randn(1, length, 1, 16, requires_grad=True) for _ in range(4))
        return peak_cpu_bytes(lambda: glocal.parallax_attention(q, r, k, v, window_size=64).sum().backward())

    small, large = peak(4096), peak(8192)
    assert large < 2.5 * small and large < 8192 * 8192 * 4 // 8, (small, large)


# --- the module ------------------------------------------------------------------------------------


def test_module_forward_backward(gen):
    torch.manual_seed(0)
    layer = glocal.nn.ParallaxAttention(32, 4, window_size=8, is_causal=True)
    x = torch.randn(2, 20, 32, generator=gen, requires_grad=True)
    y = layer(x)
    assert y.shape == (2, 20, 32) and torch.isfinite(y).all()
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # causal: the output at t does not depend on later inputs
    x2 = x.detach().clone()
    x2[:, 10:] += 1.0
    assert torch.allclose(layer(x2)[:, :10], y[:, :10], atol=1e-6)
    assert not torch.allclose(layer(x2)[:, 10:], y[:, 10:], atol=1e-3)


def test_module_zero_probe_is_softmax_attention_with_rope(gen):
    torch.manual_seed(0)
    layer = glocal.nn.ParallaxAttention(16, 2, window_size=5, is_causal=False).double()
    with torch.no_grad():
        layer.r_proj.weight.zero_()
        layer.r_proj.bias.zero_()
    x = torch.randn(1, 12, 16, generator=gen, dtype=F64)
    q, k, v = (p(x).unflatten(-1, (2, 8)) for p in (layer.q_proj, layer.k_proj, layer.v_proj))
    pos = torch.arange(12)
    want = glocal.na1d(glocal.nn.rope.rope(q, pos), glocal.nn.rope.rope(k, pos), v, kernel_size=5)
    assert_close(layer(x), layer.proj(want.flatten(-2)), 1e-12)


@pytest.mark.parametrize("window, causal", [(6, True), (None, False)])
def test_module_rope_makes_scores_depend_on_position_differences_only(gen, window, causal):
    torch.manual_seed(0)
    layer = glocal.nn.ParallaxAttention(32, 2, window_size=window, is_causal=causal).double()
    x = torch.randn(2, 15, 32, generator=gen, dtype=F64)
    base = layer(x)
    positions = torch.arange(15)
    # q.k and r.k (so r.mu too) see only position differences: a global shift changes nothing
    assert_close(layer(x, positions=positions + 1000), base, 1e-9)
    assert_close(layer(x, positions=(positions + 7)[None].expand(2, 15)), base, 1e-9)
    # ... while other distances do change it (RoPE is in use)
    assert (layer(x, positions=2 * positions) - base).abs().max() > 1e-3
