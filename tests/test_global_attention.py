"""Global-token, compressed and channel attention vs their references, identities, patterns, errors, modules."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import sweep_size

import glocal
import glocal.global_attention as ga
from glocal.nn import global_modules as gm

F64 = torch.float64


def rand(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=F64).requires_grad_(True)


def assert_close(got, want, tol=1e-10):
    scale = max(want.abs().max().item(), 1.0)
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert (got - want).abs().max().item() <= tol * scale, (got - want).abs().max().item()


def assert_same_with_grads(gen, fn, ref, inputs):
    out, want = fn(), ref()
    outs = out if isinstance(out, tuple) else (out,)
    wants = want if isinstance(want, tuple) else (want,)
    for o, w in zip(outs, wants):
        assert_close(o, w)
    grads = [torch.randn(o.shape, generator=gen, dtype=F64) for o in outs]
    got = torch.autograd.grad(sum((o * g).sum() for o, g in zip(outs, grads)), inputs)
    exp = torch.autograd.grad(sum((w * g).sum() for w, g in zip(wants, grads)), inputs)
    for a, b in zip(got, exp):
        assert_close(a, b)


@pytest.mark.parametrize("shape,factors", [((10,), 3), ((10, 7), (4, 3)), ((5, 6, 7), (2, 4, 3)), ((8, 8), 1)])
def test_pool_tokens_matches_reference(gen, shape, factors):
    x = torch.randn(2, *shape, 3, 4, generator=gen, dtype=F64)
    assert_close(ga.pool_tokens(x, factors), ga._pool_reference(x, factors), 1e-14)


# --- global tokens ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,kernel,dilation,is_causal", [((13,), 4, 1, True), ((13,), 5, 2, False),
                                                             ((7, 9), (3, 5), (2, 1), False),
                                                             ((6, 7), 3, 1, True), ((3, 4, 5), 3, 1, False)])
def test_global_tokens_learned_match_reference(gen, shape, kernel, dilation, is_causal):
    q, k, v = rand(gen, 2, *shape, 4, 6), rand(gen, 2, *shape, 2, 6), rand(gen, 2, *shape, 2, 5)
    gq, gk, gv = rand(gen, 2, 3, 4, 6), rand(gen, 2, 3, 2, 6), rand(gen, 2, 3, 2, 5)
    kw = dict(dilation=dilation, is_causal=is_causal, scale=0.4, return_global=True)
    assert_same_with_grads(gen, lambda: ga.global_token_attention(q, k, v, kernel, gk, gv, gq, **kw),
                           lambda: ga.global_token_attention_reference(q, k, v, kernel, gk, gv, gq, **kw),
                           (q, k, v, gq, gk, gv))


@pytest.mark.parametrize("shape,pool", [((11,), 4), ((7, 9), (4, 3))])
def test_global_tokens_pooled_match_reference(gen, shape, pool):
    q, k, v = rand(gen, 1, *shape, 2, 6), rand(gen, 1, *shape, 2, 6), rand(gen, 1, *shape, 2, 6)
    assert_same_with_grads(gen, lambda: ga.global_token_attention(q, k, v, 3, pool=pool, return_global=True),
                           lambda: ga.global_token_attention_reference(q, k, v, 3, pool=pool, return_global=True),
                           (q, k, v))


def test_global_tokens_with_full_window_equal_full_attention_over_union(gen):
    # kernel_size = L: every token sees all tokens and the globals, so the result is plain attention
    q, k, v = rand(gen, 1, 9, 2, 4), rand(gen, 1, 9, 2, 4), rand(gen, 1, 9, 2, 4)
    gq, gk, gv = rand(gen, 1, 2, 2, 4), rand(gen, 1, 2, 2, 4), rand(gen, 1, 2, 2, 4)
    out, gout = ga.global_token_attention(q, k, v, 9, gk, gv, gq, return_global=True)
    keys, values = torch.cat([k, gk], 1), torch.cat([v, gv], 1)
    assert_close(out, glocal.attention(q, keys, values))
    assert_close(gout, glocal.attention(gq, keys, values))


@pytest.mark.parametrize("is_causal", [False, True], ids=["non-causal-cross", "causal-cross"])
def test_global_tokens_refuse_cross(is_causal):
    q, kv, g = torch.randn(1, 8, 2, 4), torch.randn(1, 10, 2, 4), torch.randn(1, 2, 2, 4)
    with pytest.raises(ValueError, match="it supports: non-causal self, causal self"):
        ga.global_token_attention(q, kv, kv, 3, g, g, is_causal=is_causal)


def test_global_tokens_refuse_pooled_causal():
    x = torch.randn(1, 8, 2, 4)
    with pytest.raises(ValueError, match="with pooled global tokens does not support the causal self"):
        ga.global_token_attention(x, x, x, 3, pool=2, is_causal=True)


def test_error_global_tokens_source():
    x = torch.randn(1, 8, 2, 4)
    with pytest.raises(ValueError, match="either from global_k/global_v or from pool"):
        ga.global_token_attention(x, x, x, 3)


def test_error_global_k_without_v():
    x = torch.randn(1, 8, 2, 4)
    with pytest.raises(ValueError, match="global_k and global_v must be given together"):
        ga.global_token_attention(x, x, x, 3, global_k=torch.randn(1, 2, 2, 4))


def test_error_global_q_shape():
    x, g = torch.randn(1, 8, 2, 4), torch.randn(1, 2, 2, 4)
    with pytest.raises(ValueError, match=r"global_q must have shape \[B, G, H_q, D_k\]"):
        ga.global_token_attention(x, x, x, 3, g, g, global_q=torch.randn(1, 3, 2, 4))


def test_error_return_global_without_queries():
    x, g = torch.randn(1, 8, 2, 4), torch.randn(1, 2, 2, 4)
    with pytest.raises(ValueError, match="return_global=True needs queries"):
        ga.global_token_attention(x, x, x, 3, g, g, return_global=True)


# --- compressed ----------------------------------------------------------------------------------


@pytest.mark.parametrize("q_shape,kv_shape,reduction", [((13,), (13,), 4), ((7, 9), (7, 9), (2, 3)),
                                                        ((4, 5, 6), (4, 5, 6), (2, 2, 4)), ((6,), (15,), 4),
                                                        ((3, 5), (8, 8), 3)])
def test_compressed_matches_reference(gen, q_shape, kv_shape, reduction):
    q, k, v = rand(gen, 2, *q_shape, 4, 6), rand(gen, 2, *kv_shape, 2, 6), rand(gen, 2, *kv_shape, 2, 5)
    assert_same_with_grads(gen, lambda: ga.compressed_attention(q, k, v, reduction, scale=0.3),
                           lambda: ga.compressed_attention_reference(q, k, v, reduction, scale=0.3), (q, k, v))


def test_compressed_reduction_one_is_full_attention(gen):
    q, k, v = rand(gen, 1, 4, 5, 2, 8), rand(gen, 1, 4, 5, 2, 8), rand(gen, 1, 4, 5, 2, 8)
    want = glocal.attention(q.flatten(1, 2), k.flatten(1, 2), v.flatten(1, 2)).unflatten(1, (4, 5))
    assert_close(ga.compressed_attention(q, k, v, 1), want)


@pytest.mark.parametrize("kv_len", [10, 14], ids=["causal-self", "causal-cross"])
def test_compressed_refuses_causal(kv_len):
    q, kv = torch.randn(1, 10, 2, 4), torch.randn(1, kv_len, 2, 4)
    with pytest.raises(ValueError, match="it supports: non-causal self, non-causal cross"):
        ga.compressed_attention(q, kv, kv, 2, is_causal=True)


def test_error_reduction():
    x = torch.randn(1, 8, 2, 4)
    with pytest.raises(ValueError, match="reduction must be >= 1 on every axis"):
        ga.compressed_attention(x, x, x, 0)


# --- channel -------------------------------------------------------------------------------------


def test_channel_seeded_sweep(gen):
    rng = random.Random(0)
    for _ in range(sweep_size(4)):
        shape = tuple(rng.randint(1, 6) for _ in range(rng.randint(1, 3)))
        hkv = rng.choice([1, 2])
        hq, d = hkv * rng.choice([1, 2]), rng.randint(1, 7)
        q, k, v = rand(gen, 2, *shape, hq, d), rand(gen, 2, *shape, hkv, d), rand(gen, 2, *shape, hkv, d)
        scale = rng.choice([None, 0.7])
        assert_same_with_grads(gen, lambda: ga.channel_attention(q, k, v, scale),
                               lambda: ga.channel_attention_reference(q, k, v, scale), (q, k, v))


@pytest.mark.parametrize("is_causal,kv_len", [(True, 10), (False, 12), (True, 12)],
                         ids=["causal-self", "non-causal-cross", "causal-cross"])
def test_channel_refused_patterns(is_causal, kv_len):
    q, kv = torch.randn(1, 10, 2, 4), torch.randn(1, kv_len, 2, 4)
    with pytest.raises(ValueError, match="it supports: non-causal self\\. "):
        ga.channel_attention(q, kv, kv, is_causal=is_causal)


def test_error_channel_head_dims():
    x = torch.randn(1, 8, 2, 4)
    with pytest.raises(ValueError, match="k and v need the same head dim"):
        ga.channel_attention(x, x, torch.randn(1, 8, 2, 3))


# --- modules -------------------------------------------------------------------------------------


def test_global_token_module_matches_functional(gen):
    torch.manual_seed(0)
    layer = gm.GlobalTokenAttention(16, 2, kernel_size=3, num_global_tokens=3).double()
    x = torch.randn(2, 5, 6, 16, generator=gen, dtype=F64)
    q, k, v = layer.qkv(x).unflatten(-1, (3, 2, 8)).unbind(-3)
    gq, gk, gv = (t.expand(2, -1, -1, -1) for t in layer.qkv(layer.global_tokens[None]).unflatten(-1, (3, 2, 8))
                  .unbind(-3))
    out, gout = ga.global_token_attention_reference(q, k, v, 3, gk, gv, gq, return_global=True)
    y, g = layer(x, return_global=True)
    assert_close(y, layer.proj(out.flatten(-2)))
    assert_close(g, layer.proj(gout.flatten(-2)))


def test_compressed_module_modes_match_functional(gen):
    torch.manual_seed(0)
    x = torch.randn(2, 7, 6, 16, generator=gen, dtype=F64)
    pool = gm.CompressedAttention(16, 2, reduction=(2, 3)).double()
    q, k, v = pool.qkv(x).unflatten(-1, (3, 2, 8)).unbind(-3)
    assert_close(pool(x), pool.proj(ga.compressed_attention_reference(q, k, v, (2, 3)).flatten(-2)))
    conv = gm.CompressedAttention(16, 2, reduction=(2, 3), mode="conv").double()
    padded = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, 1)).permute(0, 3, 1, 2)  # 7 -> 8 rows
    reduced = conv.norm(conv.sr(padded).permute(0, 2, 3, 1).reshape(2, -1, 16))
    q = conv.qkv(x)[..., :16].reshape(2, -1, 2, 8)
    k = conv.qkv(reduced)[..., 16:32].unflatten(-1, (2, 8))
    v = conv.qkv(reduced)[..., 32:].unflatten(-1, (2, 8))
    want = conv.proj(glocal.attention(q, k, v).reshape(2, 7, 6, 16))
    assert_close(conv(x), want)


def test_channel_module_matches_functional(gen):
    torch.manual_seed(0)
    layer = gm.ChannelAttention(16, 2).double()
    with torch.no_grad():
        layer.temperature.copy_(torch.tensor([0.5, 2.0]))
    x = torch.randn(2, 4, 5, 16, generator=gen, dtype=F64)
    q, k, v = layer.qkv(x).unflatten(-1, (3, 2, 8)).unbind(-3)
    qn = q / q.pow(2).sum((1, 2), keepdim=True).sqrt() * layer.temperature[:, None]
    kn = k / k.pow(2).sum((1, 2), keepdim=True).sqrt()
    assert_close(layer(x), layer.proj(ga.channel_attention_reference(qn, kn, v, 1.0).flatten(-2)))


def test_error_module_global_token_source():
    with pytest.raises(ValueError, match="from num_global_tokens \\(learned\\) or from pool"):
        gm.GlobalTokenAttention(16, 2, 3)


def test_error_module_num_global_tokens():
    with pytest.raises(ValueError, match="num_global_tokens must be an int >= 1"):
        gm.GlobalTokenAttention(16, 2, 3, num_global_tokens=0)


def test_error_module_choice():
    with pytest.raises(ValueError, match=r"mode must be one of \['pool', 'conv'\]"):
        gm.CompressedAttention(16, 2, 2, mode="stride")
