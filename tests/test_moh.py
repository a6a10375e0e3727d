"""Mixture-of-Head attention (glocal.nn.moh.MoHAttention): the routed fast path against the dense masked
reference, the gates, the aux loss, the work saved, and every error message of glocal/checks/moh.py."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import raises

import glocal.checks.moh
import glocal.nn.moh
from glocal.nn import Attention
from glocal.nn.moh import MoHAttention

DIM, HEADS = 32, 8  # head_dim 4


def layer(shared_heads=2, routed_top_k=3, dtype=torch.float64, seed=0, **kwargs):
    torch.manual_seed(seed)
    return MoHAttention(DIM, HEADS, shared_heads, routed_top_k, **kwargs).to(dtype)


def inputs(batch=2, length=13, dtype=torch.float64, seed=1):
    return torch.randn(batch, length, DIM, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def output_and_grads(module, x, forward):
    """The output and the gradients of every parameter and of x, of one scalar loss that uses aux_loss too."""
    x = x.clone().requires_grad_()
    module.zero_grad()
    y = forward(x)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=y.dtype)
    ((y * weights).sum() + module.aux_loss).backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    return y.detach(), dict(grads, x=x.grad)


def assert_fast_equals_dense(module, x, atol_rel):
    fast, fast_grads = output_and_grads(module, x, module)
    dense, dense_grads = output_and_grads(module, x, module.forward_dense)
    assert fast.isfinite().all()
    assert (fast - dense).abs().max() <= atol_rel * dense.abs().max()
    assert fast_grads.keys() == dense_grads.keys()
    for name, ref in dense_grads.items():
        assert (fast_grads[name] - ref).abs().max() <= atol_rel * ref.abs().max().clamp_min(1e-12), name
    return dense_grads


def head_counts(module, x):
    """How many tokens of each batch row picked each routed head: [B, E]."""
    return (module.gates(x)[..., module.shared_heads:] != 0).sum(1)


# --- the fast path equals the dense masked reference ------------------------------------------------------


@pytest.mark.parametrize("router", ["learned", "query_norm"])
@pytest.mark.parametrize("is_causal,chunk", [(False, 256), (True, 256), (True, 3)])
def test_fast_path_equals_dense_reference_float64(router, is_causal, chunk, monkeypatch):
    monkeypatch.setattr(glocal.nn.moh, "QUERY_CHUNK", chunk)  # 3: several chunks of gathered queries
    module, x = layer(router=router, is_causal=is_causal), inputs()
    counts = head_counts(module, x)
    # Batch rows pick a head different numbers of times, so the padded rows are exercised.
    assert (counts[0] != counts[1]).any()
    grads = assert_fast_equals_dense(module, x, 1e-10)
    if router == "learned":  # the comparison covers the gradients of the router and of the mix
        for name in ("routed_gate.weight", "shared_gate.weight", "mix_gate.weight"):
            assert grads[name].abs().max() > 0, name


@pytest.mark.parametrize("router", ["learned", "query_norm"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_fast_path_equals_dense_reference_float32(router, is_causal, monkeypatch):
    monkeypatch.setattr(glocal.nn.moh, "QUERY_CHUNK", 8)
    module = layer(4, 2, dtype=torch.float32, router=router, is_causal=is_causal)
    assert_fast_equals_dense(module, inputs(2, 40, torch.float32), 1e-4)


@pytest.mark.parametrize("shared_heads,routed_top_k", [(0, 2), (0, 8), (3, 5), (1, 1), (7, 1)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_edge_head_splits(shared_heads, routed_top_k, is_causal):
    # No shared heads (no mix), every routed head picked (routed_top_k = E), one shared head, one routed head.
    module = layer(shared_heads, routed_top_k, is_causal=is_causal, qk_scale=0.3)
    assert_fast_equals_dense(module, inputs(2, 9), 1e-10)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("router", ["learned", "query_norm"])
def test_single_token(is_causal, router):
    assert_fast_equals_dense(layer(router=router, is_causal=is_causal), inputs(2, 1), 1e-10)


def steered(is_causal):
    """A layer and input where routed head 0 is never picked and routed head 1 always is."""
    module, x = layer(2, 2, is_causal=is_causal), inputs(2, 11)
    u = torch.ones(DIM, dtype=torch.float64) / DIM ** 0.5
    x = x + 3 * u
    with torch.no_grad():
        module.routed_gate.weight[0] = -50 * u
        module.routed_gate.weight[1] = 50 * u
    return module, x


@pytest.mark.parametrize("is_causal", [False, True])
def test_head_nobody_picks_and_head_everybody_picks(is_causal):
    module, x = steered(is_causal)
    counts = head_counts(module, x)
    assert counts[:, 0].tolist() == [0, 0] and counts[:, 1].tolist() == [11, 11]
    assert_fast_equals_dense(module, x, 1e-10)


@pytest.mark.parametrize("is_causal", [False, True])
def test_all_gates_one_is_plain_attention(is_causal):
    # Zero router weights: a uniform router; with every routed head picked each gate is 1, so the layer is
    # glocal.nn.Attention with the same projections (an oracle independent of SDPA and of the routing code).
    module = layer(2, 6, is_causal=is_causal)
    with torch.no_grad():
        for gate in (module.routed_gate, module.shared_gate, module.mix_gate):
            gate.weight.zero_()
    plain = Attention(DIM, HEADS, is_causal=is_causal).double()
    plain.qkv.load_state_dict(module.qkv.state_dict())
    plain.proj.load_state_dict(module.proj.state_dict())
    x = inputs(2, 10)
    expected = plain(x)
    torch.testing.assert_close(module(x), expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(module.forward_dense(x), expected, atol=1e-10, rtol=0)


# --- gates --------------------------------------------------------------------------------------------------


def test_learned_gates_sum_to_counts_and_follow_the_top_logits():
    module, x = layer(3, 2), inputs()
    shared, routed = module.gates(x).split([3, 5], -1)
    mix = 2 * module.mix_gate(x).softmax(-1)
    # Before the mix the selected routed gates sum to routed_top_k and the shared gates to shared_heads.
    torch.testing.assert_close((routed / mix[..., 1:]).sum(-1), torch.full((2, 13), 2.0, dtype=torch.float64))
    torch.testing.assert_close((shared / mix[..., :1]).sum(-1), torch.full((2, 13), 3.0, dtype=torch.float64))
    top = module.routed_gate(x).topk(2, -1).indices
    assert torch.equal((routed != 0), torch.zeros_like(routed, dtype=torch.bool).scatter(-1, top, True))
    # The routed gates are the router's softmax renormalised over the selected heads.
    probs = module.routed_gate(x).softmax(-1) * (routed != 0)
    torch.testing.assert_close(routed / mix[..., 1:], 2 * probs / probs.sum(-1, keepdim=True))


def test_even_mix_leaves_the_gate_sums():
    module, x = layer(3, 2), inputs()
    with torch.no_grad():
        module.mix_gate.weight.zero_()
    shared, routed = module.gates(x).split([3, 5], -1)
    torch.testing.assert_close(routed.sum(-1), torch.full((2, 13), 2.0, dtype=torch.float64))
    torch.testing.assert_close(shared.sum(-1), torch.full((2, 13), 3.0, dtype=torch.float64))


def test_uniform_router_gives_gate_one_and_ties_go_to_the_lower_head():
    module, x = layer(2, 3), inputs()
    with torch.no_grad():
        for gate in (module.routed_gate, module.shared_gate, module.mix_gate):
            gate.weight.zero_()
    expected = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0], dtype=torch.float64).expand(2, 13, -1)
    torch.testing.assert_close(module.gates(x), expected)


def test_no_shared_heads_has_no_mix():
    module, x = layer(0, 3), inputs()
    assert module.mix_gate is None and module.shared_gate is None
    torch.testing.assert_close(module.gates(x).sum(-1), torch.full((2, 13), 3.0, dtype=torch.float64))


def test_one_shared_head_has_gate_one_before_the_mix():
    module, x = layer(1, 3), inputs()
    assert module.shared_gate is None
    torch.testing.assert_close(module.gates(x)[..., 0], 2 * module.mix_gate(x).softmax(-1)[..., 0])


def test_query_norm_gates_are_binary_top_norms():
    module, x = layer(2, 3, router="query_norm"), inputs()
    assert module.routed_gate is None and len(list(module.parameters())) == 4  # qkv and proj only
    q = module.qkv(x)[..., :DIM].unflatten(-1, (HEADS, DIM // HEADS))
    top = q[:, :, 2:].norm(dim=-1).topk(3, -1).indices + 2
    expected = torch.zeros(2, 13, HEADS, dtype=torch.float64).scatter(-1, top, 1.0)
    expected[..., :2] = 1.0
    torch.testing.assert_close(module.gates(x), expected, atol=0, rtol=0)


def test_query_norm_ties_go_to_the_lower_head():
    module, x = layer(2, 3, router="query_norm"), inputs()
    with torch.no_grad():
        module.qkv.weight[:DIM].zero_()
        module.qkv.bias[:DIM].zero_()  # every query 0: every norm ties
    expected = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0], dtype=torch.float64).expand(2, 13, -1)
    torch.testing.assert_close(module.gates(x), expected)


# --- the aux loss -------------------------------------------------------------------------------------------


def test_aux_loss_by_hand():
    # dim 8, 4 heads, 1 shared, E = 3, top-1; token 0 has routed logits (ln 3, 0, 0), token 1 (0, ln 4, 0).
    torch.manual_seed(0)
    module = MoHAttention(8, 4, 1, 1).double()
    with torch.no_grad():
        module.routed_gate.weight.zero_()
        module.routed_gate.weight[0, 0] = math.log(3)
        module.routed_gate.weight[1, 1] = math.log(4)
    x = torch.eye(8, dtype=torch.float64)[None, :2]
    module(x)
    # probs: (3/5, 1/5, 1/5) and (1/6, 4/6, 1/6); picks: head 0, head 1. f = (1/2, 1/2, 0),
    # P = (23/60, 26/60, 11/60); aux = 3 * (23/120 + 26/120) = 49/40.
    torch.testing.assert_close(module.aux_loss, torch.tensor(49 / 40, dtype=torch.float64))
    module.aux_loss.backward()
    # dP_i/dlogit: aux = (3/2) (P_0 + P_1) = (3/2) (1 - P_2); d/d logit_j of token t = -(3/4) dp_2/dlogit_j.
    p = torch.tensor([[3 / 5, 1 / 5, 1 / 5], [1 / 6, 4 / 6, 1 / 6]], dtype=torch.float64)
    dlogits = -0.75 * p[:, 2:] * (torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) - p)  # [token, head]
    torch.testing.assert_close(module.routed_gate.weight.grad[:, :2], dlogits.T)
    assert module.qkv.weight.grad is None  # the aux loss reaches the router only


def test_aux_loss_is_balanced_at_routed_top_k_and_matches_the_formula():
    module, x = layer(2, 3), inputs()
    module(x)
    probs = module.routed_gate(x).softmax(-1)
    picked = (module.gates(x)[..., 2:] != 0).double()
    expected = 6 * (picked.mean((0, 1)) * probs.mean((0, 1))).sum()
    torch.testing.assert_close(module.aux_loss, expected)
    with torch.no_grad():
        module.routed_gate.weight.zero_()
    module(x)  # uniform probabilities: aux = E * sum_i f_i / E = routed_top_k whatever f is
    torch.testing.assert_close(module.aux_loss, torch.tensor(3.0, dtype=torch.float64))


def test_query_norm_aux_loss_is_zero():
    module = layer(router="query_norm")
    module.forward_dense(inputs())
    assert module.aux_loss.shape == () and module.aux_loss.item() == 0.0


# --- the work saved -----------------------------------------------------------------------------------------


def recording(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def record(q, k, v, **kwargs):
        calls.append((q.detach().clone(), k.shape, kwargs))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", record)
    return calls


def test_routed_heads_get_only_their_choosers_queries(monkeypatch):
    module, x = layer(2, 2, router="query_norm"), inputs(1, 64)
    calls = recording(monkeypatch)
    with torch.no_grad():
        module(x)
    q = module.qkv(x)[..., :DIM].unflatten(-1, (HEADS, DIM // HEADS))
    picked = module.gates(x)[0, :, 2:] != 0
    assert len(calls) == 1 + 6
    assert calls[0][0].shape == (1, 2, 64, 4)  # the shared heads: one dense call
    for e, (queries, _, _) in enumerate(calls[1:]):
        torch.testing.assert_close(queries[0, 0], q[0, picked[:, e], 2 + e], atol=0, rtol=0)
    rows = sum(call[0].shape[1] * call[0].shape[2] for call in calls)
    assert rows == (2 + 2) * 64 < HEADS * 64


def test_causal_chunks_see_only_the_keys_they_need(monkeypatch):
    monkeypatch.setattr(glocal.nn.moh, "QUERY_CHUNK", 5)
    module, x = layer(2, 2, is_causal=True), inputs(1, 40)
    calls = recording(monkeypatch)
    with torch.no_grad():
        module(x)
    picked = module.gates(x)[0, :, 2:] != 0
    routed = calls[1:]
    chunks = [(e, start) for e in range(6) for start in range(0, int(picked[:, e].sum()), 5)]
    assert len(routed) == len(chunks)
    for (e, start), (queries, key_shape, kwargs) in zip(chunks, routed):
        positions = picked[:, e].nonzero()[start:start + 5, 0]
        assert queries.shape[2] == len(positions) and key_shape[2] == int(positions[-1]) + 1
        torch.testing.assert_close(kwargs["attn_mask"][0, 0], positions[:, None] >= torch.arange(key_shape[2]))


# --- docstrings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [glocal.nn.moh, glocal.checks.moh])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0 and result.failed == 0


# --- errors (glocal/checks/moh.py and the shared module checks) ---------------------------------------------


def test_shared_heads_out_of_range():
    with raises(ValueError, "shared_heads must lie in 0..num_heads - 1", "shared_heads=8, num_heads=8",
                "shared_heads=2", "glocal.nn.Attention"):
        MoHAttention(DIM, HEADS, 8, 1)
    with raises(ValueError, "shared_heads must lie in 0..num_heads - 1", "shared_heads=-1"):
        MoHAttention(DIM, HEADS, -1, 1)


def test_shared_heads_not_an_int():
    with raises(TypeError, "shared_heads must be an int", "shared_heads=2.0 of type float", "Pass an int"):
        MoHAttention(DIM, HEADS, 2.0, 1)


def test_routed_top_k_out_of_range():
    with raises(ValueError, "routed_top_k must lie in 1..E", "routed_top_k=0, num_heads=8, shared_heads=2, E=6",
                "between 1 and 6"):
        MoHAttention(DIM, HEADS, 2, 0)
    with raises(ValueError, "routed_top_k must lie in 1..E", "routed_top_k=7", "E=6"):
        MoHAttention(DIM, HEADS, 2, 7)


def test_routed_top_k_not_an_int():
    with raises(TypeError, "routed_top_k must be an int", "routed_top_k=True of type bool", "routed_top_k=1"):
        MoHAttention(DIM, HEADS, 2, True)


def test_unknown_router():
    with raises(ValueError, "router must be one of ['learned', 'query_norm']", "router='topk'", "Pass one of them"):
        MoHAttention(DIM, HEADS, 2, 2, router="topk")


def test_input_of_wrong_rank():
    with raises(ValueError, "this module takes x of shape [B, T, dim]", "x.dim()=4", "channels-last"):
        layer()(torch.zeros(1, 4, 4, DIM, dtype=torch.float64))


def test_input_with_wrong_channels():
    with raises(ValueError, "the last axis of x must have the module's dim channels", "x.shape[-1]=16, dim=32"):
        layer().forward_dense(torch.zeros(1, 4, 16, dtype=torch.float64))


def test_input_not_a_tensor():
    with raises(TypeError, "x must be a torch.Tensor", "type list"):
        layer().gates([[0.0] * DIM])


def test_heads_do_not_divide_dim():
    with raises(ValueError, "dim must be divisible by num_heads", "dim=30, num_heads=8"):
        MoHAttention(30, HEADS, 2, 2)


def test_causal_flag_not_a_bool():
    with raises(TypeError, "is_causal must be a bool", "is_causal=1"):
        MoHAttention(DIM, HEADS, 2, 2, is_causal=1)


def test_scale_not_a_number():
    with raises(TypeError, "scale must be None (meaning D_qk ** -0.5) or a real number", "scale='big'"):
        MoHAttention(DIM, HEADS, 2, 2, qk_scale="big")
