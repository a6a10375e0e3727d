"""RAT attention: the reference vs a brute-force loop, the cpu path vs the reference, identities, the layer."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import sweep_size

import glocal
from glocal.backends.cpu import rat as cpu_rat
from glocal.backends.reference.rat import gated_running_average, rat_attention_reference
from glocal.bench.timing import peak_cpu_bytes
from glocal.nn import RATAttention
from glocal.nn.rope import rope

F64 = torch.float64


def assert_close(got, want, tol):
    scale = max(want.abs().max().item(), 1.0) if want.numel() else 1.0
    assert torch.isfinite(got).all()
    assert got.shape == want.shape
    if want.numel():
        assert (got - want).abs().max().item() <= tol * scale, (got - want).abs().max().item()


def brute_force(q, k, v, key_gate, value_gate, chunk_size, scale):
    """RAT written from its rules, one query at a time: (out, lse)."""
    batch, length, hq, _ = q.shape
    group = hq // k.shape[2]
    key_gate, value_gate = torch.broadcast_to(key_gate, k.shape), torch.broadcast_to(value_gate, v.shape)

    def state(x, gate, t):  # the running state at t, from 0 before its chunk's first position
        h = torch.zeros_like(x[:, 0])
        for s in range(t - t % chunk_size, t + 1):
            h = gate[:, s] * h + (1 - gate[:, s]) * x[:, s]
        return h

    out = torch.zeros(batch, length, hq, v.shape[-1], dtype=q.dtype)
    lse = torch.zeros(batch, length, hq, dtype=q.dtype)
    for t in range(length):
        ends = [j * chunk_size + chunk_size - 1 for j in range(t // chunk_size)]  # the chunks before t's
        keys = torch.stack([state(k, key_gate, e) for e in ends] + [state(k, key_gate, t)], 1)
        values = torch.stack([state(v, value_gate, e) for e in ends] + [state(v, value_gate, t)], 1)
        for h in range(hq):
            scores = scale * torch.einsum("bd,bmd->bm", q[:, t, h], keys[:, :, h // group])
            lse[:, t, h] = torch.logsumexp(scores, -1)
            out[:, t, h] = torch.einsum("bm,bmd->bd", scores.softmax(-1), values[:, :, h // group])
    return out, lse


def problem(gen, batch, length, hq, hkv, d, dv, gate_last, dtype=F64):
    """q, k, v and gates in (0, 1); ``gate_last`` "full" (per channel) or "head" (one per head: [..., 1])."""
    q = torch.randn(batch, length, hq, d, generator=gen, dtype=F64)
    k = torch.randn(batch, length, hkv, d, generator=gen, dtype=F64)
    v = torch.randn(batch, length, hkv, dv, generator=gen, dtype=F64)
    gk = torch.rand(batch, length, hkv, d if gate_last == "full" else 1, generator=gen, dtype=F64)
    gv = torch.rand(batch, length, hkv, dv if gate_last == "full" else 1, generator=gen, dtype=F64)
    return [x.to(dtype) for x in (q, k, v, gk, gv)]


@pytest.mark.parametrize("length,chunk,hq,hkv,dv,gate_last", [
    (13, 4, 2, 2, 3, "full"),   # partial last chunk, D_v != D
    (12, 3, 4, 2, 5, "head"),   # GQA, broadcast gates
    (9, 1, 2, 1, 4, "full"),    # chunk 1, MQA
    (10, 10, 2, 2, 4, "head"),  # one chunk: the pure recurrence
    (7, 20, 1, 1, 2, "full"),   # chunk > T
])
def test_reference_matches_brute_force(gen, length, chunk, hq, hkv, dv, gate_last):
    q, k, v, gk, gv = problem(gen, 2, length, hq, hkv, 4, dv, gate_last)
    out, lse = rat_attention_reference(q, k, v, gk, gv, chunk, scale=0.7, return_lse=True)
    want_out, want_lse = brute_force(q, k, v, gk, gv, chunk, 0.7)
    assert_close(out, want_out, 1e-12)
    assert_close(lse, want_lse, 1e-12)


def compare_cpu_with_reference(gen, batch, length, hq, hkv, d, dv, chunk, gate_last, scale=None, dtype=F64,
                               tol=1e-10, noncontiguous=False):
    """cpu path vs the float64 reference: output, lse and the gradients of q, k, v and both gates."""
    base = problem(gen, batch, length, hq, hkv, d, dv, gate_last)
    if noncontiguous:  # laid out [B, H, T, D] (heads first) and transposed back: strided inputs
        base = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in base]
    inputs = [x.to(dtype).requires_grad_(True) for x in base]
    exact = [x.detach().to(F64).requires_grad_(True) for x in inputs]  # the same values, in float64
    with glocal.config.nan_poisoning(True):
        out, lse = glocal.rat_attention(*inputs, chunk, scale=scale, return_lse=True, backend="cpu")
    want_out, want_lse = rat_attention_reference(*exact, chunk, scale=scale, return_lse=True)
    assert out.dtype == dtype and lse.dtype == (F64 if dtype == F64 else torch.float32)
    assert_close(out.to(F64), want_out, tol)
    assert_close(lse.to(F64), want_lse, tol)
    if batch * length == 0:
        return
    g_out = torch.randn(out.shape, generator=gen, dtype=F64)
    g_lse = torch.randn(lse.shape, generator=gen, dtype=F64)
    with glocal.config.nan_poisoning(True):
        got = torch.autograd.grad((out.to(F64) * g_out).sum() + (lse.to(F64) * g_lse).sum(), inputs)
    want = torch.autograd.grad((want_out * g_out).sum() + (want_lse * g_lse).sum(), exact)
    for name, a, b in zip(("q", "k", "v", "key_gate", "value_gate"), got, want):
        assert a.shape == b.shape and a.dtype == dtype, name
        assert_close(a.to(F64), b, tol)


@pytest.mark.parametrize("length,chunk", [(1, 1), (17, 1), (16, 4), (19, 4), (23, 5), (11, 11), (11, 40)])
def test_cpu_chunk_sizes_and_partial_chunks(gen, length, chunk):
    compare_cpu_with_reference(gen, 2, length, 2, 2, 4, 3, chunk, "full")


def test_cpu_seeded_sweep(gen):
    rng = random.Random(0)
    for _ in range(sweep_size(10)):
        hkv = rng.choice([1, 2])
        length = rng.randint(1, 48)
        chunk = rng.choice([1, 2, 3, 4, 7, 16, 20, length, length + 3])
        compare_cpu_with_reference(gen, rng.choice([1, 2]), length, hkv * rng.choice([1, 2, 3]), hkv,
                                   rng.randint(1, 6), rng.randint(1, 6), chunk, rng.choice(["full", "head"]),
                                   scale=rng.choice([None, 0.4, 0.0]), noncontiguous=rng.random() < 0.3)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("gate_last", ["full", "head"])
def test_cpu_low_precision_against_float64_reference(gen, dtype, tol, gate_last):
    compare_cpu_with_reference(gen, 1, 37, 4, 2, 16, 8, 8, gate_last, dtype=dtype, tol=tol, noncontiguous=True)


@pytest.mark.parametrize("sub_block,tile_scores", [(2, 1 << 30), (3, 64), (16, 1)])
def test_cpu_sub_blocks_and_query_tiles(gen, monkeypatch, sub_block, tile_scores):
    # Chunks longer than a sub-block join sub-blocks with the log-step scan (also partial sub-blocks:
    # 7 = 3 + 3 + 1); small tile budgets give many query tiles, each masking its own chunks.
    monkeypatch.setattr(cpu_rat, "SUB_BLOCK", sub_block)
    monkeypatch.setattr(cpu_rat, "QUERY_TILE_SCORES", tile_scores)
    for length, chunk in ((45, 7), (32, 8), (30, 30)):
        compare_cpu_with_reference(gen, 2, length, 2, 1, 4, 3, chunk, "full")
        compare_cpu_with_reference(gen, 1, length, 2, 2, 3, 3, chunk, "head")


def test_cpu_batch_zero_and_length_zero(gen):
    compare_cpu_with_reference(gen, 0, 10, 2, 2, 4, 4, 4, "full")
    compare_cpu_with_reference(gen, 2, 0, 2, 2, 4, 4, 4, "head")


def test_gradcheck_float64(gen):
    q, k, v, gk, gv = problem(gen, 1, 7, 2, 1, 3, 2, "full")
    gk, gv = gk * 0.8 + 0.1, gv * 0.8 + 0.1  # away from 0 and 1, where finite differences leave the range
    inputs = [x.requires_grad_(True) for x in (q, k, v, gk, gv)]
    for backend in ("cpu", "reference"):
        assert torch.autograd.gradcheck(
            lambda *xs: glocal.rat_attention(*xs, 3, scale=0.8, return_lse=True, backend=backend), inputs)
    head_gate = torch.rand(1, 7, 1, 1, generator=gen, dtype=F64).mul(0.8).add(0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda *xs: glocal.rat_attention(*xs, head_gate, 2, backend="cpu"), [q, k, v, head_gate])


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gates_zero_and_chunk_one_give_causal_softmax(gen, backend):
    q, k, v, _, _ = problem(gen, 2, 21, 4, 2, 8, 5, "full")
    zero = torch.zeros(1, dtype=F64)
    out, lse = glocal.rat_attention(q, k, v, zero, zero, 1, return_lse=True, backend=backend)
    kr, vr = (x.repeat_interleave(2, dim=2).transpose(1, 2) for x in (k, v))
    want = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), kr, vr, is_causal=True)
    scores = torch.einsum("bqhd,bhkd->bhqk", q, kr) * 8 ** -0.5
    causal = torch.ones(21, 21, dtype=torch.bool).tril()
    want_lse = torch.logsumexp(scores.masked_fill(~causal, -float("inf")), -1).transpose(1, 2)
    assert_close(out, want.transpose(1, 2), 1e-12)
    assert_close(lse, want_lse, 1e-12)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("chunk", [19, 64])
def test_one_chunk_gives_the_pure_recurrence(gen, backend, chunk):
    q, k, v, gk, gv = problem(gen, 2, 19, 2, 1, 4, 3, "full")
    out, lse = glocal.rat_attention(q, k, v, gk, gv, chunk, return_lse=True, backend=backend)
    h, want = torch.zeros(2, 1, 3, dtype=F64), []
    for t in range(19):
        h = gv[:, t] * h + (1 - gv[:, t]) * v[:, t]
        want.append(h.repeat_interleave(2, dim=1))
    assert_close(out, torch.stack(want, 1), 1e-12)
    # the own state is the only key: lse is its score
    kt = gated_running_average(k, gk, chunk).repeat_interleave(2, dim=2)
    assert_close(lse, (q * kt).sum(-1) * 4 ** -0.5, 1e-12)


def test_inputs_are_not_modified_and_default_backend_is_cpu(gen):
    inputs = problem(gen, 1, 20, 2, 2, 4, 4, "head")
    copies = [x.clone() for x in inputs]
    spec, named = glocal.spec.RATSpec(4), dict(zip(("q", "k", "v", "key_gate", "value_gate"), inputs))
    assert glocal.backends.choose_backend(spec, named).NAME == "cpu"
    out = glocal.rat_attention(*inputs, 4)
    out.sum()  # nothing above may have changed an input in place
    for x, c in zip(inputs, copies):
        assert torch.equal(x, c)
    assert_close(out, rat_attention_reference(*inputs, 4), 1e-12)


def test_gates_exactly_zero_and_one_are_accepted(gen):
    q, k, v, _, _ = problem(gen, 1, 8, 1, 1, 2, 2, "head")
    ones = torch.ones(1, 8, 1, 1, dtype=F64)
    # gate 1 keeps the state: with a reset to 0 at each chunk start it stays 0, so k~ = v~ = 0
    out = glocal.rat_attention(q, k, v, ones, ones, 4)
    assert torch.equal(out, torch.zeros_like(out))


def test_memory_stays_within_tiles(monkeypatch):
    # T = 4096, chunk 4: the full T x (T / C) score matrix of 2 heads is 32 MiB. With tiles of at most
    # 2^18 scores (1 MiB; the backward holds two) the peak is the O(T * D) tensors (inputs, outputs,
    # states, their gradients: about 20 of 512 KiB) plus the tiles.
    monkeypatch.setattr(cpu_rat, "QUERY_TILE_SCORES", 1 << 18)
    t, c = 4096, 4
    q, k, v = (torch.randn(1, t, 2, 16, requires_grad=True) for _ in range(3))
    g = torch.full((1, t, 2, 1), 0.5, requires_grad=True)
    peak = peak_cpu_bytes(lambda: glocal.rat_attention(q, k, v, g, g, c).sum().backward())
    full_scores = 2 * t * (t // c) * 4
    assert peak < full_scores / 2, peak


# --- the layer ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 4, 7, 40])
@pytest.mark.parametrize("rope_theta", [10000.0, None])
def test_layer_decoding_equals_forward(gen, chunk, rope_theta):
    torch.manual_seed(0)
    layer = RATAttention(16, 2, chunk, rope_theta=rope_theta).double()
    x = torch.randn(2, 23, 16, generator=gen, dtype=F64)
    want = layer(x)
    cache, outs = layer.new_cache(2), []
    for t in range(23):
        outs.append(layer.step(x[:, t], cache))
        assert cache.length == t + 1
    assert_close(torch.stack(outs, 1), want, 1e-10)
    # O(T / C) states: the completed chunks' and the running one, not one per token.
    assert cache.key_states.length == -(-23 // chunk) and cache.key_states.data.dtype == F64
    # A prefill of the first 9 tokens, then steps, gives the same outputs.
    prefilled = layer.new_cache(2)
    assert_close(layer(x[:, :9], cache=prefilled), want[:, :9], 1e-10)
    assert_close(torch.stack([layer.step(x[:, t], prefilled) for t in range(9, 23)], 1), want[:, 9:], 1e-10)


def test_layer_forward_is_rat_with_inter_chunk_rope(gen):
    # Rotating k by its chunk index before the recurrence equals rotating k~ after it (RAT's order)
    # when the gate is equal on each rotated pair, which is how the layer builds its gate.
    torch.manual_seed(0)
    layer = RATAttention(16, 2, 5).double()
    x = torch.randn(1, 17, 16, generator=gen, dtype=F64)
    q, k, v = layer._qkv(x)
    gate = layer._forget(x)
    assert torch.equal(gate[..., :4], gate[..., 4:])
    chunk_index = torch.arange(17) // 5
    after = rope(gated_running_average(k, gate, 5), chunk_index)
    before = gated_running_average(rope(k, chunk_index), gate, 5)
    assert_close(before, after, 1e-12)
    # The score of a query in chunk c with the state of chunk j depends on c - j only.
    qr, kr = rope(q, chunk_index), after
    s1 = (qr[:, 12] * kr[:, 4]).sum()   # chunk 2 with chunk 0's state
    shifted = torch.arange(17) // 5 + 1
    s2 = (rope(q, shifted)[:, 12] * rope(gated_running_average(k, gate, 5), shifted)[:, 4]).sum()
    assert_close(s1, s2, 1e-12)
    out = glocal.rat_attention(qr, rope(k, chunk_index), v, gate, gate, 5)
    want = layer.proj(torch.sigmoid(layer.output_gate(x)) * out.flatten(-2))
    assert_close(layer(x), want, 1e-12)


def test_layer_gate_bias_initialisation():
    layer = RATAttention(32, 4, 16)
    bias = layer.forget_gate.bias.detach()
    assert bias.shape == (4 * 4,)  # head_dim / 2 gate channels per head with RoPE
    assert (bias >= 0).all() and (bias <= torch.log(torch.tensor(15.0)) + 1e-6).all() and bias.std() > 0
    assert torch.equal(RATAttention(32, 4, 2).forget_gate.bias, torch.zeros(16))  # log(1) for chunk <= 2
    assert RATAttention(32, 4, 16, rope_theta=None).forget_gate.bias.shape == (32,)


def test_layer_backward_reaches_every_parameter(gen):
    torch.manual_seed(0)
    layer = RATAttention(16, 2, 4)
    layer(torch.randn(2, 13, 16, generator=gen)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
