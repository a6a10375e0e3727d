"""The hybrid benchmark family: its dense twins compute the same model with every layer global, and a quick
run gives every row with the merged layer equal to its union reference."""

from __future__ import annotations

import torch

import glocal
from glocal.bench import hybrid


def test_dense_twin_keeps_the_weights_and_attends_every_token():
    torch.manual_seed(0)
    model = glocal.nn.HybridEncoder(32, 2, depth=3, pattern="GLM", settings={"L": {"window": 3},
                                                                              "M": {"block_size": 4}}).eval()
    all_global = glocal.nn.HybridEncoder(32, 2, depth=3, pattern="G").eval()
    all_global.load_state_dict(model.state_dict())
    x = torch.randn(1, 20, 32)
    twin = hybrid.dense_twin(model)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), all_global(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model(x), twin(x), atol=1e-3)  # the original keeps its local layers
    assert [layer.attn.kind for layer in model.layers] == list("GLM")


def test_quick_run_gives_every_row():
    rows = hybrid.run(repeats=1, quick=True)
    assert [r["row"] for r in rows] == ["hybrid 2-D", "hybrid 2-D layer", "moh", "modernbert", "modernbert",
                                        "decoder"]
    assert rows[0]["error"] < 1e-5
    assert all(r["glocal_ms"] > 0 and r["dense_ms"] > 0 for r in rows)
    table = hybrid.format_table(rows)
    assert "modernbert" in table and "x dense" in table
