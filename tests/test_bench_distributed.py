"""The distributed benchmark suite: a quick run on 2 gloo processes gives every row, with the halo and linear
ops sending less than an all-gather of the keys and values and the zigzag ring balanced. The launcher kills
the ranks if they do not finish (no hang)."""

from __future__ import annotations

import pytest

from glocal.bench import distributed


def test_quick_run_on_two_ranks_gives_every_row():
    rows = distributed.run(quick=True, worlds=(2,), repeats=1)
    assert [r["op"] for r in rows] == ["neighborhood", "ring", "ring", "linear", "linear"]
    by_case = {r["case"]: r for r in rows}
    assert all(r["world"] == 2 and r["forward"]["wall_ms"] > 0 and r["single_ms"] > 0 for r in rows)
    halo = rows[0]["forward"]
    assert halo["messages"] == 1  # two ranks: one neighbour each
    assert halo["bytes_sent"] == 2 * 3 * rows[0]["row_bytes"]  # K // 2 = 3 rows of k and of v
    assert halo["bytes_sent"] < rows[0]["allgather_bytes"]
    zigzag = next(r for c, r in by_case.items() if "zigzag" in c)
    assert zigzag["forward"]["flops_balance"] == pytest.approx(1.0, abs=0.1)
    linear = [r for r in rows if r["op"] == "linear"]
    assert linear[0]["forward"]["bytes_sent"] == linear[1]["forward"]["bytes_sent"]  # independent of length
    table = distributed.format_table(rows)
    assert "all-gather MiB" in table and "rows of keys and values" in table
