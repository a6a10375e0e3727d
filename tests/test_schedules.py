"""Layer schedules (glocal.nn.HybridEncoder, HybridDecoder): every letter against a dense masked reference,
ModernBERT's schedule against transformers' ModernBERT with the same weights, causality, every error message."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import glocal
from glocal.masks import dense_mask
from glocal.nn.rope import rope, rope_grid
from glocal.nn.schedules import DEFAULTS, ScheduledAttention, banded_attention
from glocal.spec import make_neighborhood_spec


def _reference_mask(layer: ScheduledAttention, grid) -> torch.Tensor:
    n = 1
    for s in grid:
        n *= s
    i = torch.arange(n)
    causal = i[None, :] <= i[:, None] if layer.is_causal else torch.ones(n, n, dtype=torch.bool)
    if layer.kind == "G":
        return causal
    if layer.border == "truncate" and not layer.is_causal:
        return (i[:, None] - i[None, :]).abs() <= layer.window // 2
    window = layer.window if len(grid) > 1 else min(layer.window, grid[0])
    return dense_mask(make_neighborhood_spec(grid, window, 1, 1, layer.is_causal))


def reference(layer: ScheduledAttention, x: torch.Tensor) -> torch.Tensor:
    """One L/G/M/N layer from its definition, dense, in x's dtype (tests use float64)."""
    grid = tuple(x.shape[1:-1])
    q, k, v = layer.qkv(x).unflatten(-1, (3, layer.num_heads, layer.head_dim)).unbind(-3)
    if layer.rope_theta is not None:
        if len(grid) == 1:
            q, k = (rope(t, torch.arange(grid[0]), layer.rope_theta) for t in (q, k))
        else:
            q, k = (rope_grid(t, layer.rope_theta) for t in (q, k))
    qf, kf, vf = (t.flatten(1, -3).transpose(1, 2) for t in (q, k, v))  # [B, H, N, D]
    if layer.kind == "N":
        a, c = F.elu(qf) + 1, F.elu(kf) + 1
        w = a @ c.transpose(-1, -2)
        if layer.is_causal:
            w = w.tril()
        out = (w @ vf) / w.sum(-1, keepdim=True)
    elif layer.kind == "M":  # the routing of glocal.moba_selection (checked against a loop in test_block_sparse)
        q1, k1 = qf.transpose(1, 2), kf.transpose(1, 2)
        if len(grid) == 1:
            sel = glocal.moba_selection(q1, k1, layer.block_size, top_k=layer.top_k, is_causal=layer.is_causal)
            block = torch.arange(grid[0]) // layer.block_size
            allowed = sel[..., block]  # [B, H, N, N]
            if layer.is_causal:
                allowed = allowed & torch.ones(grid[0], grid[0], dtype=torch.bool).tril()
            out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=allowed)
        else:
            out = glocal.moba_attention_nd(q, k, v, layer.block_size, top_k=layer.top_k,
                                           backend="reference").flatten(1, -3).transpose(1, 2)
    else:
        out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=_reference_mask(layer, grid))
    return layer.proj(out.transpose(1, 2).reshape(*x.shape[:-1], -1))


LAYERS = [  # (kind, ndim, causal, options, input shape)
    ("L", 1, False, dict(window=7), (2, 19)),
    ("L", 1, False, dict(window=7, border="truncate"), (2, 19)),
    ("L", 1, False, dict(window=31, border="truncate"), (1, 12)),  # band longer than the sequence
    ("L", 1, True, dict(window=6), (2, 19)),
    ("L", 1, True, dict(window=40), (1, 19)),  # window longer than the sequence: every earlier token
    ("L", 2, False, dict(window=(3, 5)), (1, 7, 9)),
    ("L", 3, False, dict(window=3), (1, 4, 5, 6)),
    ("G", 1, False, {}, (2, 15)),
    ("G", 1, True, {}, (2, 15)),
    ("G", 2, False, {}, (1, 5, 6)),
    ("M", 1, True, dict(block_size=4, top_k=2), (2, 21)),
    ("M", 1, False, dict(block_size=4, top_k=2), (1, 21)),
    ("M", 2, False, dict(block_size=(2, 3), top_k=3), (1, 6, 6)),
    ("N", 1, True, dict(rope_theta=None), (2, 17)),
    ("N", 2, False, dict(rope_theta=None), (1, 5, 4)),
]


@pytest.mark.parametrize("kind,ndim,causal,options,shape", LAYERS)
def test_every_attention_kind_equals_its_dense_reference(kind, ndim, causal, options, shape):
    torch.manual_seed(len(shape) * 31 + shape[-1])
    layer = ScheduledAttention(kind, 24, 2, ndim=ndim, is_causal=causal,
                               **{"rope_theta": 100.0 if ndim < 3 else None, **options}).double()
    x = torch.randn(*shape, 24, dtype=torch.float64, requires_grad=True)
    out, ref = layer(x), reference(layer, x)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *layer.parameters()], grad)
    want = torch.autograd.grad(ref, [x, *layer.parameters()], grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("length,radius", [(30, 4), (9, 4), (5, 4), (8, 0), (1, 2)])
def test_banded_attention_is_the_band_cut_at_the_ends(length, radius):
    gen = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(2, length, 2, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    i = torch.arange(length)
    band = (i[:, None] - i[None, :]).abs() <= radius
    ref = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=band).transpose(1, 2)
    torch.testing.assert_close(banded_attention(q, k, v, radius), ref)


def test_pattern_repeats_to_the_depth_with_per_kind_settings():
    enc = glocal.nn.HybridEncoder(32, 2, depth=5, pattern="GLN", settings={"L": {"window": 5, "rope_theta": 50.0}})
    assert enc.kinds == "GLNGL"
    assert [layer.attn.kind for layer in enc.layers] == list("GLNGL")
    assert enc.layers[1].attn.window == 5 and enc.layers[1].attn.rope_theta == 50.0
    assert enc.layers[0].attn.rope_theta == DEFAULTS["G"]["rope_theta"]
    assert enc(torch.randn(1, 12, 32)).shape == (1, 12, 32)


def test_every_letter_builds_and_is_causal_in_a_decoder():
    settings = {"L": {"window": 8}, "M": {"block_size": 8}, "P": {"window_size": 8}, "F": {"window": 8, "pool": 4},
                "R": {"chunk_size": 4}, "H": {"kernel_size": 5}}
    torch.manual_seed(0)
    for letter in "LGNMRPHF":
        dec = glocal.nn.HybridDecoder(32, 2, depth=1, pattern=letter, settings=settings).eval()
        x = torch.randn(2, 30, 32)
        y = dec(x)
        if letter == "F":  # routed per request by the prompt's ends: fix the choice to compare a prefix
            attn = dec.layers[0].attn
            for force in ("full", "sparse"):
                attn.forward = functools.partial(type(attn).forward, attn, force=force)
                torch.testing.assert_close(dec(x[:, :20]), dec(x)[:, :20], atol=1e-5, rtol=1e-5)
            continue
        torch.testing.assert_close(dec(x[:, :20]), y[:, :20], atol=1e-5, rtol=1e-5)


def test_every_encoder_letter_on_sequences_and_grids():
    settings = {"L": {"window": 5}, "M": {"block_size": 4}, "P": {"window_size": 5}, "H": {"kernel_size": 3}}
    seq = glocal.nn.HybridEncoder(32, 2, depth=6, pattern="LGNMPH", settings=settings)
    assert seq(torch.randn(1, 20, 32)).shape == (1, 20, 32)
    grid = glocal.nn.HybridEncoder(32, 2, depth=5, pattern="LGNMH", ndim=2, settings=settings)
    assert [type(layer.attn).__name__ for layer in grid.layers][-1] == "HybridAttention"
    assert grid(torch.randn(1, 8, 8, 32)).shape == (1, 8, 8, 32)


def _modernbert_pair(depth=6, window=8):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    cfg = transformers.ModernBertConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=depth,
                                        intermediate_size=96, local_attention=window, vocab_size=100, pad_token_id=0,
                                        bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
                                        max_position_embeddings=512)
    theirs = transformers.ModernBertModel(cfg).double().eval()
    ours = glocal.nn.HybridEncoder.modernbert(dim=64, num_heads=4, depth=depth, local_window=window,
                                              mlp_hidden=96).double().eval()
    names = {"attn.Wqkv": "attn.qkv", "attn.Wo": "attn.proj", "final_norm": "norm"}
    state = {}
    for name, value in theirs.state_dict().items():
        if name.startswith("embeddings"):
            continue
        for a, b in names.items():
            name = name.replace(a, b)
        state[name] = value
    ours.load_state_dict(state, strict=True)
    return theirs, ours


@pytest.mark.parametrize("tokens", [7, 40])
def test_modernbert_schedule_equals_transformers_modernbert(tokens):
    theirs, ours = _modernbert_pair()
    ids = torch.randint(3, 100, (2, tokens), generator=torch.Generator().manual_seed(tokens))
    with torch.no_grad():
        want = theirs(input_ids=ids).last_hidden_state
        got = ours(theirs.embeddings(input_ids=ids))
    assert ours.kinds == "GLLGLL"
    assert [layer.attn.rope_theta for layer in ours.layers[:3]] == [160000.0, 10000.0, 10000.0]
    assert ours.layers[1].attn.window == 9 and ours.layers[1].attn.border == "truncate"
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


# -- error messages, one test each ---------------------------------------------------------------------


def test_error_unknown_letter_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"HybridEncoder layer letters are L local, G global, .*got 'X' in "
                                         r"pattern='LXG'\. Use only the letters LGNMPH"):
        glocal.nn.HybridEncoder(32, 2, depth=3, pattern="LXG")


def test_error_causal_letter_in_an_encoder():
    with pytest.raises(ValueError, match=r"got 'R' in pattern='LR'"):
        glocal.nn.HybridEncoder(32, 2, depth=2, pattern="LR")


def test_error_sequence_letter_on_a_grid():
    with pytest.raises(ValueError, match=r"HybridEncoder on 2-D grids layer letters are .*got 'P'"):
        glocal.nn.HybridEncoder(32, 2, depth=2, pattern="LP", ndim=2)


def test_error_empty_pattern():
    with pytest.raises(ValueError, match=r"pattern must be a non-empty string of layer letters .*got pattern=''"):
        glocal.nn.HybridDecoder(32, 2, depth=2, pattern="")


def test_error_depth():
    with pytest.raises(ValueError, match=r"depth must be a positive int; got depth=0"):
        glocal.nn.HybridDecoder(32, 2, depth=0, pattern="L")


def test_error_settings_not_a_dict():
    with pytest.raises(TypeError, match=r"settings must be a dict from layer letter"):
        glocal.nn.HybridEncoder(32, 2, depth=1, pattern="L", settings=[("L", {})])


def test_error_settings_unknown_letter():
    with pytest.raises(ValueError, match=r"settings has options for layer letter 'Q'"):
        glocal.nn.HybridEncoder(32, 2, depth=1, pattern="L", settings={"Q": {}})


def test_error_settings_letter_options_not_a_dict():
    with pytest.raises(TypeError, match=r"settings\['L'\] must be a dict of options; got 65"):
        glocal.nn.HybridEncoder(32, 2, depth=1, pattern="L", settings={"L": 65})


def test_error_settings_unknown_option():
    with pytest.raises(ValueError, match=r"settings\['L'\] has no option 'kernel'; the options of 'L' are "):
        glocal.nn.HybridEncoder(32, 2, depth=1, pattern="L", settings={"L": {"kernel": 5}})


def test_error_unknown_border():
    with pytest.raises(ValueError, match=r"border must be 'shift' .* got border='clip'"):
        glocal.nn.HybridEncoder(32, 2, depth=1, pattern="L", settings={"L": {"border": "clip"}})


def test_error_even_truncated_window():
    with pytest.raises(ValueError, match=r"window must be an odd int; got window=64\. Pass e\.g\. window=65"):
        glocal.nn.HybridEncoder(32, 2, depth=1, pattern="L", settings={"L": {"window": 64, "border": "truncate"}})


def test_error_window_not_positive():
    with pytest.raises(ValueError, match=r"window must be a positive int; got window=0"):
        glocal.nn.HybridEncoder(32, 2, depth=1, pattern="L", settings={"L": {"window": 0}})


def test_error_mlp_kind():
    with pytest.raises(ValueError, match=r"mlp"):
        glocal.nn.HybridEncoder(32, 2, depth=1, pattern="L", mlp="relu")


def test_error_decoder_on_a_grid():
    with pytest.raises(ValueError, match=r"ndim"):
        glocal.nn.HybridDecoder(32, 2, depth=1, pattern="L", ndim=2)


def test_error_modernbert_global_every():
    with pytest.raises(ValueError, match=r"global_every must be a positive int; got global_every=0"):
        glocal.nn.HybridEncoder.modernbert(dim=32, num_heads=2, depth=3, global_every=0)


def test_error_input_shape():
    enc = glocal.nn.HybridEncoder(32, 2, depth=1, pattern="L")
    with pytest.raises(ValueError, match=r"this module takes x of shape \[B, T, dim\]"):
        enc(torch.randn(1, 4, 4, 32))
