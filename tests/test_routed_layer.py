"""RoutedLayer: each branch vs a dense masked reference, routing, Gumbel straight-through, decoding, errors."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import raises

from glocal.nn.rope import rope
from glocal.nn.routed_layer import RoutedCache, RoutedLayer
from glocal.numerics import dense_attention

F64 = torch.float64
DIM, HEADS = 16, 2


def layer_of(window, sinks, pool=4, rope_theta=10000.0, seed=0, **kwargs):
    torch.manual_seed(seed)
    return RoutedLayer(DIM, HEADS, window, sinks=sinks, pool=pool, rope_theta=rope_theta, **kwargs).double()


def inputs(gen, batch, length):
    return torch.randn(batch, length, DIM, generator=gen, dtype=F64)


def causal_mask(length):
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    return j <= i


def sparse_mask(length, window, sinks):
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    return ((i - window < j) & (j <= i)) | ((j < sinks) & (j <= i))


def reference(layer, x, allowed):
    """The layer written out with one dense masked attention (no router): [B, T, dim]."""
    head_dim = DIM // HEADS
    q, k, v = layer.qkv(x).unflatten(-1, (3, HEADS, head_dim)).unbind(-3)
    if layer.rope_theta is not None:
        positions = torch.arange(x.shape[1])
        q, k = rope(q, positions, layer.rope_theta), rope(k, positions, layer.rope_theta)
    out, _ = dense_attention(q, k, v, head_dim ** -0.5, allowed)
    return layer.proj(out.flatten(-2))


def output_and_grads(layer, x, fn, g_out):
    """fn(x) and the gradients of <fn(x), g_out> w.r.t. x and every qkv/proj parameter."""
    x = x.clone().requires_grad_(True)
    y = fn(x)
    wrt = [x, layer.qkv.weight, layer.qkv.bias, layer.proj.weight, layer.proj.bias]
    return y, torch.autograd.grad((y * g_out).sum(), wrt)


def assert_close(got, want, tol=1e-10):
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= tol * max(want.abs().max().item(), 1.0)


def set_threshold_between(layer, x):
    """Move the eval threshold between the router's probabilities so the batch splits (first half full)."""
    with torch.no_grad():
        layer(x)
    p = layer.last_probability.sort().values
    middle = len(p) // 2
    layer.threshold = float((p[middle - 1] + p[middle]) / 2)


# (T, window, sinks, pool): sinks left of the window; T < window; T < sinks; T < 2 * pool; one token;
# no sinks; a window of one key; the sinks all inside the window.
CASES = [(20, 6, 3, 4), (5, 8, 2, 4), (3, 4, 6, 2), (6, 3, 2, 4), (1, 4, 2, 4), (17, 5, 0, 4), (12, 1, 2, 3),
         (9, 9, 4, 4)]


@pytest.mark.parametrize("length,window,sinks,pool", CASES)
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("force", ["full", "sparse"])
def test_forced_branches_equal_dense_masked_references(gen, length, window, sinks, pool, training, force):
    layer = layer_of(window, sinks, pool).train(training)
    allowed = causal_mask(length) if force == "full" else sparse_mask(length, window, sinks)
    x = inputs(gen, 2, length)
    g_out = torch.randn(2, length, DIM, generator=gen, dtype=F64)
    got, got_grads = output_and_grads(layer, x, lambda t: layer(t, force=force), g_out)
    want, want_grads = output_and_grads(layer, x, lambda t: reference(layer, t, allowed), g_out)
    assert_close(got, want)
    for a, b in zip(got_grads, want_grads):
        assert_close(a, b)
    assert layer.last_choice.tolist() == [force == "full"] * 2


def test_sparse_branch_without_rope_and_with_a_long_sequence(gen):
    # Many queries past the window (the sink merge at work), no RoPE.
    layer = layer_of(7, 4, rope_theta=None)
    x = inputs(gen, 1, 40)
    assert_close(layer(x, force="sparse"), reference(layer, x, sparse_mask(40, 7, 4)))
    assert not torch.allclose(layer(x, force="sparse"), layer(x, force="full"))  # the branches differ here


def test_eval_routes_per_sequence_and_a_mixed_batch_equals_each_sequence_alone(gen):
    layer = layer_of(5, 2).eval()
    x = inputs(gen, 4, 18)
    set_threshold_between(layer, x)
    y = layer(x)
    choice = layer.last_choice
    assert choice.dtype == torch.bool and choice.sum().item() == 2
    assert torch.equal(choice, layer.last_probability > layer.threshold)
    for b in range(4):
        alone = layer(x[b:b + 1])
        assert layer.last_choice.item() == choice[b].item()
        assert_close(y[b:b + 1], alone, 1e-12)
        allowed = causal_mask(18) if choice[b] else sparse_mask(18, 5, 2)
        assert_close(y[b:b + 1], reference(layer, x[b:b + 1], allowed))


def test_eval_runs_only_the_chosen_branch_per_sequence(gen, monkeypatch):
    layer = layer_of(5, 2).eval()
    x = inputs(gen, 4, 18)
    set_threshold_between(layer, x)
    calls = []
    for name in ("_full", "_sparse"):
        branch = getattr(layer, name)
        monkeypatch.setattr(layer, name, lambda q, k, v, name=name, branch=branch: calls.append((name, q.shape[0]))
                            or branch(q, k, v))
    layer(x)
    assert sorted(calls) == [("_full", 2), ("_sparse", 2)]
    calls.clear()
    layer(x, force="sparse")
    assert calls == [("_sparse", 4)]


def router_logit(layer, x):
    """The router's logit [B] written out: q before RoPE, pooled over the first and last pool tokens and the heads."""
    q = layer.qkv(x)[..., :DIM].unflatten(-1, (HEADS, DIM // HEADS))
    feature = torch.cat([q[:, :layer.pool].mean((1, 2)), q[:, -layer.pool:].mean((1, 2))], -1)
    return feature, layer.router(feature)[:, 0]


def test_training_gumbel_straight_through(gen):
    # Forward: the hard 0/1 choice per sequence; backward: the gradient of the soft sigmoid.
    layer = layer_of(4, 2, temperature=0.7).train()
    x = inputs(gen, 8, 14)
    g_out = torch.randn(8, 14, DIM, generator=gen, dtype=F64)
    torch.manual_seed(123)
    y = layer(x)
    choice = layer.last_choice
    (y * g_out).sum().backward()
    torch.manual_seed(123)  # the same logistic noise, drawn again
    u = torch.rand(8, dtype=F64)
    with torch.no_grad():
        feature, logit = router_logit(layer, x)
        full, sparse = layer(x, force="full"), layer(x, force="sparse")
    noisy = logit + torch.log(u) - torch.log1p(-u)
    hard = noisy > 0
    assert torch.equal(choice, hard)
    assert 0 < hard.sum().item() < 8  # the draw picked both branches
    for b in range(8):  # hard forward: exactly one branch's output per sequence
        assert_close(y[b], full[b] if hard[b] else sparse[b], 1e-12)
    soft = torch.sigmoid(noisy / 0.7)
    d_logit = ((full - sparse) * g_out).sum((1, 2)) * soft * (1 - soft) / 0.7  # d<y, g_out>/d gate * d soft/d logit
    assert layer.router.bias.grad.abs().item() > 1e-6
    assert_close(layer.router.bias.grad, d_logit.sum()[None], 1e-9)
    assert_close(layer.router.weight.grad, (d_logit[:, None] * feature).sum(0, keepdim=True), 1e-9)


def test_eval_threshold_compares_the_noiseless_probability(gen):
    layer = layer_of(4, 2).eval()
    x = inputs(gen, 6, 10)
    with torch.no_grad():
        layer(x)
        p = torch.sigmoid(router_logit(layer, x)[1])
    assert_close(layer.last_probability, p, 1e-12)
    assert torch.equal(layer.last_choice, p > 0.5)


@pytest.mark.parametrize("length", [20, 6, 3])  # pools apart, overlapping (T < 2 * pool), one pool (T < pool)
def test_router_feature_is_q_pooled_over_the_first_and_last_pool_tokens(gen, length):
    layer = layer_of(5, 2, pool=4).eval()
    x = inputs(gen, 2, length)
    with torch.no_grad():
        layer(x)
        q = layer.qkv(x)[..., :DIM].unflatten(-1, (HEADS, DIM // HEADS))  # before RoPE
        first, last = q[:, :min(4, length)], q[:, max(length - 4, 0):]
        feature = torch.cat([first.mean((1, 2)), last.mean((1, 2))], -1)
        want = torch.sigmoid(layer.router(feature)[:, 0])
    assert_close(layer.last_probability, want, 1e-12)


def test_router_ignores_the_middle_tokens(gen):
    layer = layer_of(5, 2, pool=4).eval()
    x = inputs(gen, 2, 20)
    with torch.no_grad():
        layer(x)
        before = layer.last_probability.clone()
        middle = x.clone()
        middle[:, 4:16] = torch.randn(2, 12, DIM, generator=gen, dtype=F64)
        layer(middle)
        assert torch.equal(layer.last_probability, before)
        edge = x.clone()
        edge[:, 16] += 1.0  # the first of the last pool tokens
        layer(edge)
        assert not torch.equal(layer.last_probability, before)


def test_sparsity_loss_hand_computed():
    layer = layer_of(4, 2)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.bias.fill_(math.log(3.0))  # p = sigmoid(log 3) = 0.75 for every sequence
    layer(torch.randn(3, 6, DIM, dtype=F64))
    loss = layer.sparsity_loss(0.5)  # want mean p = 1 - 0.5
    assert loss.item() == pytest.approx((0.75 - 0.5) ** 2, abs=1e-14)
    loss.backward()
    # d/db (p - 0.5)^2 = 2 (p - 0.5) p (1 - p)
    assert layer.router.bias.grad.item() == pytest.approx(2 * 0.25 * 0.75 * 0.25, abs=1e-14)
    assert layer.sparsity_loss(0.25).item() == pytest.approx(0.0, abs=1e-14)


@pytest.mark.parametrize("prefill,window,sinks,rope_theta", [
    (7, 4, 2, 10000.0),  # decoding past the window, sinks left of it
    (2, 5, 3, 10000.0),  # prefill shorter than the window and the sinks
    (1, 3, 0, None),     # one-token prefill, no sinks, no RoPE
    (10, 1, 1, 500.0),   # a window of one key
])
def test_decoding_equals_the_forward_with_the_prefill_choice(gen, prefill, window, sinks, rope_theta):
    layer = layer_of(window, sinks, rope_theta=rope_theta).eval()
    length = prefill + 9
    x = inputs(gen, 4, length)
    set_threshold_between(layer, x[:, :prefill])
    cache = layer.new_cache(4)
    y = layer(x[:, :prefill], cache=cache)
    choice = layer.last_choice
    assert choice.sum().item() == 2 and torch.equal(cache.choice, choice) and cache.length == prefill
    outputs = [y]
    for t in range(prefill, length):
        y_t = layer.step(x[:, t], cache)
        assert cache.length == t + 1 and cache.kept()[0].shape[1] == t + 1
        assert torch.equal(cache.choice, choice)  # never re-routed
        outputs.append(y_t[:, None])
    got = torch.cat(outputs, 1)
    for b in range(4):
        allowed = causal_mask(length) if choice[b] else sparse_mask(length, window, sinks)
        assert_close(got[b:b + 1], reference(layer, x[b:b + 1], allowed))


def test_decoding_in_float32(gen):
    layer = RoutedLayer(DIM, HEADS, 3, sinks=1, pool=2).eval()
    x = torch.randn(2, 8, DIM, generator=gen)
    cache = layer.new_cache(2)
    layer(x[:, :5], cache=cache, force="sparse")
    assert cache.kept()[0].dtype == torch.float32 and isinstance(cache, RoutedCache)
    for t in range(5, 8):
        y_t = layer.step(x[:, t], cache)
    assert_close(y_t, layer(x, force="sparse")[:, -1], 1e-5)


# ---- errors: one test per message ------------------------------------------------------------------

@pytest.mark.parametrize("name,value", [("window", 2.0), ("sinks", True), ("pool", "4")])
def test_count_not_an_int(name, value):
    kwargs = {"window": 4, "sinks": 2, "pool": 4, name: value}
    with raises(TypeError, f"{name} must be an int", f"{name}={value!r} of type", f"Pass e.g. {name}="):
        RoutedLayer(DIM, HEADS, **kwargs)


@pytest.mark.parametrize("name,value,low", [("window", 0, 1), ("sinks", -1, 0), ("pool", 0, 1)])
def test_count_too_small(name, value, low):
    kwargs = {"window": 4, "sinks": 2, "pool": 4, name: value}
    with raises(ValueError, f"{name} must be >= {low}", f"got {name}={value}", f"Pass e.g. {name}="):
        RoutedLayer(DIM, HEADS, **kwargs)


@pytest.mark.parametrize("name,value", [("temperature", "1"), ("threshold", None)])
def test_real_argument_not_a_number(name, value):
    with raises(TypeError, f"{name} must be a real number", f"{name}={value!r} of type", "Pass a float"):
        RoutedLayer(DIM, HEADS, 4, **{name: value})


@pytest.mark.parametrize("value", [0.0, -1.0, float("inf"), float("nan")])
def test_temperature_not_positive_and_finite(value):
    with raises(ValueError, "temperature must be finite and > 0", f"temperature={value!r}", "temperature=1.0"):
        RoutedLayer(DIM, HEADS, 4, temperature=value)


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan")])
def test_threshold_outside_zero_one(value):
    with raises(ValueError, "threshold must lie in [0, 1]", "sigmoid(logit) > threshold", f"threshold={value!r}",
                "threshold=0.5"):
        RoutedLayer(DIM, HEADS, 4, threshold=value)


@pytest.mark.parametrize("value", ["dense", True, 1])
def test_bad_force_value(value):
    with raises(ValueError, "force must be None (the router chooses), 'full' or 'sparse'", f"force={value!r}",
                "[None, 'full', 'sparse']"):
        RoutedLayer(DIM, HEADS, 4)(torch.zeros(1, 5, DIM), force=value)


def test_input_of_the_wrong_rank():
    with raises(ValueError, "this module takes x of shape [B, T, dim]", "x.dim()=2", "Reshape"):
        RoutedLayer(DIM, HEADS, 4)(torch.zeros(5, DIM))


def test_input_with_the_wrong_channels():
    layer = RoutedLayer(DIM, HEADS, 4)
    with raises(ValueError, "the last axis of x must have the module's dim channels", "x.shape[-1]=8, dim=16"):
        layer(torch.zeros(1, 5, 8))
    with raises(ValueError, "the last axis of x must have the module's dim channels", "x.shape[-1]=8"):
        cache = layer.new_cache(1)
        layer(torch.zeros(1, 5, DIM), cache=cache)
        layer.step(torch.zeros(1, 8), cache)


def test_empty_sequence():
    with raises(ValueError, "needs T >= 1", "x.shape=(2, 0, 16)", "at least one token"):
        RoutedLayer(DIM, HEADS, 4)(torch.zeros(2, 0, DIM))


def test_cache_of_the_wrong_type():
    with raises(TypeError, "cache must be a RoutedCache", "cache of type tuple", "layer.new_cache(batch)"):
        RoutedLayer(DIM, HEADS, 4)(torch.zeros(1, 5, DIM), cache=())


def test_cache_of_another_batch():
    layer = RoutedLayer(DIM, HEADS, 4)
    with raises(ValueError, "one entry per sequence", "cache batch=3, x batch=2", "layer.new_cache(2)"):
        layer(torch.zeros(2, 5, DIM), cache=layer.new_cache(3))


def test_prefill_into_a_used_cache():
    layer = RoutedLayer(DIM, HEADS, 4)
    cache = layer.new_cache(1)
    layer(torch.zeros(1, 5, DIM), cache=cache)
    with raises(ValueError, "needs an empty cache", "cache.length=5", "layer.step(x_t, cache)"):
        layer(torch.zeros(1, 3, DIM), cache=cache)


def test_step_without_prefill():
    layer = RoutedLayer(DIM, HEADS, 4)
    with raises(ValueError, "step reuses the branch chosen at the prefill", "cache.choice=None", "Prefill first"):
        layer.step(torch.zeros(1, DIM), layer.new_cache(1))


@pytest.mark.parametrize("value", [1.5, -0.5])
def test_sparsity_target_outside_zero_one(value):
    layer = RoutedLayer(DIM, HEADS, 4)
    layer(torch.zeros(1, 5, DIM))
    with raises(ValueError, "target must lie in [0, 1]", "fraction of sequences routed to the sparse branch",
                f"target={value!r}"):
        layer.sparsity_loss(value)


def test_sparsity_loss_before_any_forward():
    with raises(ValueError, "the layer has not run", "last_probability=None", "Call the layer"):
        RoutedLayer(DIM, HEADS, 4).sparsity_loss(0.5)


def test_rope_arguments_use_the_shared_rules():
    with raises(ValueError, "rope_theta must be a number > 0", "rope_theta=0"):
        RoutedLayer(DIM, HEADS, 4, rope_theta=0)
    with raises(ValueError, "the head dim must be even", "head_dim=3"):
        RoutedLayer(6, 2, 4)
    assert RoutedLayer(6, 2, 4, rope_theta=None).head_dim == 3
