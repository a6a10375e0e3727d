"""The decoding benchmark family: a quick run gives every row, bounded caches hold flat memory, the target
lines read the rows, and the plot is written."""

from __future__ import annotations

import pytest

from glocal.bench import decoding


@pytest.fixture(scope="module")
def rows():
    return decoding.run(repeats=1, quick=True)


def test_quick_run_gives_every_row(rows):
    names = {r["row"] for r in rows}
    assert {"window", "window absolute", "dense", "linear", "rat", "moba", "recompute", "model step",
            "model recompute"} <= names
    assert all(r["ms"] > 0 for r in rows)


def test_bounded_caches_hold_flat_memory_and_growing_ones_grow(rows):
    def held(name):
        return [r["bytes"] for r in sorted((r for r in rows if r["row"] == name), key=lambda r: r["tokens"])]

    assert len(set(held("window"))) == 1 and len(set(held("linear"))) == 1 and len(set(held("model step"))) == 1
    assert held("dense") == sorted(held("dense")) and held("dense")[-1] > 4 * held("dense")[0]
    assert held("rat")[-1] < held("dense")[-1] / 8  # one state per 16 tokens (buffers grown by half)


def test_table_and_targets(rows):
    table = decoding.format_table(rows)
    for line in ("window at 600 vs 100", "rat vs dense memory at 600", "decoder: step", "ms/token"):
        assert line in table
    if any(r["row"] == "hf streaming" for r in rows):
        assert "hf streaming: cache" in table and "flat" in table


def test_plot(rows, tmp_path):
    path = tmp_path / "decoding.png"
    decoding.plot(rows, str(path), "decoding")
    assert path.stat().st_size > 10_000
