"""Decoding caches (glocal.decoding) and model-level decoding: each cache against a brute-force loop or its op's
causal forward, ring-buffer wrap-around at every offset, re-indexed positions, save and resume, memory bounds,
modules and HybridDecoder stepping token by token against their forward, every error message."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import raises

import glocal
from glocal.decoding import (
    DecoderCache,
    KVCache,
    LinearAttentionState,
    MoBACache,
    RATCache,
    SlidingWindowCache,
)
from glocal.masks import block_means
from glocal.nn.rope import rope

F64 = torch.float64


def assert_close(got, want, tol=1e-10):
    assert got.shape == want.shape, (got.shape, want.shape)
    got, want = got.detach(), want.detach()
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    err = float((got - want).abs().max()) if want.numel() else 0.0
    assert err <= tol * scale, f"max error {err:.3g} > {tol:.1g}"


def tokens(gen, length, heads=2, kv_heads=2, dim=8, value_dim=None, dtype=F64):
    value_dim = value_dim or dim
    q = torch.randn(1, length, heads, dim, generator=gen, dtype=dtype)
    k = torch.randn(1, length, kv_heads, dim, generator=gen, dtype=dtype)
    v = torch.randn(1, length, kv_heads, value_dim, generator=gen, dtype=dtype)
    return q, k, v


def brute_force(q_t, k, v, positions, key_positions, query_position, rope_theta):
    """One query over the keys at stream indices ``positions`` (a list), rotated to ``key_positions`` with the
    query at ``query_position`` (RoPE with ``rope_theta``, None: none); a plain softmax, per head (GQA by
    repeating kv heads)."""
    keys, values = k[:, positions], v[:, positions]
    q = q_t[:, None]
    if rope_theta is not None:
        keys = rope(keys, torch.tensor(key_positions), rope_theta)
        q = rope(q, torch.tensor([query_position]), rope_theta)
    group = q.shape[2] // keys.shape[2]
    keys, values = keys.repeat_interleave(group, 2), values.repeat_interleave(group, 2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, keys) * q.shape[-1] ** -0.5
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), values)[:, 0]


def window_keys(p, window, sinks, dilation=1):
    """The stream positions query p attends: the sinks, then the dilated window ending at p, each once."""
    span = (window - 1) * dilation + 1
    recent = [j for j in range(max(sinks, p - span + 1), p + 1) if (p - j) % dilation == 0]
    return list(range(min(sinks, p + 1))) + recent


# ---- SlidingWindowCache ----------------------------------------------------------------------------

@pytest.mark.parametrize("window,sinks,dilation", [(5, 0, 1), (5, 2, 1), (1, 3, 1), (4, 1, 2), (3, 0, 3), (6, 6, 1)])
@pytest.mark.parametrize("heads,kv_heads,value_dim", [(2, 2, 8), (4, 2, 6)])
def test_window_absolute_positions_every_ring_offset(gen, window, sinks, dilation, heads, kv_heads, value_dim):
    span = (window - 1) * dilation + 1
    length = sinks + 3 * span + 2  # the ring wraps around several times: every slot is written at every offset
    q, k, v = tokens(gen, length, heads, kv_heads, value_dim=value_dim)
    cache = SlidingWindowCache(window, sinks, dilation=dilation, rope_theta=100.0)
    for p in range(length):
        got = cache.step(q[:, p], k[:, p], v[:, p])
        keys = window_keys(p, window, sinks, dilation)
        assert cache.kept_positions().tolist() == keys
        assert_close(got, brute_force(q[:, p], k, v, keys, keys, p, 100.0))


@pytest.mark.parametrize("window,dilation", [(4, 1), (3, 2), (7, 1)])
def test_window_without_sinks_equals_causal_neighborhood_attention(gen, window, dilation):
    q, k, v = tokens(gen, 30, 4, 2)
    want = glocal.na1d(q, k, v, kernel_size=window, dilation=dilation, is_causal=True)
    cache = SlidingWindowCache(window, dilation=dilation)
    got = torch.stack([cache.step(q[:, t], k[:, t], v[:, t]) for t in range(30)], 1)
    assert_close(got, want)


@pytest.mark.parametrize("window,sinks", [(4, 2), (6, 1), (3, 0), (1, 2)])
def test_window_cache_positions_are_reindexed(gen, window, sinks):
    # "cache": the kept tokens at slots 0 .. n - 1 (sinks first, the window oldest to newest), the query at n - 1,
    # q and k before RoPE.
    length = 4 * (window + sinks) + 3
    q, k, v = tokens(gen, length)
    cache = SlidingWindowCache(window, sinks, positions="cache", rope_theta=50.0)
    for p in range(length):
        got = cache.step(q[:, p], k[:, p], v[:, p])
        keys = window_keys(p, window, sinks)
        slots = list(range(len(keys)))
        assert_close(got, brute_force(q[:, p], k, v, keys, slots, len(keys) - 1, 50.0))


@pytest.mark.parametrize("positions", ["absolute", "cache"])
@pytest.mark.parametrize("prefill", [1, 5, 13, 40])
def test_window_extend_then_steps_equals_steps(gen, positions, prefill):
    q, k, v = tokens(gen, 50)
    stepped = SlidingWindowCache(6, 2, positions=positions, rope_theta=10000.0)
    want = [stepped.step(q[:, t], k[:, t], v[:, t]) for t in range(50)]
    cache = SlidingWindowCache(6, 2, positions=positions, rope_theta=10000.0)
    cache.extend(k[:, :prefill], v[:, :prefill])
    assert cache.length == prefill
    for t in range(prefill, 50):
        assert_close(cache.step(q[:, t], k[:, t], v[:, t]), want[t])


def test_window_memory_is_bounded(gen):
    q, k, v = tokens(gen, 200, dtype=torch.float32)
    cache = SlidingWindowCache(16, 4, positions="cache", rope_theta=10000.0)
    sizes = []
    for t in range(200):
        cache.step(q[:, t], k[:, t], v[:, t])
        sizes.append(cache.nbytes())
    # Keys and values of 20 slots, and the 4 sinks' keys unrotated (re-indexing rotates them from there).
    assert len(set(sizes[4:])) == 1 and sizes[-1] == (2 * (16 + 4) + 4) * 2 * 8 * 4


def test_window_lse_and_scale(gen):
    q, k, v = tokens(gen, 9)
    cache = SlidingWindowCache(4)
    cache.extend(k, v)
    out, lse = cache.attend(q[:, -1], scale=0.3, return_lse=True)
    scores = torch.einsum("bhd,bkhd->bhk", q[:, -1], k[:, 5:]) * 0.3
    assert_close(lse, scores.logsumexp(-1))
    assert_close(out, torch.einsum("bhk,bkhd->bhd", scores.softmax(-1), v[:, 5:]))


# ---- the other caches against their ops --------------------------------------------------------------

def test_kv_cache_equals_causal_attention(gen):
    q, k, v = tokens(gen, 20, 4, 2, value_dim=5)
    want = glocal.attention(q, k, v, is_causal=True)
    cache = KVCache()
    cache.extend(k[:, :7], v[:, :7])
    got = torch.stack([cache.step(q[:, t], k[:, t], v[:, t]) for t in range(7, 20)], 1)
    assert_close(got, want[:, 7:])


@pytest.mark.parametrize("feature_map", ["elu1", "relu"])
def test_linear_state_equals_causal_linear_attention(gen, feature_map):
    q, k, v = tokens(gen, 25, 4, 2, value_dim=6)
    want = glocal.linear_attention(q, k, v, feature_map, is_causal=True)
    state = LinearAttentionState(feature_map)
    state.extend(k[:, :9], v[:, :9])
    got = torch.stack([state.step(q[:, t], k[:, t], v[:, t]) for t in range(9, 25)], 1)
    assert_close(got, want[:, 9:])
    assert state.nbytes() == (2 * 8 * 6 + 2 * 8) * 8  # O(1): kv and ksum only


@pytest.mark.parametrize("chunk", [1, 4, 7])
@pytest.mark.parametrize("prefill", [0, 3, 8])
def test_rat_cache_equals_rat_attention(gen, chunk, prefill):
    q, k, v = tokens(gen, 23, 4, 2, value_dim=6)
    gk = torch.rand(1, 23, 2, 8, generator=gen, dtype=F64)
    gv = torch.rand(1, 23, 2, 1, generator=gen, dtype=F64)
    want = glocal.rat_attention(q, k, v, gk, gv, chunk)
    cache = RATCache(chunk)
    if prefill:
        cache.extend(k[:, :prefill], v[:, :prefill], gk[:, :prefill], gv[:, :prefill])
    got = torch.stack([cache.step(q[:, t], k[:, t], v[:, t], gk[:, t], gv[:, t]) for t in range(prefill, 23)], 1)
    assert_close(got, want[:, prefill:])
    assert cache.key_states.length == -(-23 // chunk)  # one state per chunk, not per token


@pytest.mark.parametrize("pieces", [(5, 9), (1, 1, 3), (4, 4, 1), (13,)])
def test_rat_cache_extend_in_pieces_equals_steps(gen, pieces):
    """extend from the middle of a chunk, across whole chunks and into the next one, equals step by step."""
    q, k, v = tokens(gen, 20, 4, 2, value_dim=6)
    gk = torch.rand(1, 20, 2, 8, generator=gen, dtype=F64)
    gv = torch.rand(1, 20, 2, 1, generator=gen, dtype=F64)
    stepped = RATCache(4)
    want = [stepped.step(q[:, t], k[:, t], v[:, t], gk[:, t], gv[:, t]) for t in range(20)]
    cache, at = RATCache(4), 0
    for n in pieces:
        cache.extend(k[:, at:at + n], v[:, at:at + n], gk[:, at:at + n], gv[:, at:at + n])
        at += n
    reference = RATCache(4)  # stepped to the same point: the same states, slot for slot
    for t in range(at):
        reference.step(q[:, t], k[:, t], v[:, t], gk[:, t], gv[:, t])
    assert cache.length == reference.length == at
    assert_close(cache.key_states.view(), reference.key_states.view())
    assert_close(cache.value_states.view(), reference.value_states.view())
    got = torch.stack([cache.step(q[:, t], k[:, t], v[:, t], gk[:, t], gv[:, t]) for t in range(at, 20)], 1)
    assert_close(got, torch.stack(want[at:], 1))


@pytest.mark.parametrize("routing", [{"top_k": 1}, {"top_k": 3}, {"threshold": 0.6}])
def test_moba_cache_equals_causal_moba_attention(gen, routing):
    q, k, v = tokens(gen, 45, 4, 2, value_dim=6)
    want = glocal.moba_attention(q, k, v, 6, is_causal=True, **routing)
    cache = MoBACache(6, **routing)
    cache.extend(k[:, :10], v[:, :10])
    got = []
    for t in range(10, 45):
        got.append(cache.step(q[:, t], k[:, t], v[:, t]))
        assert_close(cache.block_means(), block_means(k[:, :t + 1], (6,)))
    assert_close(torch.stack(got, 1), want[:, 10:])


def test_float32_caches_match_float64(gen):
    q, k, v = tokens(gen, 40)
    for make in (lambda: SlidingWindowCache(7, 2, positions="cache", rope_theta=10000.0), KVCache,
                 lambda: MoBACache(8, top_k=2), LinearAttentionState):
        exact, single = make(), make()
        for t in range(40):
            want = exact.step(q[:, t], k[:, t], v[:, t])
            got = single.step(q[:, t].float(), k[:, t].float(), v[:, t].float())
        assert got.dtype == torch.float32
        assert_close(got.double(), want, 1e-4)


# ---- save and resume ---------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: SlidingWindowCache(5, 2, positions="cache", rope_theta=100.0), KVCache,
                                  lambda: MoBACache(4, top_k=2), LinearAttentionState],
                         ids=["window", "kv", "moba", "linear"])
def test_save_and_resume_mid_stream(gen, make):
    q, k, v = tokens(gen, 30)
    cache = make()
    want = [cache.step(q[:, t], k[:, t], v[:, t]) for t in range(30)]
    half = make()
    for t in range(13):
        half.step(q[:, t], k[:, t], v[:, t])
    buffer = io.BytesIO()
    torch.save(half.state_dict(), buffer)
    buffer.seek(0)
    resumed = make()
    resumed.load_state_dict(torch.load(buffer))
    assert resumed.length == 13
    for t in range(13, 30):
        assert_close(resumed.step(q[:, t], k[:, t], v[:, t]), want[t], 0.0)


def test_rat_save_and_resume(gen):
    q, k, v = tokens(gen, 20)
    g = torch.rand(1, 20, 2, 8, generator=gen, dtype=F64)
    cache = RATCache(3)
    want = [cache.step(q[:, t], k[:, t], v[:, t], g[:, t], g[:, t]) for t in range(20)]
    half = RATCache(3)
    half.extend(k[:, :8], v[:, :8], g[:, :8], g[:, :8])
    resumed = RATCache(3)
    resumed.load_state_dict(half.state_dict())
    assert_close(torch.stack([resumed.step(q[:, t], k[:, t], v[:, t], g[:, t], g[:, t]) for t in range(8, 20)]),
                 torch.stack(want[8:]))


def test_reset_starts_a_new_stream(gen):
    q, k, v = tokens(gen, 10)
    cache = SlidingWindowCache(4, 1)
    first = [cache.step(q[:, t], k[:, t], v[:, t]) for t in range(10)]
    cache.reset()
    assert cache.length == 0 and cache.nbytes() == 0
    again = [cache.step(q[:, t], k[:, t], v[:, t]) for t in range(10)]
    assert_close(torch.stack(again), torch.stack(first), 0.0)


# ---- modules and models ------------------------------------------------------------------------------

def _modules():
    nn = glocal.nn
    return {
        "attention": lambda: nn.Attention(16, 2, is_causal=True),
        "neighborhood": lambda: nn.NeighborhoodAttention1D(16, 2, kernel_size=3, dilation=2, is_causal=True),
        "linear": lambda: nn.LinearAttention(16, 2, is_causal=True),
        "parallax": lambda: nn.ParallaxAttention(16, 2, window_size=6),
        "parallax-all": lambda: nn.ParallaxAttention(16, 2, window_size=None),
        "rat": lambda: nn.RATAttention(16, 2, 4),
        "window": lambda: nn.schedules.ScheduledAttention("L", 16, 2, is_causal=True, window=5),
        "window-sinks": lambda: nn.schedules.ScheduledAttention("L", 16, 2, is_causal=True, window=4, sinks=2),
        "global": lambda: nn.schedules.ScheduledAttention("G", 16, 2, is_causal=True),
        "moba": lambda: nn.schedules.ScheduledAttention("M", 16, 2, is_causal=True, block_size=4, top_k=2),
        "linear-scheduled": lambda: nn.schedules.ScheduledAttention("N", 16, 2, is_causal=True, rope_theta=None),
        "moh": lambda: nn.MoHAttention(16, 4, shared_heads=1, routed_top_k=2, is_causal=True),
        "moh-norm": lambda: nn.MoHAttention(16, 4, shared_heads=2, routed_top_k=1, router="query_norm",
                                            is_causal=True),
    }


@pytest.mark.parametrize("name", list(_modules()))
@pytest.mark.parametrize("prefill", [0, 6])
def test_module_steps_equal_the_causal_forward(gen, name, prefill):
    torch.manual_seed(0)
    layer = _modules()[name]().double()
    x = torch.randn(2, 19, 16, generator=gen, dtype=F64)
    want = layer(x)
    cache = layer.new_cache(2)
    got = [layer(x[:, :prefill], cache=cache)] if prefill else []
    got += [layer.step(x[:, t], cache)[:, None] for t in range(prefill, 19)]
    assert cache.length == 19
    assert_close(torch.cat(got, 1), want)


HYBRIDS = [dict(global_branch="full"), dict(global_branch="full", combine="gate"),
           dict(global_branch="tokens", num_global_tokens=3), dict(global_branch="tokens", num_global_tokens=3,
                                                                   combine="gate"),
           dict(global_branch="compressed", reduction=3), dict(global_branch="compressed", reduction=3, combine="gate"),
           dict(global_branch="compressed", reduction=2, dilation=2, head_branches=("both", "global", "local", "both")),
           dict(global_branch="linear", combine="gate"),
           dict(global_branch="moba", block_size=3, top_k=2), dict(global_branch="moba", block_size=4, top_k=2,
                                                                   combine="gate"),
           dict(global_branch="moba", block_size=3, top_k=2, dilation=2, rope_theta=100.0,
                head_branches=("both", "local", "global", "both"))]


@pytest.mark.parametrize("options", HYBRIDS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_hybrid_attention_steps_equal_the_causal_forward(gen, options):
    torch.manual_seed(0)
    layer = glocal.nn.HybridAttention(32, 4, kernel_size=3, is_causal=True, **options).double()
    if layer.gate_logit is not None:
        with torch.no_grad():
            layer.gate_logit.normal_(generator=gen)
    x = torch.randn(2, 23, 32, generator=gen, dtype=F64)
    want = layer(x)
    cache = layer.new_cache(2)
    got = [layer(x[:, :7], cache=cache)] + [layer.step(x[:, t], cache)[:, None] for t in range(7, 23)]
    assert_close(torch.cat(got, 1), want)
    resumed = layer.new_cache(2)
    resumed.load_state_dict(cache.state_dict())
    x_next = torch.randn(2, 16, 32, generator=gen, dtype=F64)
    assert_close(layer.step(x_next[:, 0], resumed), layer.step(x_next[:, 0], cache), 0.0)


def test_decoder_steps_equal_the_forward_and_resume(gen):
    torch.manual_seed(0)
    dec = glocal.nn.HybridDecoder(16, 2, depth=8, pattern="LGNMRPHL",
                                  settings={"L": {"window": 5, "sinks": 2}, "M": {"block_size": 4, "top_k": 2},
                                            "R": {"chunk_size": 3}, "P": {"window_size": 6},
                                            "H": {"kernel_size": 3, "reduction": 2}}).double()
    x = torch.randn(2, 21, 16, generator=gen, dtype=F64)
    want = dec(x)
    cache = dec.new_cache(2)
    got = [dec(x[:, :8], cache=cache)] + [dec.step(x[:, t], cache)[:, None] for t in range(8, 14)]
    saved = io.BytesIO()
    torch.save(cache.state_dict(), saved)
    got += [dec.step(x[:, t], cache)[:, None] for t in range(14, 21)]
    assert_close(torch.cat(got, 1), want)
    saved.seek(0)
    resumed = dec.new_cache(2)
    resumed.load_state_dict(torch.load(saved))
    assert resumed.length == 14
    assert_close(torch.stack([dec.step(x[:, t], resumed) for t in range(14, 21)], 1), want[:, 14:])


def test_decoder_with_a_routed_layer_after_a_prefill(gen):
    torch.manual_seed(0)
    dec = glocal.nn.HybridDecoder(16, 2, depth=2, pattern="FL", settings={"F": {"window": 4, "sinks": 1, "pool": 2},
                                                                          "L": {"window": 3}}).double().eval()
    x = torch.randn(2, 12, 16, generator=gen, dtype=F64)
    want = dec(x)
    cache = dec.new_cache(2)
    got = [dec(x[:, :5], cache=cache)] + [dec.step(x[:, t], cache)[:, None] for t in range(5, 12)]
    assert_close(torch.cat(got, 1), want)


def test_decoder_cache_positions_reindex_the_window(gen):
    # With positions="cache" an L layer's step is the dense reference over the kept tokens at their slots.
    torch.manual_seed(0)
    layer = glocal.nn.schedules.ScheduledAttention("L", 16, 2, is_causal=True, window=4, sinks=1,
                                                   rope_theta=100.0).double()
    x = torch.randn(1, 15, 16, generator=gen, dtype=F64)
    q, k, v = layer.qkv(x).unflatten(-1, (3, 2, 8)).unbind(-3)
    cache = layer.new_cache(1, positions="cache")
    for p in range(15):
        got = layer.step(x[:, p], cache)
        keys = window_keys(p, 4, 1)
        want = layer.proj(brute_force(q[:, p], k, v, keys, list(range(len(keys))), len(keys) - 1, 100.0).flatten(-2))
        assert_close(got, want)


def test_decoder_cache_is_bounded_for_local_layers(gen):
    dec = glocal.nn.HybridDecoder(16, 2, depth=2, pattern="LN", settings={"L": {"window": 4}})
    cache = dec.new_cache(1)
    sizes = [(dec.step(torch.randn(1, 16, generator=gen), cache), cache.nbytes())[1] for _ in range(30)]
    assert len(set(sizes[4:])) == 1 and isinstance(cache, DecoderCache) and cache.length == 30


# ---- errors: one test per message, and a refused call leaves the cache as it was ---------------------

def _filled(gen):
    cache = SlidingWindowCache(4, 1)
    q, k, v = tokens(gen, 3, dtype=torch.float32)
    for t in range(3):
        cache.step(q[:, t], k[:, t], v[:, t])
    return cache, q[:, 0], k[:, 0], v[:, 0]


def _unchanged(cache, before):
    after = cache.state_dict()
    assert after["length"] == before["length"]
    for name, tensor in before["tensors"].items():
        assert (after["tensors"][name] is None) if tensor is None else torch.equal(after["tensors"][name], tensor)


@pytest.mark.parametrize("name,value,low", [("window", 0, 1), ("sinks", -1, 0), ("dilation", 0, 1)])
def test_count_too_small(name, value, low):
    kwargs = {"window": 4, name: value}
    with raises(ValueError, f"{name} must be >= {low}", f"got {name}={value!r}", f"Pass e.g. {name}="):
        SlidingWindowCache(**kwargs)


@pytest.mark.parametrize("make", [lambda: SlidingWindowCache(4, dilation=1.5), lambda: RATCache("16"),
                                  lambda: MoBACache(True, top_k=2)])
def test_count_not_an_int(make):
    with raises(TypeError, "must be an int", "of type", "Pass e.g."):
        make()


def test_bad_positions():
    with raises(ValueError, "positions must be 'absolute'", "positions='slot'", "Pass one of them"):
        SlidingWindowCache(4, positions="slot")


def test_bad_rope_theta():
    with raises(ValueError, "rope_theta must be a number > 0", "rope_theta=-1.0"):
        SlidingWindowCache(4, rope_theta=-1.0)


def test_cache_positions_need_rope():
    with raises(ValueError, "positions='cache' re-indexes the keys", "rope_theta=None", "positions='absolute'"):
        SlidingWindowCache(4, positions="cache")


def test_cache_positions_need_a_contiguous_window():
    with raises(ValueError, "consecutive slots", "dilation=2", "positions='absolute'"):
        SlidingWindowCache(4, positions="cache", rope_theta=1e4, dilation=2)


def test_odd_head_dim_with_rope():
    with raises(ValueError, "needs an even head dim", "k.shape[-1]=7"):
        SlidingWindowCache(4, rope_theta=1e4).append(torch.zeros(1, 2, 7), torch.zeros(1, 2, 7))


def test_token_of_the_wrong_rank(gen):
    cache, q, k, v = _filled(gen)
    before = cache.state_dict()
    with raises(ValueError, "keys and values of one token [B, H_kv, D]", "k.shape=(2, 8)", "k[:, t]"):
        cache.append(k[0], v[0])
    _unchanged(cache, before)


def test_key_and_value_disagree(gen):
    cache, q, k, v = _filled(gen)
    before = cache.state_dict()
    with raises(ValueError, "k and v must agree", "k: (1, 2, 8)", "v: (1, 3, 8)"):
        cache.append(k, torch.zeros(1, 3, 8))
    _unchanged(cache, before)


@pytest.mark.parametrize("bad", ["dtype", "heads", "batch", "device"])
def test_token_of_another_layout(gen, bad):
    cache, q, k, v = _filled(gen)
    before = cache.state_dict()
    k2, v2 = {"dtype": (k.double(), v.double()), "heads": (k[:, :1], v[:, :1]),
              "batch": (k.expand(2, -1, -1), v.expand(2, -1, -1)),
              "device": (k.to("meta"), v.to("meta"))}[bad]
    with raises(ValueError, "this cache holds tokens of batch 1, 2 kv heads, key dim 8", "reset() the cache"):
        cache.step(q, k2, v2)
    _unchanged(cache, before)


def test_attend_an_empty_cache(gen):
    with raises(ValueError, "attend needs at least one cached token", "append(k_t, v_t)"):
        KVCache().attend(torch.zeros(1, 2, 8))


def test_query_that_does_not_match(gen):
    cache, q, k, v = _filled(gen)
    before = cache.state_dict()
    with raises(ValueError, "the query must match the cache", "q.shape=(1, 3, 8)"):
        cache.step(torch.zeros(1, 3, 8), k, v)
    _unchanged(cache, before)


def test_query_of_a_chunk():
    cache = KVCache()
    cache.append(torch.zeros(1, 2, 8), torch.zeros(1, 2, 8))
    with raises(ValueError, "attend takes the query of one token", "q.shape=(1, 3, 2, 8)", "q[:, t]"):
        cache.attend(torch.zeros(1, 3, 2, 8))


def test_gate_that_does_not_broadcast(gen):
    with raises(ValueError, "key_gate_t must broadcast", "key_gate_t.shape=(1, 3, 8)", "trailing axis of 1"):
        RATCache(4).step(*(torch.zeros(1, 2, 8),) * 3, torch.zeros(1, 3, 8), torch.zeros(1, 2, 1))


def test_gate_outside_zero_one(gen):
    cache = RATCache(4)
    with raises(ValueError, "value_gate_t must lie in [0, 1]", "values in [2, 2]", "sigmoid(logits)"):
        cache.step(*(torch.zeros(1, 2, 8),) * 3, torch.zeros(1, 2, 1), torch.full((1, 2, 1), 2.0))
    assert cache.length == 0


def test_rat_step_of_a_chunk():
    with raises(ValueError, "step takes one token", "k_t.shape=(1, 3, 2, 8)", "Use extend"):
        RATCache(4).step(torch.zeros(1, 2, 8), torch.zeros(1, 3, 2, 8), torch.zeros(1, 3, 2, 8), 0.5 * torch.ones(1),
                         0.5 * torch.ones(1))


def test_load_the_state_of_another_cache(gen):
    cache, *_ = _filled(gen)
    with raises(ValueError, "a SlidingWindowCache with options", "cannot load the state of a SlidingWindowCache",
                "'window': 4"):
        SlidingWindowCache(5, 1).load_state_dict(cache.state_dict())


def test_load_something_else():
    with raises(ValueError, "load_state_dict takes the dict that state_dict() returned", "got list"):
        KVCache().load_state_dict([])


def test_prefill_into_a_used_cache(gen):
    layer = glocal.nn.Attention(16, 2, is_causal=True)
    cache = layer.new_cache(1)
    layer(torch.zeros(1, 3, 16), cache=cache)
    with raises(ValueError, "fills an empty cache (a prefill)", "already holds 3 tokens", "step(x_t, cache)"):
        layer(torch.zeros(1, 3, 16), cache=cache)


def test_cache_of_another_kind():
    layer = glocal.nn.Attention(16, 2, is_causal=True)
    with raises(TypeError, "Attention.step takes the cache its new_cache(batch) returns, a KVCache",
                "got SlidingWindowCache"):
        layer.step(torch.zeros(1, 16), SlidingWindowCache(3))


def test_sinks_on_a_bidirectional_layer():
    with raises(ValueError, "attention sinks are the first tokens of a causal stream", "sinks=2", "sinks=0"):
        glocal.nn.schedules.ScheduledAttention("L", 16, 2, window=5, sinks=2)


def test_decoding_a_bidirectional_layer():
    with raises(ValueError, "decodes token by token only as a causal layer", "is_causal=False"):
        glocal.nn.Attention(16, 2).new_cache(1)


def test_model_cache_of_another_model_or_batch():
    dec = glocal.nn.HybridDecoder(16, 2, depth=2, pattern="L", settings={"L": {"window": 3}})
    with raises(ValueError, "one cache per layer of the model", "got 3 for a model of depth 2"):
        dec.step(torch.zeros(1, 16), DecoderCache([KVCache()] * 3, 1))
    with raises(ValueError, "built for batch=2 streams", "x of batch 1", "model.new_cache(1)"):
        dec.step(torch.zeros(1, 16), dec.new_cache(2))


@pytest.mark.parametrize("make", [lambda: SlidingWindowCache(3, 1, positions="cache", rope_theta=100.0), KVCache,
                                  lambda: MoBACache(2, top_k=2), LinearAttentionState],
                         ids=["window", "kv", "moba", "linear"])
def test_caches_hold_no_graph(gen, make):
    # Inputs that require grad (a model decoding under autograd) must not chain every step into one graph.
    q, k, v = (t.requires_grad_() for t in tokens(gen, 9))
    cache = make()
    for t in range(9):
        cache.step(q[:, t], k[:, t], v[:, t])
    held = [t for t in cache.state_dict()["tensors"].values() if t is not None]
    assert held and not any(t.requires_grad for t in held)


def test_window_cache_positions_batch_rows_are_independent(gen):
    # Batch rows go through strided views of the buffers (the sinks' in-place turn among them).
    q, k, v = (torch.randn(3, 30, 2, 8, generator=gen, dtype=F64) for _ in range(3))
    together = SlidingWindowCache(5, 2, positions="cache", rope_theta=50.0)
    alone = [SlidingWindowCache(5, 2, positions="cache", rope_theta=50.0) for _ in range(3)]
    for t in range(30):
        got = together.step(q[:, t], k[:, t], v[:, t])
        want = torch.cat([c.step(q[b:b + 1, t], k[b:b + 1, t], v[b:b + 1, t]) for b, c in enumerate(alone)])
        assert_close(got, want, 1e-12)
