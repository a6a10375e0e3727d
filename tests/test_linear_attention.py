"""Linear attention (chunked causal, decoding, cross), InLine and L2ViT local concentration vs their references."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import sweep_size

from glocal import checks
from glocal import linear as la
from glocal.bench.timing import peak_cpu_bytes
from glocal.nn import global_modules as gm

F64 = torch.float64


def rand(gen, *shape, dtype=F64):
    return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_(True)


def assert_close(got, want, tol):
    scale = max(want.abs().max().item(), 1.0)
    assert torch.isfinite(got).all()
    assert (got - want).abs().max().item() <= tol * scale, (got - want).abs().max().item()


def check_against_reference(gen, tq, tkv, hq, hkv, dk, dv, is_causal, feature_map="elu1", normalize=True,
                            scale=None, chunk_size=8, with_state=False, dtype=F64, tol=1e-9):
    q, k, v = rand(gen, 2, tq, hq, dk, dtype=dtype), rand(gen, 2, tkv, hkv, dk, dtype=dtype), \
        rand(gen, 2, tkv, hkv, dv, dtype=dtype)
    inputs = [q, k, v]
    state = None
    if with_state:
        state = (rand(gen, 2, hkv, dk, dv, dtype=dtype), torch.rand(2, hkv, dk, generator=gen, dtype=dtype) + 0.5)
        state[1].requires_grad_(True)
        inputs += list(state)
    out, (kv, ksum) = la.linear_attention(q, k, v, feature_map, is_causal, normalize, scale, chunk_size, state, True)
    ref, (kv_r, ksum_r) = la.linear_attention_reference(q, k, v, feature_map, is_causal, normalize, scale, state,
                                                        True)
    assert out.shape == (2, tq, hq, dv) and out.dtype == dtype
    assert_close(out, ref, tol)
    assert_close(kv, kv_r, tol)
    assert_close(ksum, ksum_r, tol)
    gens = [torch.randn(x.shape, generator=gen, dtype=x.dtype) for x in (out, kv, ksum)]
    loss = sum((a * g).sum() for a, g in zip((out, kv, ksum), gens))
    loss_r = sum((a * g).sum() for a, g in zip((ref, kv_r, ksum_r), gens))
    for got, want in zip(torch.autograd.grad(loss, inputs), torch.autograd.grad(loss_r, inputs)):
        assert_close(got, want, tol)


PATTERNS = [(24, 24, False), (24, 24, True), (13, 29, False), (13, 29, True), (29, 13, True)]


@pytest.mark.parametrize("tq,tkv,is_causal", PATTERNS, ids=["nc-self", "c-self", "nc-cross", "c-cross",
                                                             "c-cross-more-queries"])
def test_every_pattern_matches_reference(gen, tq, tkv, is_causal):
    check_against_reference(gen, tq, tkv, 4, 2, 6, 5, is_causal, with_state=True)


@pytest.mark.parametrize("tq,chunk", [(1, 64), (1, 1), (37, 8), (64, 64), (65, 64), (7, 3)])
def test_causal_lengths_and_chunks(gen, tq, chunk):
    check_against_reference(gen, tq, tq, 2, 2, 5, 3, True, chunk_size=chunk)


def _sigmoid2(x):
    return torch.sigmoid(x) * 2.0


# The identity map gives sign-changing denominators (near 0 the ratio is ill-conditioned): unnormalised only.
@pytest.mark.parametrize("tq,tkv", [(40, 40), (17, 45), (45, 17)])
@pytest.mark.parametrize("normalize", [True, False])
def test_several_steps_of_several_chunks(gen, monkeypatch, tq, tkv, normalize):
    # A step batches BLOCK_TOKENS // chunk chunks; shrink it so these lengths take several steps,
    # including state-only key steps and query steps before the first key (cross).
    monkeypatch.setattr(la, "BLOCK_TOKENS", 8)
    check_against_reference(gen, tq, tkv, 2, 1, 4, 3, True, normalize=normalize, chunk_size=3, with_state=True)


@pytest.mark.parametrize("feature_map,normalize", [("elu1", True), ("elu1", False), ("relu", True), ("relu", False),
                                                   ("identity", False), (_sigmoid2, True), (_sigmoid2, False)])
def test_feature_maps(gen, feature_map, normalize):
    check_against_reference(gen, 21, 21, 2, 1, 4, 4, True, feature_map, normalize, scale=0.5, chunk_size=6)


def test_seeded_sweep(gen):
    rng = random.Random(0)
    for _ in range(sweep_size(6)):
        hkv = rng.choice([1, 2])
        tq = rng.randint(1, 40)
        tkv = rng.choice([tq, rng.randint(1, 40)])
        check_against_reference(gen, tq, tkv, hkv * rng.choice([1, 2]), hkv, rng.randint(1, 6), rng.randint(1, 6),
                                rng.random() < 0.7, rng.choice(["elu1", "relu"]), rng.random() < 0.8,
                                rng.choice([None, 0.3]), rng.randint(1, 16), rng.random() < 0.5)


def test_float32_against_float64_reference(gen):
    q, k, v = (torch.randn(1, 100, 2, 16, generator=gen) for _ in range(3))
    out = la.linear_attention(q, k, v, is_causal=True, chunk_size=16)
    ref = la.linear_attention_reference(q.double(), k.double(), v.double(), is_causal=True)
    assert_close(out.double(), ref, 1e-4)


@pytest.mark.parametrize("is_causal", [False, True])
def test_bfloat16_and_noncontiguous_inputs(gen, is_causal):
    # inputs laid out [B, H, T, D] and transposed: strided, not contiguous
    q, k, v = (torch.randn(1, 2, 50, 8, generator=gen).transpose(1, 2) for _ in range(3))
    ref = la.linear_attention_reference(*(x.double().requires_grad_(True) for x in (q, k, v)), is_causal=is_causal)
    g = torch.randn(ref.shape, generator=gen, dtype=F64)
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        xs = [x.to(dtype).requires_grad_(True) for x in (q, k, v)]
        out = la.linear_attention(*xs, is_causal=is_causal, chunk_size=16)
        assert out.dtype == dtype
        assert_close(out.double(), ref, tol)
        xs_ref = [x.detach().to(dtype).double().requires_grad_(True) for x in (q, k, v)]
        ref_d = la.linear_attention_reference(*xs_ref, is_causal=is_causal)
        want = torch.autograd.grad((ref_d * g).sum(), xs_ref)
        got = torch.autograd.grad((out.double() * g).sum(), xs)
        for a, b in zip(got, want):
            assert_close(a.double(), b, tol)


def test_empty_keys_give_zero_output(gen):
    q = torch.randn(1, 5, 2, 4, generator=gen, dtype=F64)
    kv = torch.randn(1, 0, 2, 4, dtype=F64)
    for is_causal in (False, True):
        assert torch.equal(la.linear_attention(q, kv, kv, is_causal=is_causal), torch.zeros(1, 5, 2, 4, dtype=F64))


def test_zero_denominator_gives_zero_output_and_finite_grads(gen):
    # relu of an all-negative query zeroes every score; a causal-cross query before the first key sees none
    q = (-torch.rand(1, 6, 1, 4, generator=gen, dtype=F64) - 0.1).requires_grad_(True)
    k = torch.randn(1, 4, 1, 4, generator=gen, dtype=F64, requires_grad=True)
    v = torch.randn(1, 4, 1, 3, generator=gen, dtype=F64, requires_grad=True)
    out = la.linear_attention(q, k, v, "relu", is_causal=True, chunk_size=2)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))
    q2 = torch.randn(1, 6, 1, 4, generator=gen, dtype=F64)
    out2 = la.linear_attention(q2, k.detach(), v.detach(), is_causal=True)
    assert torch.equal(out2[:, :2], torch.zeros(1, 2, 1, 3, dtype=F64))  # queries 0, 1 see no key
    assert (out2[:, 2:].abs() > 0).all()


@pytest.mark.parametrize("hq,hkv,normalize", [(2, 2, True), (4, 1, True), (2, 2, False)])
def test_decoding_token_by_token_equals_causal_forward(gen, hq, hkv, normalize):
    q, k, v = rand(gen, 2, 19, hq, 5), rand(gen, 2, 19, hkv, 5), rand(gen, 2, 19, hkv, 3)
    want = la.linear_attention(q, k, v, is_causal=True, normalize=normalize, chunk_size=4)
    state, outs = None, []
    for t in range(19):
        out_t, state = la.linear_attention_step(q[:, t], k[:, t], v[:, t], state, normalize=normalize)
        outs.append(out_t)
    assert_close(torch.stack(outs, 1), want, 1e-10)
    _, full_state = la.linear_attention(q, k, v, is_causal=True, return_state=True)
    assert_close(state[0], full_state[0], 1e-10)
    assert_close(state[1], full_state[1], 1e-10)


def test_prefill_then_decode_equals_one_call(gen):
    q, k, v = rand(gen, 1, 30, 2, 4), rand(gen, 1, 30, 2, 4), rand(gen, 1, 30, 2, 4)
    want = la.linear_attention(q, k, v, is_causal=True)
    head, state = la.linear_attention(q[:, :20], k[:, :20], v[:, :20], is_causal=True, return_state=True)
    tail = la.linear_attention(q[:, 20:25], k[:, 20:25], v[:, 20:25], is_causal=True, initial_state=state)
    step, _ = la.linear_attention_step(q[:, 25], k[:, 25], v[:, 25], la.linear_attention(
        q[:, :25], k[:, :25], v[:, :25], is_causal=True, return_state=True)[1])
    assert_close(torch.cat([head, tail], 1), want[:, :25], 1e-10)
    assert_close(step, want[:, 25], 1e-10)


def test_causal_memory_does_not_grow_with_length():
    # Forward + backward from T=1024 to T=4096 (both past one step of la.BLOCK_TOKENS): the growth
    # is the tensors that must grow (output, dq, dk, dv: 4 of [T, H, D], and the [T, H] denominator)
    # and nothing per chunk: storing one [H, D, D] state per chunk would add 96 * 8 KiB = 768 KiB.
    def peak(t):
        q, k, v = (torch.randn(1, t, 2, 32, requires_grad=True) for _ in range(3))
        return peak_cpu_bytes(lambda: la.linear_attention(q, k, v, is_causal=True, chunk_size=32).sum().backward())
    one_tensor = (4096 - 1024) * 2 * 32 * 4
    denominator = (4096 - 1024) * 2 * 4
    assert peak(4096) - peak(1024) - 4 * one_tensor - denominator < one_tensor // 4


# --- InLine -------------------------------------------------------------------------------------


@pytest.mark.parametrize("q_shape,kv_shape", [((17,), (17,)), ((5, 7), (5, 7)), ((6,), (11,)), ((3, 4), (5, 2))])
@pytest.mark.parametrize("feature_map", ["identity", "elu1"])
def test_inline_matches_reference(gen, q_shape, kv_shape, feature_map):
    q, k, v = rand(gen, 2, *q_shape, 4, 6), rand(gen, 2, *kv_shape, 2, 6), rand(gen, 2, *kv_shape, 2, 5)
    out = la.inline_attention(q, k, v, feature_map, scale=0.2)
    ref = la.inline_attention_reference(q, k, v, feature_map, scale=0.2)
    assert out.shape == (2, *q_shape, 4, 5)
    assert_close(out, ref, 1e-10)
    g = torch.randn(out.shape, generator=gen, dtype=F64)
    for a, b in zip(torch.autograd.grad((out * g).sum(), (q, k, v)), torch.autograd.grad((ref * g).sum(), (q, k, v))):
        assert_close(a, b, 1e-10)


def test_inline_weights_sum_to_one(gen):
    # out for a constant value vector is that vector: the centred weights of every query sum to 1
    q, k = torch.randn(1, 9, 2, 4, generator=gen, dtype=F64), torch.randn(1, 9, 2, 4, generator=gen, dtype=F64)
    v = torch.ones(1, 9, 2, 3, dtype=F64) * 2.5
    assert_close(la.inline_attention(q, k, v), v, 1e-12)


def test_inline_refuses_causal(gen):
    x = torch.randn(1, 8, 2, 4, generator=gen)
    with pytest.raises(ValueError, match="non-causal self, non-causal cross"):
        la.inline_attention(x, x, x, is_causal=True)


def test_inline_needs_a_key(gen):
    with pytest.raises(ValueError, match="needs at least one key"):
        la.inline_attention(torch.randn(1, 3, 2, 4), torch.randn(1, 0, 2, 4), torch.randn(1, 0, 2, 4))


# --- L2ViT local concentration -------------------------------------------------------------------


@pytest.mark.parametrize("shape,kernel,dilation", [((19,), 5, 2), ((6, 7), (3, 5), 1)])
def test_local_concentration_matches_reference(gen, shape, kernel, dilation):
    q, k, v = rand(gen, 2, *shape, 4, 6), rand(gen, 2, *shape, 2, 6), rand(gen, 2, *shape, 2, 5)
    temperature = torch.rand(4, generator=gen, dtype=F64) + 0.1
    for den_min in (1e-3, 10.0):  # clamp inactive and active
        out = la.local_concentration_attention(q, k, v, kernel, dilation, temperature, den_min)
        ref = la.local_concentration_attention_reference(q, k, v, kernel, dilation, temperature, den_min)
        assert_close(out, ref, 1e-10)
        g = torch.randn(out.shape, generator=gen, dtype=F64)
        got, want = (torch.autograd.grad((o * g).sum(), (q, k, v)) for o in (out, ref))
        for a, b in zip(got, want):
            assert_close(a, b, 1e-10)


@pytest.mark.parametrize("is_causal,kv_len", [(True, 10), (False, 12), (True, 12)],
                         ids=["causal-self", "non-causal-cross", "causal-cross"])
def test_local_concentration_refused_patterns(is_causal, kv_len):
    q = torch.randn(1, 10, 2, 4)
    kv = torch.randn(1, kv_len, 2, 4)
    with pytest.raises(ValueError, match="it supports: non-causal self"):
        la.local_concentration_attention(q, kv, kv, 3, is_causal=is_causal)


# --- errors (one test per message) -----------------------------------------------------------------


def test_error_unknown_feature_map():
    x = torch.randn(1, 4, 1, 2)
    with pytest.raises(ValueError, match="unknown feature_map 'softmax'"):
        la.linear_attention(x, x, x, feature_map="softmax")


def test_error_feature_map_type():
    x = torch.randn(1, 4, 1, 2)
    with pytest.raises(TypeError, match="feature_map must be a name or a callable"):
        la.linear_attention(x, x, x, feature_map=3)


def test_error_chunk_size():
    x = torch.randn(1, 4, 1, 2)
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        la.linear_attention(x, x, x, is_causal=True, chunk_size=0)


def test_error_state_shape():
    x = torch.randn(1, 4, 2, 3)
    with pytest.raises(ValueError, match=r"initial_state must be a pair \(kv \[B, H_kv, D_k, D_v\]"):
        la.linear_attention(x, x, x, initial_state=(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 2)))


def test_error_step_rank():
    x = torch.randn(1, 4, 2, 3)
    with pytest.raises(ValueError, match=r"linear_attention_step takes q_t of shape \[B, H, D\]"):
        la.linear_attention_step(x, x[:, 0], x[:, 0])


def test_error_l2vit_temperature_shape():
    x = torch.randn(1, 8, 2, 4)
    with pytest.raises(ValueError, match=r"temperature must be a float or a tensor of shape \[H_q\]"):
        la.local_concentration_attention(x, x, x, 3, temperature=torch.ones(3))


def test_error_l2vit_temperature_type():
    x = torch.randn(1, 8, 2, 4)
    with pytest.raises(TypeError, match="temperature must be None, a float"):
        la.local_concentration_attention(x, x, x, 3, temperature="hot")


def test_error_l2vit_denominator_min():
    x = torch.randn(1, 8, 2, 4)
    with pytest.raises(ValueError, match="denominator_min must be a number > 0"):
        la.local_concentration_attention(x, x, x, 3, denominator_min=0.0)


def test_pattern_error_names_supported_patterns():
    with pytest.raises(ValueError, match=r"does not support the causal cross attention pattern .* it supports: "
                                         r"non-causal self, non-causal cross\. "):
        checks.pattern_supported("m", True, True, ("non-causal self", "non-causal cross"))


# --- modules ---------------------------------------------------------------------------------------


def test_linear_module_step_equals_forward(gen):
    torch.manual_seed(0)
    layer = gm.LinearAttention(16, 2, is_causal=True, chunk_size=4).double()
    x = torch.randn(2, 11, 16, generator=gen, dtype=F64)
    want = layer(x)
    cache = layer.new_cache(2)
    outs = [layer.step(x[:, t], cache) for t in range(11)]
    assert_close(torch.stack(outs, 1), want, 1e-10)
    prefilled = layer.new_cache(2)
    assert_close(layer(x[:, :4], cache=prefilled), want[:, :4], 1e-10)
    assert_close(torch.stack([layer.step(x[:, t], prefilled) for t in range(4, 11)], 1), want[:, 4:], 1e-10)


def test_inline_and_l2vit_modules_match_functional(gen):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 16, generator=gen, dtype=F64)
    inline = gm.InLineAttention(16, 2).double()
    q, k, v = inline.qkv(x).unflatten(-1, (3, 2, 8)).unbind(-3)
    want = inline.proj(la.inline_attention_reference(q, k, v, scale=8 ** -0.5 / 30).flatten(-2))
    assert_close(inline(x), want, 1e-10)
    l2 = gm.LocalConcentrationAttention(16, 2, kernel_size=3).double()
    q, k, v = l2.qkv(x).unflatten(-1, (3, 2, 8)).unbind(-3)
    want = l2.proj(la.local_concentration_attention_reference(q, k, v, 3, 1, l2.temperature, 100.0).flatten(-2))
    assert_close(l2(x), want, 1e-10)
