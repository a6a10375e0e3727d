"""glocal.bench.decoding_hf: the StreamingCache stream bench on a short stream (window 16, sinks 2, 120 tokens).

The bench's own checks must pass (the dense slot reference of every attention layer at steps before and after the
window fills, and the default cache before any eviction), the cache's bytes must not grow once the window has
filled, and the table must show every checkpoint.
"""

from __future__ import annotations

import pytest

from glocal.bench import decoding_hf
from glocal.bench.decoding_hf import format_streaming, run_streaming

pytest.importorskip("transformers")

TOKENS, WINDOW, SINKS = 120, 16, 2


@pytest.fixture(scope="module")
def result():
    return run_streaming(tokens=TOKENS, window=WINDOW, sinks=SINKS, checks=(8, 40, 119))


def test_reference_and_plain_cache_agree(result):
    assert result["checked_steps"] == (8, 40, 119)
    assert result["reference_error"] < 1e-4
    assert result["plain_cache_error"] < 1e-4
    assert result["plain_steps"] > 0


def test_memory_flat_after_window_and_timings_positive(result):
    points = sorted(result["per_token_ms"])
    assert points[0] == WINDOW + SINKS and points[-1] == TOKENS and len(points) >= 3
    after = [result["cache_bytes"][c] for c in points if c >= WINDOW + SINKS]
    assert len(set(after)) == 1 and after[0] > 0
    assert all(ms > 0 for ms in result["per_token_ms"].values())
    assert set(result["peak_rss_mib"]) == set(points)


def test_format_lists_every_checkpoint(result):
    text = format_streaming(result)
    for c in result["per_token_ms"]:
        assert any(line.split() and line.split()[0] == str(c) for line in text.splitlines())
    assert "reference error" in text and "DynamicCache" in text


def test_progress_is_called():
    calls = []
    run_streaming(tokens=70, window=8, sinks=1, checks=(3, 60), progress=lambda done, total: calls.append(done))
    assert calls == [64, 70]


def test_reference_detects_absolute_positions(monkeypatch):
    """The check means something: a cache that keeps absolute positions (no re-indexing) fails it past the window,
    while it still passes before anything is evicted."""
    from glocal.integrations import transformers as hf

    streaming = hf.StreamingCache
    monkeypatch.setattr(decoding_hf.hf_integration, "StreamingCache",
                        lambda model, window, sinks: streaming(model, window, sinks, positions="absolute"))
    before = run_streaming(tokens=40, window=WINDOW, sinks=SINKS, checks=(8,))
    after = run_streaming(tokens=40, window=WINDOW, sinks=SINKS, checks=(39,))
    assert before["reference_error"] < 1e-4
    assert after["reference_error"] > 1e-2
