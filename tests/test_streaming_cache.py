"""StreamingCache (glocal.integrations.transformers): a StreamingLLM cache for Hugging Face causal LMs.

Against plain generate while nothing is evicted, and beyond the window against an independent re-implementation of
the Llama forward from the model's weights that keeps the pre-RoPE keys of the kept tokens (sinks + last window) and
rotates them by their slots (positions="cache") or their stream positions (positions="absolute"). Then the memory
bound, and one test per error message (a refused call leaves the cache as it was).
"""

from __future__ import annotations

import pytest
import torch
from conftest import raises

transformers = pytest.importorskip("transformers")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from glocal.integrations.transformers import StreamingCache, _SinkRotation  # noqa: E402

WINDOW, SINKS = 8, 2


def tiny_llama(dtype=torch.float32, heads=4, kv_heads=2, **config):
    options = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096)
    options.update(config)
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**options)).eval().to(dtype)


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


@pytest.fixture(scope="module")
def llama64():
    return tiny_llama(torch.float64)


def prompt(length, batch=1, seed=1):
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ the reference


def _rms(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, positions, inv_freq):
    """x [H, n, D] rotated by positions [n] (rotate-half pairs i, i + D/2)."""
    angle = positions[:, None].to(x.dtype) * inv_freq.to(x.dtype)
    cos, sin = angle.cos(), angle.sin()
    half = inv_freq.numel()
    x1, x2 = x[..., :half], x[..., half:2 * half]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., 2 * half:]), dim=-1)


class Reference:
    """The Llama forward in float64 from the model's weights, over a stream fed chunk by chunk, one sequence.

    Per layer it keeps the pre-RoPE keys and the values of every token; a chunk's queries attend the kept past
    (the first `sinks` tokens and the last `window` before the chunk) and the chunk causally, all rotated by
    their slots 0..n-1 (positions="cache") or their stream positions (positions="absolute")."""

    def __init__(self, model, window, sinks, positions):
        self.p = {name: w.detach().double() for name, w in model.named_parameters()}
        c = model.config
        self.layers, self.heads, self.kv_heads = c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads
        self.dim = c.hidden_size // c.num_attention_heads
        self.eps = c.rms_norm_eps
        theta = c.rope_parameters["rope_theta"]
        self.inv_freq = 1.0 / theta ** (torch.arange(0, self.dim, 2, dtype=torch.float64) / self.dim)
        self.window, self.sinks, self.positions = window, sinks, positions
        self.keys = [[] for _ in range(self.layers)]  # per layer, per stream token: pre-RoPE [H_kv, D]
        self.values = [[] for _ in range(self.layers)]
        self.seen = 0

    def kept(self):
        seen, s = self.seen, self.sinks
        return list(range(min(seen, s))) + list(range(max(s, seen - self.window), seen))

    def __call__(self, ids):
        """Logits [T, V] of a chunk of token ids [T]."""
        p, d, length = self.p, self.dim, len(ids)
        kept, new = self.kept(), list(range(self.seen, self.seen + length))
        if self.positions == "cache":
            key_pos = torch.arange(len(kept) + length)
            query_pos = key_pos[len(kept):]
        else:
            key_pos = torch.tensor(kept + new)
            query_pos = torch.tensor(new)
        visible = torch.ones(length, len(kept) + length, dtype=torch.bool)
        visible[:, len(kept):] = torch.ones(length, length, dtype=torch.bool).tril()
        h = p["model.embed_tokens.weight"][ids]
        for i in range(self.layers):
            pre = f"model.layers.{i}."
            x = _rms(h, p[pre + "input_layernorm.weight"], self.eps)
            q = (x @ p[pre + "self_attn.q_proj.weight"].T).view(length, self.heads, d).transpose(0, 1)
            k = (x @ p[pre + "self_attn.k_proj.weight"].T).view(length, self.kv_heads, d)
            v = (x @ p[pre + "self_attn.v_proj.weight"].T).view(length, self.kv_heads, d)
            self.keys[i].extend(k.unbind(0))
            self.values[i].extend(v.unbind(0))
            keys = torch.stack([self.keys[i][t] for t in kept + new], 1)  # [H_kv, n, D]
            values = torch.stack([self.values[i][t] for t in kept + new], 1)
            group = self.heads // self.kv_heads
            keys = _rope(keys, key_pos, self.inv_freq).repeat_interleave(group, 0)
            values = values.repeat_interleave(group, 0)
            q = _rope(q, query_pos, self.inv_freq)
            scores = (q @ keys.transpose(1, 2)) * d ** -0.5
            probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
            out = (probs @ values).transpose(0, 1).reshape(length, self.heads * d)
            h = h + out @ p[pre + "self_attn.o_proj.weight"].T
            x = _rms(h, p[pre + "post_attention_layernorm.weight"], self.eps)
            gate = torch.nn.functional.silu(x @ p[pre + "mlp.gate_proj.weight"].T)
            h = h + (gate * (x @ p[pre + "mlp.up_proj.weight"].T)) @ p[pre + "mlp.down_proj.weight"].T
        self.seen += length
        return _rms(h, p["model.norm.weight"], self.eps) @ p["lm_head.weight"].T


def generate(model, ids, new, cache=None, **kwargs):
    out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, cache=cache,
                         return_dict_in_generate=True, output_logits=True, **kwargs)
    return out.sequences, torch.stack(out.logits, 1)  # [B, T], [B, new, V]


def reference_logits(model, sequence, prompt_length, window, sinks, positions):
    """The reference's next-token logits [new, V] along a generated sequence [T] (teacher forced)."""
    ref = Reference(model, window, sinks, positions)
    rows = [ref(sequence[:prompt_length])[-1]]
    rows += [ref(sequence[t:t + 1])[-1] for t in range(prompt_length, len(sequence) - 1)]
    return torch.stack(rows)


# ---------------------------------------------------------------------------------------------- agreement


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated")
@pytest.mark.parametrize("positions", ["cache", "absolute"])
def test_generate_equals_plain_generate_while_nothing_is_evicted(llama, positions):
    ids = prompt(4, batch=2)
    new = WINDOW + SINKS - 4  # prompt + generated == sinks + window
    plain = llama.generate(ids, max_new_tokens=new, do_sample=False, return_dict_in_generate=True, output_scores=True)
    cache = StreamingCache(llama, WINDOW, SINKS, positions=positions)
    streamed = llama.generate(ids, max_new_tokens=new, do_sample=False, return_dict_in_generate=True,
                              output_scores=True, past_key_values=cache)
    assert torch.equal(plain.sequences, streamed.sequences)
    for a, b in zip(plain.scores, streamed.scores):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    assert cache.get_seq_length() == WINDOW + SINKS - 1  # the last token is generated, not fed


@pytest.mark.parametrize("positions", ["cache", "absolute"])
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-4), (torch.float64, 1e-6)])
def test_long_stream_equals_the_reference(llama, llama64, positions, dtype, atol):
    model = llama if dtype == torch.float32 else llama64
    ids, length = prompt(6), 60  # the ring wraps at each of its 8 offsets, several times
    sequence, logits = generate(model, ids, length - 6, StreamingCache(model, WINDOW, SINKS, positions))
    expected = reference_logits(model, sequence[0], 6, WINDOW, SINKS, positions)
    torch.testing.assert_close(logits[0].double(), expected, rtol=0, atol=atol)
    # The comparison means something: a dense model (nothing evicted) scores the stream differently.
    dense = reference_logits(model, sequence[0], 6, 10 ** 6, 0, "absolute")
    assert (dense[-1] - expected[-1]).abs().max() > 1e-2


def test_re_indexing_differs_from_absolute_positions(llama):
    sequence, _ = generate(llama, prompt(6), 30, StreamingCache(llama, WINDOW, SINKS))
    cache = reference_logits(llama, sequence[0], 6, WINDOW, SINKS, "cache")
    absolute = reference_logits(llama, sequence[0], 6, WINDOW, SINKS, "absolute")
    assert (cache[-1] - absolute[-1]).abs().max() > 1e-3


@pytest.mark.parametrize("sinks", [0, 3])
@pytest.mark.parametrize("heads, kv_heads", [(4, 1), (4, 4)])
def test_sinks_and_kv_heads(sinks, heads, kv_heads):
    model = tiny_llama(heads=heads, kv_heads=kv_heads)
    sequence, logits = generate(model, prompt(3), 30, StreamingCache(model, 5, sinks))
    torch.testing.assert_close(logits[0].double(), reference_logits(model, sequence[0], 3, 5, sinks, "cache"),
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("positions", ["cache", "absolute"])
def test_chunks_longer_than_the_cache(llama, positions):
    """A prompt longer than sinks + window (the prefill attends itself in full), then steps and chunks of every
    size, straddling the sinks and the ring's end; each chunk attends the kept past and itself causally."""
    stream = prompt(100, seed=3)[0]
    cache = StreamingCache(llama, WINDOW, SINKS, positions)
    ref = Reference(llama, WINDOW, SINKS, positions)
    start = 0
    for size in [1, 1, 15, 1, 1, 3, 7, 1, 12, 1, 5, 1, 1, 1, 9, 2, 1, 20, 1, 1]:
        chunk = stream[start:start + size]
        got = llama(input_ids=chunk[None], cache=cache, use_cache=True).logits[0]
        torch.testing.assert_close(got.double(), ref(chunk), rtol=0, atol=1e-4)
        start += size
        assert cache.get_seq_length() == start


def test_eager_attention_equals_the_reference():
    model = tiny_llama()
    model.set_attn_implementation("eager")
    sequence, logits = generate(model, prompt(12), 20, StreamingCache(model, WINDOW, SINKS))
    torch.testing.assert_close(logits[0].double(), reference_logits(model, sequence[0], 12, WINDOW, SINKS, "cache"),
                               rtol=0, atol=1e-4)


def test_batch_rows_stream_independently(llama):
    ids = prompt(5, batch=3)
    sequences, logits = generate(llama, ids, 25, StreamingCache(llama, WINDOW, SINKS))
    for b in range(3):
        torch.testing.assert_close(logits[b].double(), reference_logits(llama, sequences[b], 5, WINDOW, SINKS, "cache"),
                                   rtol=0, atol=1e-4)


def test_beam_search_reorders_in_place(llama):
    ids = prompt(4, batch=2)
    plain = llama.generate(ids, max_new_tokens=6, do_sample=False, num_beams=3)
    streamed = llama.generate(ids, max_new_tokens=6, do_sample=False, num_beams=3,
                              cache=StreamingCache(llama, WINDOW, SINKS))
    assert torch.equal(plain, streamed)


def test_reset_starts_a_new_stream(llama):
    cache = StreamingCache(llama, WINDOW, SINKS)
    first, logits = generate(llama, prompt(5), 20, cache)
    cache.reset()
    assert cache.get_seq_length() == 0
    again, logits_again = generate(llama, prompt(5), 20, cache)
    assert torch.equal(first, again)
    torch.testing.assert_close(logits_again, logits, rtol=0, atol=0)
    cache.reset()  # a new stream may have another batch size
    generate(llama, prompt(5, batch=2), 3, cache)


def test_continuing_a_stream_with_generate(llama):
    """generate slices its input by get_seq_length(), which counts the whole stream."""
    cache = StreamingCache(llama, WINDOW, SINKS)
    first, _ = generate(llama, prompt(5), 15, cache)
    both, logits = generate(llama, first, 10, cache)
    reference = reference_logits(llama, both[0], 5, WINDOW, SINKS, "cache")
    torch.testing.assert_close(logits[0].double(), reference[15:], rtol=0, atol=1e-4)


def test_memory_is_constant(llama):
    cache = StreamingCache(llama, WINDOW, SINKS)
    assert cache.nbytes() == 0
    stream = prompt(3 * (WINDOW + SINKS), seed=5)[0]
    sizes = {}
    for t in range(len(stream)):
        llama(input_ids=stream[None, t:t + 1], cache=cache, use_cache=True)
        sizes[t + 1] = cache.nbytes()
    c = llama.config
    per_layer = 2 * (SINKS + WINDOW) * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4
    assert sizes[WINDOW + SINKS + 1] == sizes[3 * (WINDOW + SINKS)] == c.num_hidden_layers * per_layer
    assert cache.get_mask_sizes(1, 0) == (WINDOW + SINKS + 1, 3 * (WINDOW + SINKS) - WINDOW - SINKS)
    # Stored detached: with autograd on, a graph through in-place copies would grow with the stream.
    assert not any(b.requires_grad for layer in cache.layers for b in layer._buffers())


@pytest.mark.parametrize("rotary_dims", [4, 8])
def test_sink_rotation_shifts_positions(rotary_dims):
    """Rotating a key at position p by delta is the key at position p + delta, the unrotated channels kept
    (partial rotary)."""
    rotary = torch.nn.Module()
    rotary.inv_freq = 1.0 / 10000.0 ** (torch.arange(0, rotary_dims, 2, dtype=torch.float64) / rotary_dims)
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    at = torch.arange(5)
    shifted = _SinkRotation(rotary)(_rope(x, at, rotary.inv_freq), 37)
    torch.testing.assert_close(shifted, _rope(x, at + 37, rotary.inv_freq), rtol=0, atol=1e-12)
    torch.testing.assert_close(shifted[..., rotary_dims:], x[..., rotary_dims:], rtol=0, atol=0)


def test_gpt2_with_absolute_positions():
    """positions="absolute" needs no RoPE: learned position embeddings keep working."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()
    ids = prompt(4)
    plain, plain_logits = generate(model, ids, 6, pad_token_id=0)
    streamed, logits = generate(model, ids, 6, StreamingCache(model, WINDOW, SINKS, "absolute"), pad_token_id=0)
    assert torch.equal(plain, streamed)
    torch.testing.assert_close(logits, plain_logits, rtol=0, atol=1e-5)
    generate(model, ids, 40, StreamingCache(model, WINDOW, SINKS, "absolute"), pad_token_id=0)


# --------------------------------------------------------------------------------------------------- errors


def _snapshot(cache):
    return [(layer.seen, [b.clone() for b in layer._buffers()]) for layer in cache.layers]


def _unchanged(cache, before):
    after = _snapshot(cache)
    return all(s == t and all(torch.equal(x, y) for x, y in zip(a, b)) for (s, a), (t, b) in zip(before, after))


@pytest.fixture
def streamed(llama):
    cache = StreamingCache(llama, WINDOW, SINKS)
    llama(input_ids=prompt(13), cache=cache, use_cache=True)
    return cache


def kv(batch=1, heads=2, length=1, dim=16, dtype=torch.float32):
    return torch.zeros(batch, heads, length, dim, dtype=dtype)


def test_window_below_one(llama):
    with raises(ValueError, "window must be >= 1", "got window=0", "Pass e.g. window=256"):
        StreamingCache(llama, 0)


def test_window_not_an_int(llama):
    with raises(TypeError, "window must be an int", "got window=8.0 of type float"):
        StreamingCache(llama, 8.0)


def test_negative_sinks(llama):
    with raises(ValueError, "sinks must be >= 0", "got sinks=-1", "Pass e.g. sinks=4"):
        StreamingCache(llama, WINDOW, -1)


def test_unknown_positions(llama):
    with raises(ValueError, "positions must be 'cache'", "or 'absolute'", "got positions='relative'",
                "Pass positions='cache' or positions='absolute'"):
        StreamingCache(llama, WINDOW, positions="relative")


def test_not_a_transformers_model():
    with raises(TypeError, "Hugging Face causal LMs", "got model of type Linear", "Pass a transformers model"):
        StreamingCache(torch.nn.Linear(2, 2), WINDOW)


def test_no_attention_layers(llama):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    model.config = llama.config
    with raises(ValueError, "found none in this model", "got Sequential with attention_layers=0", "ALL_ATTENTION"):
        StreamingCache(model, WINDOW)


def test_sliding_window_layers():
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, sliding_window=16)
    with raises(ValueError, "every attention layer to be full attention", "got 2 of 2 layers that are not",
                "layer 0: 'sliding_attention'", "config.sliding_window=16", "Use a model whose layers"):
        StreamingCache(MistralForCausalLM(config), WINDOW)


def test_mixed_layer_types():
    model = tiny_llama(num_hidden_layers=6)
    model.config.layer_types = ["full_attention", "sliding_attention"] * 3
    with raises(ValueError, "got 3 of 6 layers that are not", "layer 1: 'sliding_attention'", "layer 5",
                "config.layer_types"):
        StreamingCache(model, WINDOW, positions="absolute")


def test_no_rotary_embedding_for_re_indexing():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    with raises(ValueError, "found no rotary embedding", "inv_freq", "Use positions='absolute'"):
        StreamingCache(model, WINDOW)


def test_several_rotary_embeddings():
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    model = tiny_llama()
    other = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_parameters={"rope_type": "default",
                                                                                "rope_theta": 500.0})
    model.model.layers[1].self_attn.rotary_emb = LlamaRotaryEmbedding(other)
    with raises(ValueError, "several different ones", "'model.layers.1.self_attn.rotary_emb', 'model.rotary_emb'",
                "Use positions='absolute'"):
        StreamingCache(model, WINDOW)
    StreamingCache(model, WINDOW, positions="absolute")


def test_length_dependent_rope():
    model = tiny_llama(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    with raises(ValueError, "fixed RoPE frequencies", "got rope_type='dynamic'", "Use positions='absolute'"):
        StreamingCache(model, WINDOW)


def test_rotary_wider_than_the_head(llama):
    cache = StreamingCache(llama, WINDOW, SINKS)
    cache.layers[0].rotation = _SinkRotation(type("Rotary", (), {"inv_freq": torch.ones(9)})())
    with raises(ValueError, "must fit in the key head dim", "got rotary_dims=18, head_dim=16"):
        cache.update(kv(), kv(), 0)
    assert not cache.layers[0].is_initialized and cache.get_seq_length() == 0


def test_layer_index_out_of_range(streamed):
    before = _snapshot(streamed)
    with raises(ValueError, "numbered 0..1", "got layer_idx=2", "Build the StreamingCache from the model"):
        streamed.update(kv(), kv(), 2)
    assert _unchanged(streamed, before)


def test_states_not_tensors(streamed):
    with raises(TypeError, "key_states must be a torch.Tensor"):
        streamed.update([0.0], kv(), 0)


def test_states_not_floating(streamed):
    before = _snapshot(streamed)
    with raises(TypeError, "value_states must be a floating-point tensor", "value_states.dtype=torch.int64"):
        streamed.update(kv(), kv().long(), 0)
    assert _unchanged(streamed, before)


def test_states_of_the_wrong_rank(streamed):
    before = _snapshot(streamed)
    with raises(ValueError, "[B, H_kv, T, D]", "key_states.shape=(1, 2, 16)", "value_states.shape=(1, 2, 1, 16)",
                "layer 0", "heads before tokens"):
        streamed.update(kv()[:, :, 0], kv(), 0)
    assert _unchanged(streamed, before)


def test_keys_and_values_disagree(streamed):
    before = _snapshot(streamed)
    with raises(TypeError, "share dtype and device", "key_states: torch.float32 cpu", "value_states: torch.float64"):
        streamed.update(kv(), kv(dtype=torch.float64), 1)
    assert _unchanged(streamed, before)


@pytest.mark.parametrize("change, message", [
    (dict(batch=2), "batch: 1 -> 2"), (dict(heads=4), "heads: 2 -> 4"), (dict(dim=8), "key_dim: 16 -> 8"),
    (dict(dtype=torch.float64), "dtype: torch.float32 -> torch.float64")])
def test_layout_change_mid_stream(streamed, change, message):
    before = _snapshot(streamed)
    with raises(ValueError, "fixes its layout", "after seen=13 tokens in layer 1", message, "cache.reset()"):
        streamed.update(kv(**change), kv(**change), 1)
    assert _unchanged(streamed, before)


def test_batch_size_change_mid_stream(streamed):
    before = _snapshot(streamed)
    with raises(NotImplementedError, "does not change the batch size mid-stream",
                "cache.batch_repeat_interleave(...) after seen=13 tokens", "reset()"):
        streamed.batch_repeat_interleave(2)
    assert _unchanged(streamed, before)
    with raises(NotImplementedError, "cache.batch_select_indices(...)"):
        streamed.batch_select_indices(torch.tensor([0]))


def test_reorder_with_the_wrong_rows(streamed):
    before = _snapshot(streamed)
    with raises(ValueError, "one existing row for each row", "beam_idx.shape=(2,) for batch=1", "Pass 1 row"):
        streamed.reorder_cache(torch.tensor([0, 0]))
    assert _unchanged(streamed, before)


def test_crop(streamed):
    before = _snapshot(streamed)
    streamed.crop(0)
    with raises(NotImplementedError, "cannot roll the stream back", "crop(tokens_to_remove=-1) after seen=13"):
        streamed.crop(-1)
    assert _unchanged(streamed, before)


def test_only_streaming_cache_is_built_lazily():
    import glocal.integrations.transformers as hf

    assert hf.StreamingCache is StreamingCache and StreamingCache.__qualname__ == "StreamingCache"
    with pytest.raises(AttributeError, match="has no attribute 'SinkCache'"):
        hf.SinkCache  # noqa: B018
