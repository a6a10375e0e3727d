"""The fused path of converted heads (rules.fused_attention, Local.attend_heads) against the per-head path.

The per-head path (converted_attention, one rule at a time) is the definition; the fused path runs all of a
layer's Local/Hybrid heads together (one dense call below DENSE_MAX_TOKENS; a banded flash call per rule over query
blocks up to BANDED_MAX_TOKENS; beyond, one neighborhood call per window with sinks and pooled blocks as extra
keys, which the ``path`` fixture also runs at the shorter lengths), so every head of it must equal its per-head
result: outputs, padding, gradients and a whole converted model.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import pytest
import torch
from conftest import sweep_size

from glocal import config
from glocal.convert import Hybrid, Local, convert, restore
from glocal.convert import rules as rules_module
from glocal.convert.rules import (
    DENSE_MAX_TOKENS,
    converted_attention,
    converted_probs,
    fused_attention,
)
from glocal.hooks import positions_1d

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SCALE = 0.3
LENGTHS = (1, 2, 7, 40, DENSE_MAX_TOKENS - 1, DENSE_MAX_TOKENS, DENSE_MAX_TOKENS + 1, 150, 200)


def _random_rule(rng: random.Random, length: int):
    """None (head not converted), Local or Hybrid with a window below, at or above the length."""
    if rng.random() < 0.2:
        return None
    window = rng.choice([1, 2, 3, 4, 5, 8, 17, 33, length, length + 7])
    sinks = rng.choice([(), (0,), (0, -1)])
    if rng.random() < 0.4:
        return Hybrid(window, sinks, rng.choice([1, 3, 4, 16]))
    return Local(window, sinks)


def _random_valid(rng: random.Random, batch: int, length: int):
    """None (all real) or [B, T] bool: a different number of real tokens per sequence, left or right padded."""
    if rng.random() < 0.4:
        return None
    valid = torch.zeros(batch, length, dtype=torch.bool)
    for b in range(batch):
        real = rng.randint(0, length)  # 0: a sequence of padding only
        if rng.random() < 0.5:
            valid[b, :real] = True
        else:
            valid[b, length - real:] = True
    return valid


def _case(seed: int, dtype=None):
    rng = random.Random(seed)
    length = rng.choice(LENGTHS)
    heads, batch = rng.choice([1, 2, 4, 6]), rng.choice([1, 2, 3])
    dtype = dtype or rng.choice([torch.float32, torch.float64])
    gen = torch.Generator().manual_seed(seed)
    dv = rng.choice([8, 5])
    # Heads-first storage seen heads-last, as the adapter passes them (non-contiguous).
    q, k = (torch.randn(batch, heads, length, 8, generator=gen, dtype=dtype).transpose(1, 2) for _ in range(2))
    v = torch.randn(batch, heads, length, dv, generator=gen, dtype=dtype).transpose(1, 2)
    rules = [_random_rule(rng, length) for _ in range(heads)]
    return q, k, v, rules, rng.random() < 0.5, _random_valid(rng, batch, length)


@pytest.fixture(params=["banded", "neighborhood"])
def path(request, monkeypatch):
    """Lengths above DENSE_MAX_TOKENS run banded (the default up to BANDED_MAX_TOKENS) or through the
    neighborhood calls (what longer sequences take)."""
    if request.param == "neighborhood":
        monkeypatch.setattr(rules_module, "BANDED_MAX_TOKENS", 0)
    return request.param


def _per_head(q, k, v, rules, scale, causal, valid):
    """converted_attention one head at a time; heads without a rule are 0 (fused_attention's contract)."""
    out = torch.full((*q.shape[:3], v.shape[-1]), float("nan"), dtype=q.dtype)
    for h, rule in enumerate(rules):
        if rule is None:
            out[:, :, h] = 0
        else:
            out[:, :, h] = converted_attention(q[:, :, h:h + 1], k[:, :, h:h + 1], v[:, :, h:h + 1], rule, scale,
                                               causal, valid)[:, :, 0]
    return out


def _close(a, b, dtype):
    atol = 1e-4 if dtype == torch.float32 else 1e-10
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    assert not a.isnan().any() and not b.isnan().any()
    torch.testing.assert_close(a, b, atol=atol * scale, rtol=0)


@pytest.mark.parametrize("seed", range(sweep_size(120)))
def test_fused_equals_per_head(seed, path):
    q, k, v, rules, causal, valid = _case(seed)
    with config.nan_poisoning(True):
        fused = fused_attention(q, k, v, rules, SCALE, causal, valid)
        ref = _per_head(q, k, v, rules, SCALE, causal, valid)
    _close(fused, ref, q.dtype)
    if valid is not None:  # padded query rows are 0 in every head
        assert fused[~valid].eq(0).all()


@pytest.mark.parametrize("seed", range(sweep_size(30)))
def test_fused_equals_the_attention_map(seed):
    """An independent check: converted_probs builds each head's map densely (masks, no lse merge); map @ v."""
    q, k, v, rules, causal, valid = _case(2000 + seed, torch.float64)
    real = torch.ones(q.shape[:2], dtype=torch.bool) if valid is None else valid
    pos = positions_1d(real)
    fused = fused_attention(q, k, v, rules, SCALE, causal, valid)
    for h, rule in enumerate(rules):
        if rule is not None:
            probs = converted_probs(q[:, :, h:h + 1], k[:, :, h:h + 1], pos, pos, rule, SCALE, causal)
            ref = (probs @ v[:, :, h:h + 1].transpose(1, 2))[:, 0] * real[..., None]  # padded queries: 0
            _close(fused[:, :, h], ref, torch.float64)


@pytest.mark.parametrize("length", [DENSE_MAX_TOKENS - 8, DENSE_MAX_TOKENS + 40])
@pytest.mark.parametrize("causal", [False, True])
def test_fused_every_kind_in_one_layer(length, causal, path):
    """All three kinds (window only; sinks; sinks and blocks) at two windows, heads interleaved, one call."""
    rules = [Local(9), Hybrid(17, (0, -1), 4), None, Local(17, (0,)), Local(9, (0, -1)), Hybrid(9, (), 16),
             Local(length + 1, (0, -1)), Local(17)]
    gen = torch.Generator().manual_seed(length)
    q, k, v = torch.randn(3, 2, length, len(rules), 8, generator=gen, dtype=torch.float64).unbind(0)
    valid = torch.ones(2, length, dtype=torch.bool)
    valid[0, :5] = False  # left padding in one sequence, right in the other
    valid[1, -11:] = False
    for mask in (None, valid):
        _close(fused_attention(q, k, v, rules, SCALE, causal, mask), _per_head(q, k, v, rules, SCALE, causal, mask),
               torch.float64)


@pytest.mark.parametrize("seed", range(sweep_size(24)))
def test_fused_gradients_equal_per_head(seed, path):
    q, k, v, rules, causal, valid = _case(1000 + seed, torch.float64)
    if all(r is None for r in rules):
        rules[0] = Hybrid(3, (0, -1), 2)
    if valid is not None:
        valid[0, -1] = True  # a real token somewhere, so that there is a gradient to compare
    leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
    grad_out = torch.randn(*q.shape[:3], v.shape[-1], generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64)
    grads = []
    for attention in (fused_attention, _per_head):
        out = attention(*leaves, rules, SCALE, causal, valid)
        grads.append(torch.autograd.grad((out * grad_out).sum(), leaves, allow_unused=True))
    for fused, ref, leaf in zip(*grads, leaves):
        fused = torch.zeros_like(leaf) if fused is None else fused
        ref = torch.zeros_like(leaf) if ref is None else ref
        _close(fused, ref, torch.float64)


def test_fused_gradients_after_an_inference_mode_call():
    """The per-length layout is cached; one built inside inference mode must still serve a backward."""
    rules = [Local(5, (0,)), Local(9), Local(5, (0,)), None, Local(9, (0, -1))]  # heads not a run: index tensors
    q, k, v = torch.randn(3, 1, DENSE_MAX_TOKENS + 37, 5, 8, generator=torch.Generator().manual_seed(0)).unbind(0)
    with torch.inference_mode():
        fused_attention(q, k, v, rules, SCALE)
    q.requires_grad_(True)
    fused_attention(q, k, v, rules, SCALE).sum().backward()
    assert q.grad is not None and q.grad.isfinite().all()


# ------------------------------------------------------------------------------------------- end to end
# Rules without attend_heads: the adapter runs them through `attend` (converted_attention), one rule group at a
# time, which is the per-head path of the same plan.


@dataclass(frozen=True)
class _PerHeadLocal(Local):
    attend_heads = None


@dataclass(frozen=True)
class _PerHeadHybrid(Hybrid):
    attend_heads = None


def _per_head_plan(plan: dict) -> dict:
    return {key: (_PerHeadHybrid(r.window, r.sinks, r.global_branch) if isinstance(r, Hybrid)
                  else _PerHeadLocal(r.window, r.sinks)) for key, r in plan.items()}


@pytest.fixture(scope="module")
def bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=256,
                                  attn_implementation="sdpa")
    return transformers.BertModel(cfg).eval()


PLAN = {(0, 0): Local(9, (0, -1)), (0, 1): Hybrid(17, (0, -1), 4), (0, 3): Local(33),
        (1, 0): Local(17, (0,)), (1, 1): Local(9), (1, 2): Hybrid(9, (), 16), (1, 3): Local(300, (0, -1))}


@pytest.mark.parametrize("length", [40, DENSE_MAX_TOKENS + 50])
@pytest.mark.parametrize("padding", ["none", "right", "left"])
def test_converted_model_fused_equals_per_head(bert, length, padding, monkeypatch):
    from glocal.convert import rules as module

    calls = {"fused": 0, "per rule": 0}  # the adapter reaches both through the rule objects

    def counted(name, fn):
        def call(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(module, "fused_attention", counted("fused", module.fused_attention))
    monkeypatch.setattr(module, "converted_attention", counted("per rule", module.converted_attention))
    gen = torch.Generator().manual_seed(length)
    ids = torch.randint(1, 100, (3, length), generator=gen)
    mask = torch.ones(3, length, dtype=torch.long)
    for b, pad in enumerate([0, 7, length // 2]):  # a different real length per sequence
        if padding == "right":
            mask[b, length - pad:] = 0
        elif padding == "left":
            mask[b, :pad] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    outs = []
    with torch.no_grad():
        original = bert(**inputs).last_hidden_state
        for plan, path in ((PLAN, "fused"), (_per_head_plan(PLAN), "per rule")):
            convert(bert, plan)
            try:
                outs.append(bert(**inputs).last_hidden_state)
            finally:
                restore(bert)
            # Fused: one call per layer. Per rule: one converted_attention per rule group (all 7 rules differ).
            assert calls == ({"fused": 2, "per rule": 0} if path == "fused" else {"fused": 0, "per rule": 7})
            calls["fused"] = 0
    fused, per_head = outs
    real = mask.bool()
    torch.testing.assert_close(fused[real], per_head[real], atol=1e-4, rtol=0)
    # The plan does change the model (else the comparison says nothing).
    assert (fused[real] - original[real]).abs().max() > 1e-3
