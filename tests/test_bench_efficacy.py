"""The efficacy suite: its data generators are right, and a quick run fills every task x model x seed."""

from __future__ import annotations

import json
import math

import torch

from glocal.bench import efficacy


def test_mqar_targets_are_the_paired_values():
    g = torch.Generator().manual_seed(0)
    pairs, queries, keys = 6, 4, 16
    tokens, targets = efficacy.mqar_batch(32, pairs, queries, keys, 10, generator=g)
    assert tokens.shape == targets.shape == (32, 2 * pairs + queries)
    assert (targets[:, :2 * pairs] == efficacy.IGNORE).all()
    for seq, tgt in zip(tokens.tolist(), targets.tolist()):
        ks, vs = seq[0:2 * pairs:2], seq[1:2 * pairs:2]
        assert len(set(ks)) == pairs and all(0 <= k < keys for k in ks)
        assert all(keys <= v < keys + 10 for v in vs)
        qs = seq[2 * pairs:]
        assert len(set(qs)) == queries
        assert tgt[2 * pairs:] == [vs[ks.index(q)] for q in qs]


def test_regression_targets_are_w_dot_x():
    g = torch.Generator().manual_seed(1)
    inputs, y, w = efficacy.regression_batch(8, 5, 7, generator=g)
    assert inputs.shape == (8, 14, 6) and y.shape == (8, 7)
    x = inputs[:, 0::2, :5]
    torch.testing.assert_close(y, (x * w[:, None]).sum(-1))
    assert (inputs[:, 0::2, 5] == 0).all() and (inputs[:, 1::2, :5] == 0).all()
    torch.testing.assert_close(inputs[:, 1::2, 5], y)


def test_grid_labels_combine_the_3x3_majority_and_the_grid_majority():
    g = torch.Generator().manual_seed(2)
    cells, labels = efficacy.grid_batch(4, 7, generator=g)
    assert cells.shape == labels.shape == (4, 7, 7)
    for b in range(4):
        glob = int(cells[b].sum()) * 2 > 49
        padded = torch.nn.functional.pad(cells[b], (1, 1, 1, 1))
        for i in range(7):
            for j in range(7):
                local = int(padded[i:i + 3, j:j + 3].sum()) >= 5
                assert labels[b, i, j] == 2 * glob + local


def test_quick_run_is_complete_json_and_formats_and_plots(tmp_path):
    seeds = (0, 1, 2)
    seen = []
    result = efficacy.run(quick=True, seeds=seeds, progress=seen.append)
    result = json.loads(json.dumps(result))  # JSON-serialisable, and the round trip keeps it
    assert len(seen) == len(result["runs"]) == len(efficacy.TASKS) * len(efficacy.MODELS) * len(seeds)
    got = {(r["task"], r["model"], r["seed"]) for r in result["runs"]}
    assert got == {(t, m, s) for t in efficacy.TASKS for m in efficacy.MODELS for s in seeds}
    assert len(result["rows"]) == len(efficacy.TASKS) * len(efficacy.MODELS)
    for row in result["rows"]:
        assert all(row[k] is not None for k in row)
        assert row["seeds"] == list(seeds) and len(row["values"]) == len(seeds)
        assert all(math.isfinite(v) for v in row["values"])
        assert row["min"] <= row["mean"] <= row["max"] and row["std"] >= 0
        if row["metric"] == "accuracy":
            assert 0 <= row["min"] <= row["max"] <= 1
    assert set(result["regression_curves"]) == set(efficacy.MODELS)
    assert all(len(c) == result["config"]["regression"]["num_examples"] for c in result["regression_curves"].values())
    table = efficacy.format_table(result)
    assert all(name in table for name in efficacy.MODELS) and "mqar" in table and "grid" in table
    path = tmp_path / "efficacy.png"
    efficacy.plot(result, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_the_attention_differs_between_models():
    cfg, mcfg = efficacy.CONFIGS["quick"]["mqar"], efficacy.CONFIGS["quick"]["model"]
    shapes = {}
    for kind, pattern in efficacy.MODELS.items():
        model = efficacy._task_parts("mqar", cfg, mcfg, pattern)[0]
        assert model.body.kinds == (pattern * mcfg["depth"])[:mcfg["depth"]]
        shapes[kind] = [tuple(p.shape) for p in model.parameters()]
    assert len({tuple(s) for s in shapes.values()}) == 1
