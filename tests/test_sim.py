"""glocal.sim: exact tile counts against a brute-force loop over every (query, key) pair of every tile pair,
FLOPs and bytes, time bounds, the tile search, the perfect-stride search against exhaustive search, the
models of glocal's CPU and Triton tilings, calibration files, the report, the CLI, the bench floor, and one
test per error message of glocal/checks/sim.py. Seeded; GLOCAL_SWEEP scales the random sweeps."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import random
from pathlib import Path

import pytest
import torch
from conftest import raises

from glocal import sim
from glocal.backends.cpu import neighborhood as cpu_nb
from glocal.cli import main
from glocal.masks import attended_pairs, dense_mask
from glocal.spec import make_neighborhood_spec

SWEEP = int(os.environ.get("GLOCAL_SWEEP", "150"))
HW = sim.Hardware(200.0, 20.0, "test machine")


# ------------------------------------------------------------------------------------------------ brute force


def _axis_tiles(length, d, b, groups):
    if not groups:
        return [list(range(t, min(t + b, length))) for t in range(0, length, b)]
    out = []
    for g in range(d):
        members = list(range(g, length, d))
        out += [members[i:i + b] for i in range(0, len(members), b)]
    return out


def _flat(coord_lists, spatial):
    """Row-major flat indices of the product of per-axis coordinate lists."""
    out = []
    for coord in itertools.product(*coord_lists):
        idx = 0
        for c, length in zip(coord, spatial):
            idx = idx * length + c
        out.append(idx)
    return out


def brute_counts(problem: sim.Problem, tiling: sim.Tiling) -> dict:
    """Every count of TileCounts by a loop over every (query, key) pair of every considered tile pair."""
    spec = problem.spec
    mask = dense_mask(spec).tolist()
    qt, kt = tiling.sizes(problem.ndim)
    nominal_q, nominal_k = math.prod(qt), math.prod(kt)
    pairs = []  # (query tokens, key tokens)
    total = 0
    if tiling.layout == "flat":
        n = spec.num_tokens
        qtiles = [list(range(i, min(i + qt[0], n))) for i in range(0, n, qt[0])]
        ktiles = [list(range(i, min(i + kt[0], n))) for i in range(0, n, kt[0])]
        pairs = [(q, k) for q in qtiles for k in ktiles]
        total = len(pairs)
    else:
        per_axis_q = [_axis_tiles(spec.spatial[a], spec.dilation[a], qt[a], tiling.groups) for a in range(spec.ndim)]
        per_axis_k = [_axis_tiles(spec.spatial[a], spec.dilation[a], kt[a], tiling.groups) for a in range(spec.ndim)]
        for qbox in itertools.product(*per_axis_q):
            q = _flat(qbox, spec.spatial)
            if tiling.key_anchor == "grid":
                for kbox in itertools.product(*per_axis_k):
                    if tiling.groups and any(qa[0] % d != ka[0] % d for qa, ka, d in zip(qbox, kbox, spec.dilation)):
                        continue
                    pairs.append((q, _flat(kbox, spec.spatial)))
                    total += 1
                continue
            # Query-anchored: per axis the in-group bounding range of every key the tile's queries attend.
            keys = [y for y in range(spec.num_tokens) if any(mask[x][y] for x in q)]
            coords = [[] for _ in range(spec.ndim)]
            for y in keys:
                rem = y
                for a in range(spec.ndim - 1, -1, -1):
                    coords[a].append(rem % spec.spatial[a])
                    rem //= spec.spatial[a]
            pieces, considered = [], 1
            for a in range(spec.ndim):
                d, g = spec.dilation[a], qbox[a][0] % spec.dilation[a]
                considered *= -(-len(range(g, spec.spatial[a], d)) // kt[a])  # grid-equivalent key tiles
                ul, uh = min(c // d for c in coords[a]), max(c // d for c in coords[a]) + 1
                pieces.append([[t * d + g for t in range(s, min(s + kt[a], uh))] for s in range(ul, uh, kt[a])])
            total += considered
            for kbox in itertools.product(*pieces):
                pairs.append((q, _flat(kbox, spec.spatial)))
    out = dict(total=total, visited=0, full=0, attended_pairs=0, computed_pairs=0, padded_pairs=0,
               key_loads=0, query_loads=0)
    for q, k in pairs:
        attended = 0
        for x in q:
            for y in k:
                attended += mask[x][y]
        if attended:
            out["visited"] += 1
            out["full"] += attended == len(q) * len(k)
            out["computed_pairs"] += len(q) * len(k)
            out["padded_pairs"] += nominal_q * nominal_k
            out["key_loads"] += len(k)
            out["query_loads"] += len(q)
        out["attended_pairs"] += attended
    return out


def _random_problem(rng: random.Random, max_tokens: int = 120) -> sim.Problem:
    while True:
        ndim = rng.choice([1, 1, 2, 2, 3])
        grid = tuple(rng.randint(2, {1: 40, 2: 11, 3: 5}[ndim]) for _ in range(ndim))
        if math.prod(grid) > max_tokens:
            continue
        dil = tuple(rng.choice([1, 1, 2, 3]) if length >= 4 else 1 for length in grid)
        ks = tuple(rng.randint(1, max(1, length // d)) for length, d in zip(grid, dil))
        stride = tuple(rng.randint(1, k) for k in ks)
        causal = tuple(rng.random() < 0.3 for _ in grid)
        return sim.Problem(grid, 1, 16, ks, stride, dil, causal)


def _random_tiling(rng: random.Random, problem: sim.Problem) -> sim.Tiling:
    kind = rng.choice(["box", "groups", "query", "flat"])
    if kind == "flat":
        return sim.Tiling(rng.randint(1, 24), rng.randint(1, 24), layout="flat")
    q = tuple(rng.randint(1, max(1, length // 2 + 1)) for length in problem.grid)
    k = tuple(rng.randint(1, max(1, length // 2 + 1)) for length in problem.grid)
    return sim.Tiling(q, k, groups=kind != "box", key_anchor="query" if kind == "query" else "grid")


def test_count_tiles_matches_brute_force_on_random_configs():
    rng = random.Random(0)
    kinds = set()
    for _ in range(SWEEP):
        problem = _random_problem(rng)
        tiling = _random_tiling(rng, problem)
        kinds.add((problem.ndim, tiling.layout, tiling.groups, tiling.key_anchor))
        got = sim.count_tiles(problem, tiling)
        want = brute_counts(problem, tiling)
        have = {key: getattr(got, key) for key in want}
        assert have == want, (problem, tiling)
        assert got.skipped == got.total - got.visited and got.partial == got.visited - got.full
    assert len(kinds) >= 8  # the sweep reached every layout in several ranks


@pytest.mark.parametrize("problem,tiling", [
    (sim.Problem((12, 10), 1, 16, (5, 3), (2, 1), (2, 3), (False, True)), sim.Tiling((4, 3), (3, 4))),
    (sim.Problem((12, 10), 1, 16, (5, 3), (2, 1), (2, 3), (False, True)), sim.Tiling((4, 3), (3, 4), groups=True)),
    (sim.Problem((12, 10), 1, 16, (5, 3), (2, 1), (2, 3), (False, True)),
     sim.Tiling((4, 3), (3, 4), groups=True, key_anchor="query")),
    (sim.Problem((5, 4, 6), 1, 16, (3, 2, 5), (1, 2, 3), (1, 2, 1), (True, False, False)), sim.Tiling(7, 5, "flat")),
    (sim.Problem((40,), 1, 16, 9, 3, 4, True), sim.Tiling(6, 7)),
    (sim.Problem((40,), 1, 16, 9, 3, 4, True), sim.Tiling(6, 7, groups=True, key_anchor="query")),
])
def test_count_tiles_matches_brute_force_on_fixed_configs(problem, tiling):
    got = sim.count_tiles(problem, tiling)
    assert {key: getattr(got, key) for key in brute_counts(problem, tiling)} == brute_counts(problem, tiling)


@pytest.mark.parametrize("config", ["2d:256x256,k13,d2", "3d:16x64x64,k5x13x13,causal=1x0x0", "1d:32768,k2048,s16"])
def test_large_grids_count_exactly_without_a_dense_mask(config):
    problem = sim.parse_config(config)
    for tiling in (sim.Tiling(128, 128, layout="flat"), sim.cpu_tiling(problem), sim.Tiling(8, 16)):
        counts = sim.count_tiles(problem, tiling)
        assert counts.attended_pairs == attended_pairs(problem.spec)
        assert counts.visited == counts.full + counts.partial and counts.computed_pairs >= counts.attended_pairs


def test_flat_and_box_agree_in_1d_and_perfect_blocks_are_full():
    problem = sim.Problem((100,), 1, 16, 9, 2, 3, False)
    box, flat = sim.count_tiles(problem, sim.Tiling(7, 5)), sim.count_tiles(problem, sim.Tiling(7, 5, "flat"))
    assert box == flat
    blocked = sim.Problem((64, 64), 1, 16, 8, 8)
    counts = sim.count_tiles(blocked, sim.Tiling(8, 8))
    assert counts.partial == 0 and counts.visited == counts.full == 64 and counts.density == 1.0


# ------------------------------------------------------------------------------------------------ FLOPs, bytes, time


def test_flops_bytes_and_prediction_follow_their_formulas():
    problem = sim.Problem((64,), heads=2, head_dim=32, kernel_size=8, stride=8, value_dim=16, batch=3)
    tiling = sim.Tiling(8, 8)
    counts = sim.count_tiles(problem, tiling)
    assert counts.attended_pairs == counts.computed_pairs == 64 * 8 and counts.key_loads == 64
    fl = sim.flops(problem, counts)
    assert fl == (2 * (32 + 16) * 512 * 6, 2 * (32 + 16) * 512 * 6)
    assert sim.useful_flops(problem) == fl.useful
    moved = sim.bytes_moved(problem, tiling, counts)
    assert moved == 6 * (64 * 48 * 4 + 64 * (48 * 4 + 4))
    back = problem.replace(backward=True)
    assert sim.flops(back, counts).useful == 3.5 * fl.useful
    assert sim.bytes_moved(back, tiling, counts) > moved
    pred = sim.predict(problem, tiling, HW)
    assert pred.compute_s == fl.performed / 200e9 and pred.memory_s == moved / 20e9
    assert pred.time_s == max(pred.compute_s, pred.memory_s)
    assert pred.dense_flops == 2 * 48 * 64 * 64 * 6
    assert pred.speedup_bound == pytest.approx(pred.dense_time_s / pred.time_s)


def test_dense_bound_is_causal_for_1d_causal_only():
    assert sim.dense_pairs(sim.Problem((10,), 1, 16, 3, is_causal=True)) == 55
    assert sim.dense_pairs(sim.Problem((4, 5), 1, 16, 3, is_causal=(True, False))) == 400


# ------------------------------------------------------------------------------------------------ the bench floor


@pytest.mark.parametrize("spatial,kernel,stride,dilation,causal,heads,dim,batch", [
    ((64, 64), 7, 1, 1, False, 4, 64, 1), ((64, 64), 7, 1, 2, False, 4, 64, 2), ((16384,), 512, 1, 1, True, 4, 64, 1),
    ((8, 32, 32), (3, 7, 7), (1, 2, 3), 1, (True, False, False), 2, 32, 1), ((256, 256), 7, 2, 1, False, 8, 128, 1),
])
def test_bench_floor_is_the_simulators_useful_flops_and_unchanged(spatial, kernel, stride, dilation, causal, heads,
                                                                   dim, batch):
    spec = make_neighborhood_spec(spatial, kernel, stride, dilation, causal)
    before = attended_pairs(spec) * batch * heads * 2 * (dim + dim)  # the bench's formula before the simulator
    assert sim.useful_flops(sim.Problem.from_spec(spec, heads, dim, batch=batch)) == before


def test_bench_row_floor_uses_the_simulator_and_warns_above_one(monkeypatch, capsys):
    from glocal.bench import neighborhood as bench

    cfg = bench.parse_config("1d:64,k7,h1,dim16")
    row = bench.run_config(cfg, torch.float32, 1, False, flex=False)
    expected = sim.useful_flops(sim.Problem.from_spec(cfg["spec"], 1, 16))
    assert row["useful_gflop"] == expected / 1e9
    assert "floor" not in capsys.readouterr().err
    monkeypatch.setattr(bench, "matmul_gflops", lambda *a, **k: 1e-6)  # a floor no kernel can reach
    row = bench.run_config(cfg, torch.float32, 1, False, flex=False)
    assert row["floor_fraction"] > 1.0
    err = capsys.readouterr().err
    assert "warning" in err and "1d:64,k7,h1,dim16" in err and "floor" in err and "bug in the floor" in err


# ------------------------------------------------------------------------------------------------ searches


def test_smallest_perfect_stride_matches_exhaustive_search():
    rng = random.Random(1)
    for _ in range(max(10, SWEEP // 3)):
        problem = _random_problem(rng, max_tokens=80)
        tiling = _random_tiling(rng, problem)
        perfect = [s for s in itertools.product(*[range(1, k + 1) for k in problem.kernel_size])
                   if brute_counts(problem.replace(stride=s), tiling)["visited"]
                   == brute_counts(problem.replace(stride=s), tiling)["full"]]
        got = sim.smallest_perfect_stride(problem, tiling)
        if not perfect:
            assert got is None, (problem, tiling)
        elif tiling.layout == "box":
            assert got in perfect and all(all(g <= s for g, s in zip(got, p)) for p in perfect), (problem, tiling)
        else:
            assert got == min(perfect, key=lambda t: (sum(t), t)), (problem, tiling)


def test_search_tiles_ranks_best_first_and_finds_the_blocked_tiling():
    problem = sim.Problem((64, 64), 1, 16, 8, 8)
    ranked = sim.search_tiles(problem, hardware=HW)
    times = [p.time_s for _, p in ranked]
    assert times == sorted(times)
    assert {t.layout for t, _ in ranked} == {"box", "flat"}
    assert ranked[0][1].counts.partial == 0 and ranked[0][1].flops.performed == ranked[0][1].flops.useful
    few = sim.search_tiles(problem, [sim.Tiling(16, 16), sim.Tiling(8, 8)], HW)
    assert [t for t, _ in few] == [sim.Tiling(8, 8), sim.Tiling(16, 16)]


# ------------------------------------------------------------------------------------------------ kernel models


@pytest.mark.parametrize("config", ["2d:20x23,k5x7,s1x2,d2x1", "3d:5x6x30,k3x3x11,d1x2x2,causal=0x1x0",
                                    "1d:100,k9,s3,d3,causal=1", "1d:300,k17"])
def test_cpu_tiling_is_the_cpu_kernels_blocks(config):
    problem = sim.parse_config(config)
    tiling = sim.cpu_tiling(problem)
    plan = cpu_nb._plan(problem.spec)
    assert tiling.query_tile[-1] == plan.qb
    # The blocked kernel's work from its own tables: per block its span W on the last axis, times the
    # leading-axis key rows of every leading coordinate.
    kstart, kcount = plan.ptab[2, 0].long(), plan.ptab[2, 1].long()
    first = plan.blocks[0].long()
    last = first + plan.blocks[1].long() - 1
    span = kstart[last] + kcount[last] - kstart[first]
    lead = math.prod(int(plan.ptab[a, 1, :plan.lengths[a]].long().sum()) for a in range(2))
    counts = sim.count_tiles(problem, tiling)
    assert counts.computed_pairs == lead * int((plan.blocks[1].long() * span).sum())
    assert counts.padded_pairs == lead * int((plan.qb * ((span + 15) // 16 * 16)).sum())
    assert counts.query_tiles == plan.blocks.shape[1] * math.prod(plan.lengths[:2])
    float64 = sim.cpu_tiling(problem.replace(dtype="float64"))
    assert sim.count_tiles(problem, float64).computed_pairs == attended_pairs(problem.spec)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_tiling_boxes_are_the_backends():
    from glocal import config
    from glocal.backends.triton import ops

    for ndim, dim, dtype in itertools.product((1, 2, 3), (32, 64, 256), ("float32", "bfloat16", "float16")):
        problem = sim.Problem((16,) * ndim, 1, dim, 3, dtype=dtype)
        cfg = ops.config(ndim, ops._block(dim), sim.Problem((16,), 1, 16, 3, dtype=dtype).element_bytes)
        tiling = sim.triton_tiling(problem)
        assert tiling.query_tile == cfg["fwd_q"][3 - ndim:] and tiling.key_tile == cfg["fwd_k"][3 - ndim:]
        assert tiling.groups and tiling.key_anchor == "query"
    with config.triton_tiles(fwd_q=(1, 4, 4)):
        assert sim.triton_tiling(sim.Problem((16, 16), 1, 64, 3, dtype="bfloat16")).query_tile == (4, 4)


def test_triton_tiling_counts_the_kernels_key_boxes():
    # The forward kernel visits cdiv(hi(last) - lo(first), KB) key boxes per axis for every query box.
    problem = sim.Problem((20, 37), 1, 64, (5, 9), (2, 1), (2, 1), (False, True), dtype="bfloat16")
    qbox, kbox = sim.triton_tiling(problem).query_tile, sim.triton_tiling(problem).key_tile
    from glocal.spec import axis_window

    total = 1
    for a in range(2):
        length, k, s, d, c = problem.spec.axis(a)
        visited = 0
        for g in range(d):
            lg = len(range(g, length, d))
            for q0 in range(0, lg, qbox[a]):
                q1 = min(q0 + qbox[a], lg) - 1
                _, lo, _ = axis_window(q0 * d + g, length, k, s, d, c)
                _, _, hi = axis_window(q1 * d + g, length, k, s, d, c)
                visited += -(-(hi - lo) // kbox[a])
        total *= visited
    assert sim.count_tiles(problem, sim.triton_tiling(problem)).visited == total


# ------------------------------------------------------------------------------------------------ hardware, report


def test_calibrate_measures_and_files_round_trip(tmp_path, monkeypatch):
    hw = sim.calibrate(repeats=2, size=64, copy_bytes=1 << 18)
    assert hw.peak_gflops > 0 and hw.bandwidth_gbs > 0 and hw.name
    path = sim.save_hardware(hw, tmp_path / "sub" / "hw.json")
    assert sim.load_hardware(path) == hw
    monkeypatch.setenv("GLOCAL_HARDWARE", str(path))
    assert sim.default_path() == path and sim.load_hardware() == hw


def test_spearman_with_ties_is_pearson_of_average_ranks():
    assert sim.ranks([2.0, 1.0, 2.0, 5.0]) == [2.5, 1.0, 2.5, 4.0]
    assert sim.spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert sim.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # With ties: ranks x (1, 2.5, 2.5, 4), y (1, 2, 3, 4) -> Pearson by hand.
    rx, ry = [1, 2.5, 2.5, 4], [1, 2, 3, 4]
    mx = my = 2.5
    want = sum((a - mx) * (b - my) for a, b in zip(rx, ry)) / math.sqrt(
        sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    assert sim.spearman([1, 2, 2, 3], [5, 6, 7, 8]) == pytest.approx(want)
    assert math.isnan(sim.spearman([1, 1, 1], [1, 2, 3])) and math.isnan(sim.spearman([1], [2]))


def _rows():
    return [
        {"config": "2d:64x64,k7", "spatial": [64, 64], "kernel_size": [7, 7], "stride": [1, 1], "dilation": [1, 1],
         "is_causal": [False, False], "batch": 1, "heads": 4, "head_dim": 64, "dtype": "float32",
         "speedup_vs_dense": 4.0},
        {"config": "2d:64x64,k7,s2", "speedup_vs_dense": 4.5},
        {"config": "1d:4096,k512,causal=1", "speedup_vs_dense": 2.0},
        {"config": "2d:64x64,k31", "speedup_vs_dense": 1.5},
        {"config": "2d:256x256,k7", "speedup_vs_dense": None},
    ]


def test_report_puts_predictions_next_to_measurements(capsys):
    result = sim.report(_rows(), HW)
    out = capsys.readouterr().out
    assert len(result.rows) == 5 and result.rows[-1][1] is None
    for config, measured, predicted in result.rows:
        problem = sim.parse_config(config)
        assert predicted == sim.predict(problem, sim.cpu_tiling(problem), HW).speedup_bound
        assert config in out
    measured = [m for _, m, _ in result.rows if m is not None]
    predicted = [p for _, m, p in result.rows if m is not None]
    assert result.spearman == sim.spearman(measured, predicted)
    assert "Spearman rank correlation" in out and f"{result.spearman:.3f}" in out


def _gpu_row(name, spatial, kernel, causal, backward=False, glocal_ms=1.0, sdpa_ms=8.0):
    return {"name": name, "spatial": spatial, "kernel_size": kernel, "is_causal": causal, "heads": 8,
            "head_dim": 128, "dtype": "bfloat16", "backward": backward, "backend": "triton",
            "glocal_ms": glocal_ms, "sdpa_ms": sdpa_ms}


def test_report_predicts_gpu_suite_rows_with_the_triton_tiling(capsys):
    rows = [_gpu_row("2-D", [128, 128], [13, 13], [False, False], sdpa_ms=9.0),
            _gpu_row("1-D causal", [4096], [512], [True], glocal_ms=2.0),
            _gpu_row("2-D fwd+bwd", [64, 64], [7, 7], [False, False], backward=True, sdpa_ms=3.0),
            {"name": "3-D", "error": "timed out"}]
    result = sim.report(rows, HW, show=False)
    assert [r[0] for r in result.rows] == ["2-D", "1-D causal", "2-D fwd+bwd"]  # the failed config left out
    problems = [sim.Problem((128, 128), 8, 128, 13, dtype="bfloat16"),
                sim.Problem((4096,), 8, 128, 512, is_causal=True, dtype="bfloat16"),
                sim.Problem((64, 64), 8, 128, 7, dtype="bfloat16", backward=True)]
    for (_, measured, predicted), problem, row in zip(result.rows, problems, rows):
        assert measured == row["sdpa_ms"] / row["glocal_ms"]
        assert predicted == sim.predict(problem, sim.triton_tiling(problem), HW).speedup_bound
        assert predicted != sim.predict(problem, sim.cpu_tiling(problem), HW).speedup_bound


def test_report_of_the_h100_run_in_docs(capsys):
    """docs/gpu_h100.json (the GPU table of docs/gpu.md): read with its card's figures, every row predicted."""
    path = Path(__file__).resolve().parents[1] / "docs" / "gpu_h100.json"
    assert main(["sim", "--report", str(path)]) == 0
    out = capsys.readouterr().out
    data = json.loads(path.read_text())
    result = sim.report(data["rows"], sim.Hardware(1e3 * data["matmul_tflops"], data["bandwidth_gbs"]), show=False)
    assert len(result.rows) == 5 and f"Spearman rank correlation (measured vs predicted, 5 rows): " \
        f"{result.spearman:.3f}" in out and "NVIDIA H100" in out
    assert all(m is not None and m > 1 for _, m, _ in result.rows)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_table_and_json(tmp_path, capsys):
    hw_path = tmp_path / "hw.json"
    sim.save_hardware(HW, hw_path)
    out_path = tmp_path / "out.json"
    assert main(["sim", "--config", "2d:32x32,k8,h2,dim32", "--tile", "4x8", "--key-tile", "8x8", "--search",
                 "--perfect-stride", "--backward", "--hardware", str(hw_path), "--json", str(out_path)]) == 0
    text = capsys.readouterr().out
    data = json.loads(out_path.read_text())
    problem = sim.parse_config("2d:32x32,k8,h2,dim32", backward=True)
    counts = sim.count_tiles(problem, sim.Tiling((4, 8), (8, 8)))
    rec = data["tilings"][0]
    assert (rec["visited"], rec["skipped"], rec["partial"], rec["full"]) == (
        counts.visited, counts.skipped, counts.partial, counts.full)
    assert rec["useful_flops"] == sim.flops(problem, counts).useful
    assert rec["speedup_bound"] == sim.predict(problem, sim.Tiling((4, 8), (8, 8)), HW).speedup_bound
    stride = sim.smallest_perfect_stride(problem, sim.Tiling((4, 8), (8, 8)))
    assert stride is not None and data["perfect_stride"]["box"] == list(stride)
    assert len(data["search"]) == 10 and "search (best first" in text and "x dense" in text


def test_cli_defaults_to_the_kernels_tilings_and_runs_without_figures(tmp_path, capsys):
    assert main(["sim", "--config", "1d:512,k31,h1,dim64", "--hardware", str(tmp_path / "none.json")]) == 0
    captured = capsys.readouterr()
    assert "glocal cpu" in captured.out and "glocal triton" in captured.out and "flex 128" in captured.out
    assert "run `glocal sim --calibrate`" in captured.err


def test_cli_calibrate_and_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("glocal.sim.command.calibrate", lambda: HW)
    hw_path = tmp_path / "hw.json"
    assert main(["sim", "--calibrate", "--hardware", str(hw_path)]) == 0
    assert sim.load_hardware(hw_path) == HW and "GFLOP/s" in capsys.readouterr().out
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"results": _rows()}))
    assert main(["sim", "--report", str(bench), "--hardware", str(hw_path)]) == 0
    assert "Spearman" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ error messages


def test_error_problem_sizes():
    with raises(ValueError, "heads must be a positive int", "heads=0", "heads=1"):
        sim.Problem((8,), 0, 16, 3)


def test_error_problem_dtype():
    with raises(ValueError, "dtype must be one of", "dtype='int8'", "dtype='float32'"):
        sim.Problem((8,), 1, 16, 3, dtype="int8")


def test_error_problem_window_rules_come_from_the_spec():
    with raises(ValueError, "stride must not exceed kernel_size"):
        sim.Problem((8,), 1, 16, 3, stride=4)


def test_error_flat_tile_size():
    with raises(ValueError, "a flat tiling takes one token count", "query_tile=(8, 8)", "query_tile=128"):
        sim.count_tiles(sim.Problem((8, 8), 1, 16, 3), sim.Tiling((8, 8), 8, layout="flat"))


def test_error_box_tile_size():
    with raises(ValueError, "a box tile has one positive int per axis", "key_tile=(4, 4, 4)", "2-D", "(8, 8)"):
        sim.count_tiles(sim.Problem((8, 8), 1, 16, 3), sim.Tiling(4, (4, 4, 4)))


def test_error_layout():
    with raises(ValueError, "layout must be one of", "layout='grid'", "'box' or 'flat'"):
        sim.Tiling(8, 8, layout="grid")


def test_error_key_anchor():
    with raises(ValueError, "key_anchor must be one of", "key_anchor='left'", "'grid'"):
        sim.Tiling(8, 8, key_anchor="left")


def test_error_flat_with_groups():
    with raises(ValueError, "a flat tiling cuts the row-major token order", "groups=True", "layout='box'"):
        sim.Tiling(8, 8, layout="flat", groups=True)


def test_error_query_anchor_without_groups():
    with raises(ValueError, "query-anchored key tiles", "groups=False", "groups=True"):
        sim.Tiling(8, 8, key_anchor="query")


def test_error_hardware_figures():
    with raises(ValueError, "peak_gflops must be a positive number", "peak_gflops=0", "calibrate"):
        sim.Hardware(0, 10.0)


def test_error_search_without_hardware():
    with raises(ValueError, "peak_gflops must be a positive number", "peak_gflops=None"):
        sim.search_tiles(sim.Problem((8,), 1, 16, 3))


def test_error_hardware_file_missing(tmp_path):
    with raises(ValueError, "no hardware figures at", "never assumes", "glocal sim --calibrate"):
        sim.load_hardware(tmp_path / "absent.json")


def test_error_hardware_file_contents(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"peak_gflops": 1.0, "name": "x"}))
    with raises(ValueError, "a hardware file holds a JSON object", "['name', 'peak_gflops']", "--calibrate --hardware"):
        sim.load_hardware(path)


@pytest.mark.parametrize("text,parts", [
    ("64x64,k7", ["must start with 1d:, 2d: or 3d:", "'2d:64x64,k7'"]),
    ("2d:64xa", ["grid must be integers joined by 'x'", "grid='64xa'", "7x7"]),
    ("2d:64x64,k3x3x3", ["kernel_size has 3 values for a 2-D grid", "Give 1 or 2"]),
    ("2d:64x64,q7", ["unknown item 'q7'", "Use k, s, d, h, dim, b or causal="]),
])
def test_error_config_text(text, parts):
    with raises(ValueError, f"config {text!r}", *parts, "syntax: Nd:GRID"):
        sim.parse_config(text)


def test_error_cli_without_a_problem(capsys):
    assert main(["sim"]) == 2
    assert "no problem given" in capsys.readouterr().err


def test_error_tile_text(capsys):
    assert main(["sim", "--config", "2d:16x16,k3", "--tile", "4x4x4", "--hardware", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "a tile is one positive int or 2 joined by x" in err and "tile='4x4x4'" in err and "--tile 8x8" in err


def test_error_report_rows():
    with raises(ValueError, "report takes the rows of `glocal bench --json`", "dict", "['results']"):
        sim.report({"results": []}, HW)


def test_error_report_row_keys():
    with raises(ValueError, "report row 0 lacks ['speedup_vs_dense']", "['config']"):
        sim.report([{"config": "1d:64,k3"}], HW)


def test_error_report_gpu_row_keys():
    row = {k: v for k, v in _gpu_row("2-D", [8, 8], [3, 3], [False, False]).items() if k != "kernel_size"}
    with raises(ValueError, "report row 0 lacks ['kernel_size']", "the GPU suite"):
        sim.report([row], HW)


def test_error_report_gpu_figures(tmp_path, capsys):
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps({"card": "old run", "matmul_tflops": 700.0,
                                "rows": [_gpu_row("2-D", [8, 8], [3, 3], [False, False])]}))
    assert main(["sim", "--report", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the GPU suite's JSON lacks the card's measured ['bandwidth_gbs']" in err and "--hardware" in err


def test_error_triton_dtype():
    with raises(ValueError, "Triton kernel runs float16, bfloat16 and float32", "dtype='float64'", "cpu_tiling"):
        sim.triton_tiling(sim.Problem((8,), 1, 16, 3, dtype="float64"))


def test_error_triton_head_dim():
    with raises(ValueError, "head dims that are multiples of 8 up to 256", "head_dim=20", "head_dim=16"):
        sim.triton_tiling(sim.Problem((8,), 1, 20, 3))
