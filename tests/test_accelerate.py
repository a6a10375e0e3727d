"""glocal.accelerate: Hugging Face layers already windowed by their configuration run with glocal's ops, exactly.

Tiny random models built offline (float32, CPU). Every exactness test also asserts that the accelerated layers'
calls ran through glocal (``report.calls()``), so a silent fallback to the original fails the test.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import raises

import glocal

pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    BertConfig,
    BertModel,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    Gemma3TextModel,
    MistralConfig,
    MistralForCausalLM,
    ModernBertConfig,
    ModernBertModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from glocal.integrations import transformers as hf  # noqa: E402

DECODER = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128,
               vocab_size=100, max_position_embeddings=256, pad_token_id=0)
GLOCAL = "glocal"
SHORT = "the window covers the whole input"


def modernbert():
    return ModernBertModel(ModernBertConfig(
        num_hidden_layers=3, hidden_size=64, num_attention_heads=4, intermediate_size=128, local_attention=16,
        vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
        max_position_embeddings=256))


def mistral():
    return MistralForCausalLM(MistralConfig(num_hidden_layers=2, sliding_window=8, **DECODER))


def qwen2():
    return Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=3, use_sliding_window=True, sliding_window=8,
                                        max_window_layers=1, **DECODER))


def gemma3_causal():
    return Gemma3ForCausalLM(Gemma3TextConfig(num_hidden_layers=2, sliding_window=8,
                                              layer_types=["sliding_attention", "full_attention"], **DECODER))


def gemma3_bidirectional():
    return Gemma3TextModel(Gemma3TextConfig(num_hidden_layers=2, sliding_window=8, use_bidirectional_attention=True,
                                            layer_types=["sliding_attention", "full_attention"], **DECODER))


# builder, accelerated layers, window description
MODELS = {
    "modernbert": (modernbert, [1, 2], "bidirectional window |i - j| <= 8"),
    "mistral": (mistral, [0, 1], "causal sliding window of 8 keys"),
    "qwen2": (qwen2, [1, 2], "causal sliding window of 8 keys"),
    "gemma3": (gemma3_causal, [0], "causal sliding window of 8 keys"),
    # Gemma3TextConfig turns sliding_window=8 into 8 // 2 + 1 = 5 when bidirectional; the mask is |i - j| < 5.
    "gemma3-bidirectional": (gemma3_bidirectional, [0], "bidirectional window |i - j| <= 4"),
}


def build(builder, seed=0):
    torch.manual_seed(seed)
    return builder().eval()


def inputs(padding: str, lengths=(40, 29, 13), vocab=100, seed=1):
    """A batch of sequences of different lengths, padded on ``padding``'s side ("none": all full length)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), tokens), generator=gen)
    mask = torch.ones(len(lengths), tokens, dtype=torch.long)
    if padding != "none":
        for b, n in enumerate(lengths):
            pad = slice(0, tokens - n) if padding == "left" else slice(n, tokens)
            mask[b, pad] = 0
            ids[b, pad] = 0
    return {"input_ids": ids, "attention_mask": mask}


def output(model, batch):
    with torch.no_grad():
        return model(**batch)[0]


def assert_close(out, ref):
    scale = float(ref.abs().max())
    assert float((out - ref).abs().max()) <= 1e-5 * scale


@pytest.mark.parametrize("padding", ["none", "right", "left"])
@pytest.mark.parametrize("name", list(MODELS))
def test_accelerated_model_equals_the_original(name, padding):
    builder, layers, window = MODELS[name]
    model = build(builder)
    batch = inputs(padding)
    reference = output(model, batch)
    report = glocal.accelerate(model)
    assert report.accelerated == layers and window in str(report)
    assert_close(output(model, batch), reference)
    assert report.calls() == {layer: {GLOCAL: 1} for layer in layers}  # the fast path ran, no fallback
    glocal.convert.restore(model)


def test_qwen2_full_layers_stay_original_with_the_reason():
    report = glocal.accelerate(build(qwen2))
    assert report.left == {0: "full attention (layer_types[0] = 'full_attention')"}
    assert "layer 0 (model.layers.0.self_attn): original: full attention" in str(report)


def test_eager_attention_with_additive_masks_equals_the_original():
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(num_hidden_layers=2, sliding_window=8, attn_implementation="eager",
                                             **DECODER)).eval()
    batch = inputs("left")
    reference = output(model, batch)
    report = glocal.accelerate(model)
    assert report.implementation == "eager"
    assert_close(output(model, batch), reference)
    assert report.calls() == {0: {GLOCAL: 1}, 1: {GLOCAL: 1}}


def test_gemma2_soft_capped_layers_stay_original_with_the_reason():
    model = build(lambda: Gemma2ForCausalLM(Gemma2Config(num_hidden_layers=2, sliding_window=8, **DECODER)))
    batch = inputs("left")
    reference = output(model, batch)
    with pytest.warns(UserWarning, match="no local layers in Gemma2ForCausalLM"):
        report = glocal.accelerate(model)
    assert report.accelerated == []
    assert "attn_logit_softcapping=50.0" in report.left[0] and "stays original" in report.left[0]
    assert not hasattr(model, "_glocal_state")
    assert torch.equal(output(model, batch), reference)


@pytest.mark.parametrize("name", ["modernbert", "mistral"])
def test_a_sequence_the_window_covers_falls_back_exactly(name):
    builder, layers, _ = MODELS[name]
    model = build(builder)
    batch = inputs("right", lengths=(6, 4))
    reference = output(model, batch)
    report = glocal.accelerate(model)
    assert_close(output(model, batch), reference)
    assert report.calls() == {layer: {SHORT: 1} for layer in layers}


def test_padding_with_a_hole_falls_back_exactly():
    model = build(modernbert)
    batch = inputs("none", lengths=(30, 30))
    batch["attention_mask"][1, 10:14] = 0  # not one contiguous run of real tokens
    reference = output(model, batch)
    report = glocal.accelerate(model)
    assert_close(output(model, batch), reference)
    reason = "padding that is not one contiguous run of real tokens per sequence"
    assert report.calls() == {1: {reason: 1}, 2: {reason: 1}}


@pytest.mark.parametrize("name", ["modernbert", "mistral"])
def test_restore_is_exact(name):
    builder, _, _ = MODELS[name]
    model = build(builder)
    batch = inputs("right")
    implementation = model.config._attn_implementation
    reference = output(model, batch)
    glocal.accelerate(model)
    assert hf.accelerated_layers(model) and model.config._attn_implementation != implementation
    glocal.convert.restore(model)
    assert model.config._attn_implementation == implementation
    assert not hasattr(model, "_glocal_state") and hf.accelerated_layers(model) == {}
    assert torch.equal(output(model, batch), reference)


@pytest.mark.parametrize("builder", [
    lambda: BertModel(BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                                 vocab_size=100)),
    lambda: MistralForCausalLM(MistralConfig(num_hidden_layers=2, sliding_window=None, **DECODER)),
], ids=["bert", "mistral-no-window"])
def test_a_model_without_local_layers_is_unchanged_and_warns(builder):
    model = build(builder)
    batch = inputs("right")
    implementation = model.config._attn_implementation
    reference = output(model, batch)
    with pytest.warns(UserWarning, match=r"glocal.accelerate: no local layers in .*the model is unchanged"):
        report = glocal.accelerate(model)
    assert report.accelerated == [] and set(report.left) == {0, 1}
    assert all("no sliding_window in the configuration" in why for why in report.left.values())
    assert model.config._attn_implementation == implementation and not hasattr(model, "_glocal_state")
    assert torch.equal(output(model, batch), reference)


def test_decoding_with_a_cache_equals_the_original():
    model = build(mistral)
    batch = inputs("left", lengths=(20, 14))
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, output_scores=True,
                    return_dict_in_generate=True)
    with torch.no_grad():
        reference = model.generate(**batch, **settings)
        report = glocal.accelerate(model)
        result = model.generate(**batch, **settings)
    assert torch.equal(result.sequences, reference.sequences)
    for a, b in zip(result.scores, reference.scores):
        assert_close(a, b)
    step = "queries and keys differ in number (a decoding step or a cached prefix)"
    assert report.calls() == {0: {GLOCAL: 1, step: 4}, 1: {GLOCAL: 1, step: 4}}  # prefill, then 4 decoding steps


# --- error messages ------------------------------------------------------------------------------


def test_accelerate_refuses_a_module_that_is_not_a_transformers_model():
    with raises(TypeError, "glocal.accelerate handles Hugging Face transformers models", "got Linear",
                "call glocal.na1d(q, k, v, kernel_size=..., is_causal=...)"):
        glocal.accelerate(torch.nn.Linear(4, 4))


def test_converting_an_accelerated_layer_is_refused():
    model = build(modernbert)
    glocal.accelerate(model)
    with raises(ValueError, "layers [1] are accelerated by glocal.accelerate", "got plan layers [0, 1]",
                "accelerated layers [1, 2]", "call glocal.convert.restore(model) first"):
        glocal.convert(model, {(0, 0): glocal.convert.Local(5), (1, 2): glocal.convert.Local(5)})


# --- command line --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["modernbert", "mistral"])
def test_convert_accelerate_cli(name, tmp_path, capsys):
    from glocal.cli import main

    builder, layers, _ = MODELS[name]
    model = build(builder)
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "accelerate.json"
    assert main(["convert", "--accelerate", str(tmp_path / "model"), "--tokens", "48", "--speed-repeats", "1",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"glocal.accelerate: {len(layers)} of " in printed and type(model).__name__ in printed
    assert "max relative error" in printed and "speed at 48 tokens" in printed
    result = json.loads(out.read_text())
    assert result["accelerated"] == layers and result["tokens"] == 48
    assert result["check_relative_error"] < 1e-5 and result["relative_error"] < 1e-5
    assert result["check_calls"] == {str(layer): {GLOCAL: 1} for layer in layers}  # the check ran glocal
    assert result["original_ms"] > 0 and result["accelerated_ms"] > 0 and result["machine"]


def test_convert_accelerate_cli_on_a_model_without_local_layers(tmp_path, capsys):
    from glocal.cli import main

    build(lambda: MistralForCausalLM(MistralConfig(num_hidden_layers=2, sliding_window=None, **DECODER))) \
        .save_pretrained(tmp_path / "model")
    out = tmp_path / "accelerate.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the report is printed, not warned twice
        assert main(["convert", "--accelerate", str(tmp_path / "model"), "--json", str(out)]) == 0
    assert "no local layers in MistralForCausalLM" in capsys.readouterr().out
    assert json.loads(out.read_text())["accelerated"] == []


def test_inspect_line_names_the_layers_accelerate_would_run():
    from glocal.analysis.command import accelerate_line

    line = accelerate_line(build(modernbert))
    assert line.startswith("accelerate: layers 1, 2 of 3 have configured windows glocal runs exactly")
    assert "bidirectional window |i - j| <= 8" in line and "glocal convert --accelerate" in line
    bert = build(lambda: BertModel(BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                              intermediate_size=128, vocab_size=100)))
    assert accelerate_line(bert).startswith("accelerate: no layer has a configured window")
