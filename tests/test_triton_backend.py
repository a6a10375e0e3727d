"""Triton backend vs the float64 reference, on CPU tensors through Triton's interpreter.

The kernels run with ``TRITON_INTERPRET=1`` (set by the ``interpret`` fixture
before the kernel module is first imported) and NaN poisoning on
(``glocal.config.nan_poisoning``: every buffer a kernel writes starts as NaN,
so an element no program writes fails).
Tiles are small so that small grids still have several query and key tiles,
full (unmasked) tiles and padded edges. Each case compares the output, the lse
and the gradients of q, k, v (and of the extra keys/values) for a loss that
uses both the output and the lse.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import time

import pytest
import torch
from conftest import backend_run, interpreted, sweep_size

from glocal.backends import choose_backend
from glocal.backends.reference import neighborhood as reference
from glocal.spec import AttentionSpec, make_neighborhood_spec

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (pip install glocal[triton])")

SMALL_1D = dict(fwd_q=(1, 1, 16), fwd_k=(1, 1, 16), dq_q=(1, 1, 16), dq_k=(1, 1, 16), bwd_k=(1, 1, 16),
                bwd_q=(1, 1, 16))
SMALL_2D = dict(fwd_q=(1, 4, 4), fwd_k=(1, 2, 8), dq_q=(1, 2, 8), dq_k=(1, 4, 4), bwd_k=(1, 4, 4), bwd_q=(1, 2, 8))
SMALL_3D = dict(fwd_q=(2, 2, 4), fwd_k=(1, 4, 4), dq_q=(2, 2, 4), dq_k=(1, 4, 4), bwd_k=(2, 2, 4), bwd_q=(1, 4, 4))
SMALL = {1: SMALL_1D, 2: SMALL_2D, 3: SMALL_3D}


@pytest.fixture(scope="module")
def interpret():
    """Run the kernels through the interpreter, with NaN-poisoned outputs; yields the ops module."""
    yield from interpreted("kernels", "_fwd_kernel", "ops")


def _compare(ops, spec, batch=1, hq=2, hkv=2, d_qk=16, d_v=16, extra=0, dtype=torch.float32, tiles=None,
             transposed=False, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    q = rand(batch, *spec.spatial, hq, d_qk)
    if transposed:
        # A non-contiguous q: heads-last view of a heads-first tensor.
        q = rand(batch, hq, *spec.spatial, d_qk).movedim(1, -2)
    k = rand(batch, *spec.spatial, hkv, d_qk)
    v = rand(batch, *spec.spatial, hkv, d_v)
    ak = rand(batch, extra, hkv, d_qk) if extra else None
    av = rand(batch, extra, hkv, d_v) if extra else None
    inputs = [x.requires_grad_() for x in (q, k, v, ak, av) if x is not None]
    scale = d_qk ** -0.5
    with ops.tiles(**(tiles or SMALL[spec.ndim])):
        out, lse = ops.neighborhood(spec, q, k, v, scale, ak, av)
        gout = torch.randn(out.shape, generator=gen)
        glse = torch.randn(lse.shape, generator=gen)
        grads = torch.autograd.grad((out.float() * gout).sum() + (lse * glse).sum(), inputs)
    ref_in = [x.detach().double().requires_grad_() for x in inputs]
    r_extra = (ref_in[3], ref_in[4]) if extra else (None, None)
    rout, rlse = backend_run(reference, spec, *ref_in[:3], scale, *r_extra)
    rgrads = torch.autograd.grad((rout * gout.double()).sum() + (rlse * glse.double()).sum(), ref_in)
    tol = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}[dtype]
    assert out.dtype == dtype and out.shape == rout.shape
    assert lse.dtype == torch.float32 and lse.shape == rlse.shape
    names = ["out", "lse", "dq", "dk", "dv", "d_additional_keys", "d_additional_values"]
    for name, got, want in zip(names, [out, lse, *grads], [rout, rlse, *rgrads]):
        assert torch.isfinite(got).all(), f"{name} has NaN/inf (unwritten element?)"
        err = ((got.double() - want).abs().max() / want.abs().max()).item()
        assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


CASES = [
    # (spatial, kernel_size, stride, dilation, is_causal, extra keyword arguments)
    ((64,), 33, 1, 1, False, {}),  # interior key tiles skip the mask (and, head dim 16, the load masks)
    ((50,), 37, 1, 1, True, dict(d_qk=24, d_v=8)),  # causal 1-D with full tiles, padded head dims
    ((40,), 7, 2, 2, True, dict(hq=4, hkv=2, extra=3)),  # stride, dilation, causal, GQA, extra keys
    ((9, 11), (3, 5), (2, 1), (1, 2), (False, True), dict(hq=1, hkv=1, transposed=True)),
    # Full tiles in 2-D (core of a 4x4 query box is 6 wide), MQA.
    ((12, 12), 9, 1, 1, False, dict(hkv=1, tiles=dict(fwd_q=(1, 4, 4), fwd_k=(1, 4, 4), dq_q=(1, 4, 4),
                                                        dq_k=(1, 4, 4), bwd_k=(1, 4, 4), bwd_q=(1, 4, 4)))),
    ((4, 5, 6), (3, 3, 5), (1, 2, 1), (1, 1, 1), (True, False, False), dict(hq=1, hkv=1)),
    ((6, 7, 5), (3, 2, 2), (2, 1, 2), (2, 3, 2), (False, True, False), dict(hq=1, hkv=1, d_qk=24, d_v=40)),
]


@pytest.mark.parametrize("spatial,kernel_size,stride,dilation,causal,kw", CASES)
def test_matches_reference(interpret, spatial, kernel_size, stride, dilation, causal, kw):
    spec = make_neighborhood_spec(spatial, kernel_size, stride, dilation, causal)
    _compare(interpret, spec, **kw)


@pytest.mark.parametrize("path", [dict(fwd_split_1d=True), dict(fwd_tma=True), dict(fwd_tma=True, fwd_overlap=True)])
@pytest.mark.parametrize("causal", [False, True])
def test_opt_in_1d_forward_paths(interpret, path, causal):
    # The split-loop and TMA 1-D forwards (off by default): full core tiles, GQA, batch 2, extra keys.
    spec = make_neighborhood_spec((64,), 33, 1, 1, causal)
    _compare(interpret, spec, batch=2, hq=2, hkv=1, extra=2, tiles={**SMALL_1D, **path})


def _variant_ids():
    from glocal.bench import gpu

    return gpu.VARIANTS["1"]


@pytest.mark.parametrize("options", _variant_ids(), ids=str)
def test_gpu_suite_1d_variants_compute_the_same_function(interpret, options):
    # Every 1-D variant the GPU suite times, at its own tile sizes, against the reference; K=257 leaves
    # unmasked key tiles in the core of 128-query tiles.
    spec = make_neighborhood_spec((400,), 257, 1, 1, False)
    _compare(interpret, spec, dtype=torch.float16, d_qk=32, d_v=32, hq=2, hkv=1, tiles=options)


def test_float16(interpret):
    spec = make_neighborhood_spec((10, 12), (5, 3), (1, 2), (2, 1), (False, False))
    _compare(interpret, spec, dtype=torch.float16, hq=1, hkv=1, extra=2)


# bfloat16 is not tested here: Triton 3.6's interpreter multiplies bf16 operands of tl.dot
# wrongly (a plain bf16 x bf16 product is off by 1e10), so bf16 is checked on the GPU by
# benchmarks/gpu.py (random problems against the float32 reference).


def test_wide_head_dim_default_tiles(interpret):
    # A head dim over 128 (padded to 256) takes the wide-row tile table.
    spec = make_neighborhood_spec((21,), 5, 2, 1, False)
    _compare(interpret, spec, hq=1, hkv=1, d_qk=136, d_v=8, tiles={})


def test_default_tiles_pad_small_grids(interpret):
    # The GPU tile shapes (128-query boxes) on a grid smaller than one tile: padded and masked.
    spec = make_neighborhood_spec((7, 9), 3)
    _compare(interpret, spec, tiles={})


def _random_spec(rng: random.Random):
    ndim = rng.choice((1, 2, 3))
    spatial, ks, ss, ds, cs = [], [], [], [], []
    for _ in range(ndim):
        length = rng.randint(3, {1: 40, 2: 10, 3: 5}[ndim])
        d = rng.choice((1, 1, 2)) if length >= 4 else 1
        k = rng.randint(1, length // d)
        spatial.append(length)
        ks.append(k)
        ss.append(rng.randint(1, k))
        ds.append(d)
        cs.append(rng.random() < 0.4)
    return make_neighborhood_spec(tuple(spatial), tuple(ks), tuple(ss), tuple(ds), tuple(cs))


def _random_case(interpret, seed):
    rng = random.Random(1000 + seed)
    spec = _random_spec(rng)
    hkv = rng.choice((1, 2))
    _compare(interpret, spec, hq=hkv * rng.choice((1, 2)), hkv=hkv, extra=rng.choice((0, 2)), seed=seed)


@pytest.mark.parametrize("seed", range(sweep_size(3)))
def test_random_problems(interpret, seed):
    _random_case(interpret, seed)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("GLOCAL_SWEEP"), reason="long interpreter sweep: set GLOCAL_SWEEP=N to run it")
@pytest.mark.parametrize("seed", range(100, 100 + sweep_size(20)))
def test_random_problems_long(interpret, seed):
    _random_case(interpret, seed)


def test_dispatch_picks_triton_for_cpu_tensors_under_interpreter(interpret):
    from glocal.backends.triton import neighborhood as backend

    spec = make_neighborhood_spec((8,), 3)
    q = torch.randn(1, 8, 2, 16)
    tensors = {"q": q, "k": q, "v": q, "additional_keys": None, "additional_values": None}
    assert backend.can_run(spec, tensors) == []
    assert choose_backend(spec, tensors, "triton") is backend


# One test per refusal message.

def _tensors(q, k=None, v=None):
    return {"q": q, "k": q if k is None else k, "v": q if v is None else v,
            "additional_keys": None, "additional_values": None}


def test_refuses_cpu_tensors_without_interpreter(monkeypatch):
    from glocal.backends.triton import neighborhood as backend

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reasons = backend.can_run(make_neighborhood_spec((8,), 3), _tensors(torch.randn(1, 8, 2, 16)))
    assert any("triton needs CUDA tensors" in r and "TRITON_INTERPRET=1" in r for r in reasons)


def test_refuses_when_triton_missing(monkeypatch):
    from glocal.backends.triton import neighborhood as backend

    monkeypatch.setattr(backend, "triton_installed", lambda: False)
    reasons = backend.can_run(make_neighborhood_spec((8,), 3), _tensors(torch.randn(1, 8, 2, 16)))
    assert reasons == ["triton is not installed: pip install glocal[triton]"]


def test_refuses_bfloat16_in_the_interpreter(monkeypatch):
    from glocal.backends.triton import neighborhood as backend

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    reasons = backend.can_run(make_neighborhood_spec((8,), 3), _tensors(torch.randn(1, 8, 2, 16).bfloat16()))
    assert reasons == ["Triton's interpreter (TRITON_INTERPRET=1) computes bfloat16 matrix products wrongly; "
                       "run bfloat16 on a GPU, or pass float16 or float32 tensors to the interpreter"]


def test_refuses_float64(monkeypatch):
    from glocal.backends.triton import neighborhood as backend

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    reasons = backend.can_run(make_neighborhood_spec((8,), 3), _tensors(torch.randn(1, 8, 2, 16, dtype=torch.float64)))
    assert reasons == ["triton runs float16, bfloat16 and float32 (as TF32), not torch.float64"]


@pytest.mark.parametrize("width", [12, 264])
def test_refuses_head_dims(monkeypatch, width):
    from glocal.backends.triton import neighborhood as backend

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    reasons = backend.can_run(make_neighborhood_spec((8,), 3), _tensors(torch.randn(1, 8, 2, width)))
    assert reasons == [f"triton takes head dims that are multiples of 8 up to 256; got q.shape[-1]={width}"]


def test_refuses_dense_attention_spec():
    from glocal.backends.triton import neighborhood as backend

    reasons = backend.can_run(AttentionSpec(8, 8, False), _tensors(torch.randn(1, 8, 2, 16)))
    assert reasons == ["triton implements neighborhood attention only, not AttentionSpec"]


# The GPU suite's own bookkeeping (it runs only on a GPU, so check its CPU-side pieces here).

def test_gpu_suite_counts_useful_pairs_exactly():
    from glocal.bench import gpu
    from glocal.masks import dense_mask

    for spec in (make_neighborhood_spec((9, 7), (3, 5), (2, 1), (1, 1), (True, False)),
                 make_neighborhood_spec((20,), 6, 3, 2, False)):
        assert gpu._useful_pairs(spec) == int(dense_mask(spec).sum())


def test_gpu_suite_random_problems_are_valid():
    from glocal.bench import gpu

    rng = random.Random(0)
    for _ in range(200):
        p = gpu._random_problem(rng)
        make_neighborhood_spec(p["spatial"], p["kernel_size"], p["stride"], p["dilation"], p["is_causal"])
        assert p["hq"] % p["hkv"] == 0 and p["d_qk"] % 8 == 0


def test_gpu_suite_keeps_a_stopped_childs_saved_result(tmp_path):
    from glocal.bench import gpu

    path = str(tmp_path / "r.json")
    code = f"import json, sys; json.dump({{'glocal_ms': 1.5}}, open({path!r}, 'w')); sys.exit(3)"
    result, error = gpu.run_isolated([sys.executable, "-c", code], 60, path)
    assert result == {"glocal_ms": 1.5}
    assert error == "stopped with exit code 3 (see its output above)"


def test_gpu_suite_kills_a_child_past_its_budget(tmp_path):
    from glocal.bench import gpu

    path = str(tmp_path / "r.json")
    start = time.time()
    result, error = gpu.run_isolated([sys.executable, "-c", "import time; time.sleep(60)"], 0.5, path, grace_s=0.5)
    assert result is None and error == "killed after 1 s"
    assert time.time() - start < 30


def test_gpu_suite_child_command_carries_the_options():
    from glocal.bench import gpu

    opt = gpu._options(argparse.Namespace(repeats=40, quick=False, checks=None, variants=True, json=True,
                                          variant_keys="1", budget=90))
    assert opt["checks"] == 60 and opt["json_stdout"] and opt["json"] is None
    cmd = gpu._child_command(opt, "config:3", "/tmp/x.json")
    parsed = argparse.ArgumentParser()
    gpu.add_arguments(parsed)
    child = parsed.parse_args(cmd[3:])
    assert (child.child, child.json, child.repeats, child.checks, child.budget, child.variants,
            child.variant_keys) == ("config:3", "/tmp/x.json", 40, 60, 90, True, "1")


def _fake_suite(monkeypatch):
    """The GPU suite with its device work replaced: checks, matmul rate and config timings are canned."""
    from glocal.bench import gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "fake card")
    monkeypatch.setattr(gpu, "matmul_tflops", lambda rep_ms: 700.0)
    monkeypatch.setattr(gpu, "copy_gbs", lambda rep_ms: 3000.0)
    monkeypatch.setattr(gpu, "check", lambda n: dict(problems=n, worst_fwd=1e-3, worst_bwd=2e-3, failures=[]))

    def fake_time(cfg, rep_ms, variants=None, save=None):
        if "3-D" in cfg["name"]:
            raise RuntimeError("no kernel for you")
        row = dict(name=cfg["name"], target=cfg["target"], agree_vs_flex=1e-3, **gpu.configs.problem_fields(cfg),
                   glocal_ms=1.0, flex_ms=2.0,
                   sdpa_ms=4.0, useful_gflop=70.0, glocal_tflops=70.0, flex_tflops=35.0, vs_flex=2.0, vs_sdpa=4.0,
                   variants=[dict(options="{'fwd_tma': True}", ms=0.5, vs_flex=4.0, agree_vs_flex=2e-3)] if variants else [])
        if save:
            save(row)
        return row

    monkeypatch.setattr(gpu, "time_config", fake_time)
    return gpu


def test_gpu_suite_main_reports_rows_errors_and_variants(monkeypatch, tmp_path, capsys):
    gpu = _fake_suite(monkeypatch)
    path = str(tmp_path / "gpu.json")
    args = argparse.Namespace(repeats=30, quick=False, json=path, checks=50, variants=True, in_process=True)
    assert gpu.main(args) == 1  # the 3-D config failed
    out = capsys.readouterr().out
    assert "fastest variant of 2-D 128x128 K=13 fwd: {'fwd_tma': True} 0.500 ms (4.00x Flex, rel. diff vs Flex 2.0e-03; default 1.000 ms, 1.0e-03)" in out
    assert "error: RuntimeError: no kernel for you" in out and "worst relative error forward 1.00e-03" in out
    saved = json.load(open(path))
    assert saved["card"] == "fake card" and saved["matmul_tflops"] == 700.0 and len(saved["rows"]) == 5
    assert saved["bandwidth_gbs"] == 3000.0


def test_gpu_suite_json_feeds_the_sim_report(monkeypatch, tmp_path, capsys):
    """glocal sim --report reads the suite's JSON: its card's figures, Triton tilings, the failed config left out."""
    from glocal.cli import main
    from glocal.sim import Hardware, Problem, predict, triton_tiling

    gpu = _fake_suite(monkeypatch)
    path = str(tmp_path / "gpu.json")
    gpu.main(argparse.Namespace(repeats=30, quick=False, json=path, checks=0, variants=False, in_process=True))
    capsys.readouterr()
    assert main(["sim", "--report", path]) == 0
    out = capsys.readouterr().out
    assert "3-D" not in out and "fake card (700000 GFLOP/s, 3000.0 GB/s)" in out and "4 rows" in out
    problem = Problem((128, 128), 8, 128, kernel_size=13, dtype="bfloat16")
    bound = predict(problem, triton_tiling(problem), Hardware(700000.0, 3000.0)).speedup_bound
    line = next(line for line in out.splitlines() if line.startswith("2-D 128x128 K=13 fwd "))
    assert line.split()[-3:] == ["4.0", f"{bound:.1f}", f"{4.0 / bound:.2f}"]  # measured, predicted, their ratio


def test_gpu_suite_child_saves_its_result(monkeypatch, tmp_path):
    gpu = _fake_suite(monkeypatch)
    import faulthandler

    monkeypatch.setattr(faulthandler, "dump_traceback_later", lambda *a, **k: None)
    path = str(tmp_path / "c.json")
    opt = gpu._options(argparse.Namespace(repeats=30, quick=False, json=path, checks=5, variants=False))
    assert gpu._child(opt, "check") == 0
    assert json.load(open(path))["check"]["problems"] == 5
    assert gpu._child(opt, "config:0") == 0
    assert json.load(open(path))["vs_flex"] == 2.0


@pytest.mark.skipif(not importlib.util.find_spec("triton") or not os.path.exists(os.path.join(
    os.path.dirname(importlib.util.find_spec("triton").origin), "backends", "nvidia", "bin", "cuobjdump")),
    reason="Triton's NVIDIA tools (ptxas, cuobjdump) are not installed")
def test_gpu_suite_compiles_for_sm90_without_a_gpu(tmp_path):
    # Real compiles for an H100 on this CPU-only machine: registers, shared memory and the Hopper
    # instructions are read from the compiler's output, so they must come out plausible.
    import subprocess

    path = tmp_path / "offline.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "glocal.bench.gpu", "--compile-only", "--only", "3-D",
                           "--json", str(path)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.load(open(path))["rows"]
    assert [(r["config"], r["options"], r["kernel"]) for r in rows] == [("3-D 16x64x64 K=(5,13,13) fwd", "{}",
                                                                        "fwd_kernel")]
    r = rows[0]
    assert 0 < r["regs"] <= 255 and r["wgmma"] > 0 and r["mufu_ex2"] > 0 and r["per_sm"] >= 1
    assert 0 < r["shared_kb"] <= 227 and r["warps"] == 8
    assert "compiled for sm_90 on this machine" in proc.stdout


def test_gpu_suite_compile_only_refuses_the_interpreter(monkeypatch, capsys):
    from glocal.bench import gpu

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert gpu.main(argparse.Namespace(compile_only=True)) == 2
    assert "--compile-only compiles real kernels: unset TRITON_INTERPRET (it is set to 1)" in capsys.readouterr().err


def test_gpu_suite_kernel_report_never_breaks_a_timing(monkeypatch):
    from glocal.backends.triton import ops
    from glocal.bench import gpu

    class NoBinary:
        class metadata:
            num_warps = 4

        asm = {}  # no cubin: the report of this kernel cannot be read

    monkeypatch.setattr(ops, "last_compiled", {"_fwd_kernel": NoBinary()})
    report = gpu.kernel_report()
    assert report == {"fwd_kernel": {"error": "KeyError: 'cubin'"}}
    assert gpu._report_line(report) == "fwd_kernel: KeyError: 'cubin'"


def test_gpu_profile_script_names_its_configs_and_needs_cuda(capsys):
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu_profile.py")
    spec = importlib.util.spec_from_file_location("gpu_profile", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--config", "K=13"]) == 2  # two configs match
    assert "--config must pick one config; 'K=13' matches 2 of:" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert script.main(["--config", "3-D"]) == 2
        assert "gpu_profile.py needs a CUDA device; none is visible" in capsys.readouterr().err
