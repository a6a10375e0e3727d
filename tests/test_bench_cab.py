"""The CAB suite: its support matrix is what the ops accept, a quick run gives complete JSON, the
efficiency-length bisection finds a known crossing, and the plot is written."""

from __future__ import annotations

import json

import pytest
import torch

import glocal
from glocal import checks
from glocal.bench import cab


@pytest.fixture(scope="module")
def matrix():
    return cab.support_matrix()


def test_every_mechanism_has_every_pattern_once(matrix):
    names = [m.name for m in cab.MECHANISMS] + [n for n, _ in cab.ABSENT]
    assert [(c["mechanism"], c["pattern"]) for c in matrix] == [(n, p) for n in names for p in checks.ATTENTION_PATTERNS]
    assert {c["status"] for c in matrix} <= {"supported", "refused", "absent"}
    assert all(c["reason"] for c in matrix if c["status"] != "supported")


def _tiny(pattern, t=12):
    _, is_cross = cab._flags(pattern)
    q = torch.randn(1, t, 2, 8)
    k, v = torch.randn(2, 1, 2 * t if is_cross else t, 2, 8).unbind(0)
    return q, k, v


def test_support_matrix_matches_what_the_ops_accept(matrix):
    """Each entry re-checked on other tiny tensors: supported runs and gives [B, T_q, H, D_v], refused raises
    the recorded error (the op's own unless the adapter says the op has no argument for the pattern)."""
    by_name = {m.name: m for m in cab.MECHANISMS}
    for cell in matrix:
        if cell["status"] == "absent":
            assert cell["mechanism"] not in by_name or not by_name[cell["mechanism"]].present
            continue
        q, k, v = _tiny(cell["pattern"])
        adapter = by_name[cell["mechanism"]].adapter
        if cell["status"] == "supported":
            out = adapter(q, k, v, cell["pattern"])
            assert out.shape == q.shape and torch.isfinite(out).all()
        else:
            with pytest.raises(ValueError) as err:
                adapter(q, k, v, cell["pattern"])
            assert isinstance(err.value, cab.NotExpressible) == (cell["source"] == "adapter")
            assert str(err.value).split(";")[0] == cell["reason"].split(";")[0]


def test_refusals_come_from_the_ops_themselves():
    """Straight calls of the public ops, no adapter: the patterns the matrix refuses raise there too."""
    q, k, v = _tiny("causal self")
    qc, kc, vc = _tiny("non-causal cross")
    with pytest.raises(ValueError, match="does not support the causal self"):
        glocal.inline_attention(q, k, v, is_causal=True)
    with pytest.raises(ValueError, match="does not support the causal self"):
        glocal.compressed_attention(q, k, v, reduction=2, is_causal=True)
    with pytest.raises(ValueError, match="does not support the non-causal cross"):
        glocal.channel_attention(qc, kc, vc)
    with pytest.raises(ValueError, match="same spatial shape"):
        glocal.na1d(qc, kc, vc, kernel_size=3)
    with pytest.raises(ValueError, match="same length"):
        glocal.rat_attention(qc, kc, vc, torch.full((1, 24, 2, 1), 0.9), torch.full((1, 24, 2, 1), 0.9), 4)
    # and what the matrix marks supported across patterns runs straight too
    assert glocal.moba_attention(qc, kc, vc, block_size=4, top_k=2, is_causal=True).shape == qc.shape
    assert glocal.linear_attention(qc, kc, vc, is_causal=True).shape == qc.shape


def test_matrix_agrees_with_the_documented_global_table(matrix):
    """docs/global.md's CAB table, for the global family."""
    yes = {(c["mechanism"], c["pattern"]) for c in matrix if c["status"] == "supported"}
    expected = {"linear": set(checks.ATTENTION_PATTERNS), "InLine": {"non-causal self", "non-causal cross"},
                "L2ViT local concentration": {"non-causal self"}, "global tokens": {"non-causal self", "causal self"},
                "compressed": {"non-causal self", "non-causal cross"}, "channel": {"non-causal self"}}
    for name, patterns in expected.items():
        assert {p for (n, p) in yes if n == name} == patterns


def test_bisection_finds_the_crossing_of_a_monotone_function():
    for crossing in (257, 300, 511, 512):
        calls = []

        def better(t, c=crossing):
            calls.append(t)
            return t >= c

        found, visited = cab.bisect_crossing(better, 256, 512, tolerance=0.05)
        assert crossing <= found <= crossing + 0.05 * found and better(found)
        assert visited == calls[:-1] and all(256 < t < 512 for t in visited)
    found, _ = cab.bisect_crossing(lambda t: t >= 1000, 512, 1024, tolerance=0.0)  # exact with no tolerance
    assert found == 1000
    with pytest.raises(ValueError, match="lo < hi"):
        cab.bisect_crossing(lambda t: True, 8, 8)


def test_efficiency_length_from_fake_timings():
    """Fake mechanism ms = 40 + 0.1 T against dense ms = 0.0005 T^2: faster from T = 400 exactly."""
    grid = [64, 128, 256, 512, 1024]

    def faster(t):
        return 40 + 0.1 * t < 0.0005 * t * t

    e = cab.efficiency_length(grid, [faster(t) for t in grid], faster)
    assert e["bracket"] == [256, 512] and 400 <= e["length"] <= 400 * 1.06 and e["status"].startswith("bisected")
    assert cab.efficiency_length(grid, [False] * 5, faster) == {"length": None, "status": "never within 1024",
                                                                "bracket": None, "probes": []}
    assert cab.efficiency_length(grid, [True] * 5, faster)["length"] == 64
    # a noisy flip back counts from the last flip
    e = cab.efficiency_length(grid, [True, False, True, False, True], lambda t: t >= 800)
    assert e["bracket"] == [512, 1024] and 800 <= e["length"] <= 840


@pytest.fixture(scope="module")
def quick_result():
    return cab.run(quick=True, lengths=[32, 64], repeats=1)


def test_quick_run_is_complete_json(quick_result):
    r = quick_result
    json.loads(json.dumps(r))
    supported = {(c["mechanism"], c["pattern"]) for c in r["support"] if c["status"] == "supported"}
    for row in r["rows"]:
        missing = [key for key, value in row.items() if value is None]
        assert not missing or row["note"], row  # a None always comes with its reason
        if row["mechanism"] != "dense" and not row["note"]:
            assert row["time_ms"] > 0 and row["peak_bytes"] > 0 and row["time_ratio"] > 0
    timed = {(row["mechanism"], row["pattern"]) for row in r["rows"] if row["mechanism"] != "dense"}
    assert timed == supported
    assert {(row["pattern"], row["length"]) for row in r["rows"] if row["mechanism"] == "dense"} == \
        {(p, t) for p in checks.ATTENTION_PATTERNS for t in (32, 64)}
    # one efficiency entry per mechanism x pattern (the mode is forward only here), every column filled
    names = [m.name for m in cab.MECHANISMS] + [n for n, _ in cab.ABSENT]
    assert sorted((e["mechanism"], e["pattern"]) for e in r["efficiency"]) == \
        sorted((n, p) for n in names for p in checks.ATTENTION_PATTERNS)
    for e in r["efficiency"]:
        assert e["efficiency_status"] and e["faster_status"]
        assert (e["efficiency_length"] is None) == (e["efficiency_status"].startswith(("never", "refused", "absent")))
    table = cab.format_table(r)
    assert "efficient from" in table and "MoBA" in table and "absent" in table


def test_plot_is_written(quick_result, tmp_path):
    path = tmp_path / "cab.png"
    cab.plot(quick_result, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
