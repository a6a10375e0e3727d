"""The CPU backend against the reference: output, lse and every gradient, on both of its paths.

The compiled kernels and the pure-PyTorch path are each compared with the
reference (float64 reference for low-precision inputs) on a seeded sweep over
dimensions, kernel size, stride, dilation, per-axis causality, GQA, D_v != D_qk,
extra keys/values, dtypes and non-contiguous inputs. Outputs are pre-filled with
NaN, so an element a kernel never writes fails the comparison.
"""

from __future__ import annotations

import json
import random
import re

import pytest
import torch
from conftest import backend_run, sweep_size
from torch.autograd import gradcheck

from glocal import backends, config
from glocal.backends.cpu import build
from glocal.backends.cpu import neighborhood as cpu
from glocal.backends.reference import neighborhood as reference
from glocal.spec import AttentionSpec, make_neighborhood_spec

TOL = {torch.float32: 1e-4, torch.float64: 1e-9, torch.bfloat16: 2e-2, torch.float16: 1e-2}
PATHS = ["compiled", "pytorch"]


@pytest.fixture(autouse=True)
def nan_fill():
    with config.nan_poisoning(True):
        yield


def use_path(path):
    if path == "compiled" and cpu.kernels() is None:
        pytest.skip(f"compiled kernels unavailable here: {cpu.describe()}")
    return config.cpu_kernels(path == "compiled")


def random_config(rng: random.Random) -> dict:
    ndim = rng.choice([1, 1, 2, 2, 3])
    max_len = {1: 24, 2: 9, 3: 6}[ndim]
    spatial, kernel, stride, dilation, causal = [], [], [], [], []
    for _ in range(ndim):
        d = rng.choice([1, 1, 2, 3])
        k = rng.randint(1, 5)
        length = rng.randint(max(k * d, 1), max(k * d, max_len))
        spatial.append(length)
        kernel.append(k)
        stride.append(rng.randint(1, k))
        dilation.append(d)
        causal.append(rng.random() < 0.35)
    hkv = rng.choice([1, 2])
    return dict(
        spatial=tuple(spatial), kernel=tuple(kernel), stride=tuple(stride), dilation=tuple(dilation),
        causal=tuple(causal), batch=rng.choice([1, 2]), hkv=hkv, hq=hkv * rng.choice([1, 2]),
        dqk=rng.choice([4, 8, 16, 32]), dv=rng.choice([4, 8, 16, 32, 64]),
        extra=rng.choice([0, 0, 0, 1, 3]), dtype=rng.choice([torch.float32] * 3 + [torch.bfloat16]),
        scale=rng.choice([None, 0.3]), noncontiguous=rng.random() < 0.25,
    )


def make_inputs(cfg: dict, gen: torch.Generator):
    def t(*shape):
        x = torch.randn(*shape, generator=gen).to(cfg["dtype"])
        if cfg["noncontiguous"]:
            # same values, strided memory: a transposed copy viewed back
            x = x.transpose(0, -1).contiguous().transpose(0, -1)
        return x

    b, sp = cfg["batch"], cfg["spatial"]
    q = t(b, *sp, cfg["hq"], cfg["dqk"])
    k = t(b, *sp, cfg["hkv"], cfg["dqk"])
    v = t(b, *sp, cfg["hkv"], cfg["dv"])
    ak = t(b, cfg["extra"], cfg["hkv"], cfg["dqk"]) if cfg["extra"] else None
    av = t(b, cfg["extra"], cfg["hkv"], cfg["dv"]) if cfg["extra"] else None
    return q, k, v, ak, av


def outputs_and_grads(module, spec, scale, inputs, gen_seed):
    """(out, lse, *grads of every input) of one backend, for a fixed random upstream gradient."""
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in inputs]
    out, lse = backend_run(module, spec, *leaves[:3], scale, leaves[3], leaves[4])
    g = torch.Generator().manual_seed(gen_seed)
    g_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    g_lse = torch.randn(lse.shape, generator=g, dtype=torch.float64)
    loss = (out.double() * g_out).sum() + (lse.double() * g_lse).sum()
    present = [x for x in leaves if x is not None]
    grads = torch.autograd.grad(loss, present)
    return [out.detach(), lse.detach(), *grads]


def assert_close(got, want, tol, what):
    for name, a, b in zip(["out", "lse", "dq", "dk", "dv", "d_extra_k", "d_extra_v"], got, want):
        a, b = a.double(), b.double()
        assert a.shape == b.shape, f"{what}: {name} shape {tuple(a.shape)} != {tuple(b.shape)}"
        assert not torch.isnan(a).any(), f"{what}: {name} has NaN (unwritten element?)"
        err = float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))
        assert err <= tol, f"{what}: {name} relative error {err:.2e} > {tol:.0e}"


def check_config(cfg: dict, seed: int, path: str):
    gen = torch.Generator().manual_seed(seed)
    inputs = make_inputs(cfg, gen)
    spec = make_neighborhood_spec(cfg["spatial"], cfg["kernel"], cfg["stride"], cfg["dilation"], cfg["causal"])
    scale = cfg["scale"] if cfg["scale"] is not None else cfg["dqk"] ** -0.5
    assert cpu.can_run(spec, dict(zip(["q", "k", "v", "additional_keys", "additional_values"], inputs))) == []
    with use_path(path):
        got = outputs_and_grads(cpu, spec, scale, inputs, seed)
    # Low precision is judged against a float64 reference on the same (rounded) inputs.
    ref_inputs = [x.double() if x is not None else None for x in inputs]
    want = outputs_and_grads(reference, spec, scale, ref_inputs, seed)
    assert_close(got, want, TOL[cfg["dtype"]], f"{path} {cfg}")


SWEEP = sweep_size(200)


@pytest.mark.parametrize("path", PATHS)
def test_sweep_against_reference(path):
    rng = random.Random(1234)
    for i in range(SWEEP):
        check_config(random_config(rng), seed=i, path=path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "spatial, kernel, stride, dilation, causal",
    [
        ((64,), 7, 1, 1, False),
        ((40,), 33, 4, 1, True),  # large causal window, stride > 1
        ((12, 13), 5, (2, 3), (2, 1), (False, True)),
        ((5, 7, 9), (3, 5, 3), 1, (1, 1, 3), (True, False, False)),
        ((300,), 33, 1, 2, True),  # many blocks: the blocked backward's write phases across threads
    ],
)
def test_head_dims_with_compiled_specialisations(path, spatial, kernel, stride, dilation, causal):
    # D = 16/32/64/128 take the compiled kernels' fixed-size code; the sweep covers the rest.
    for d in (16, 32, 64, 128):
        cfg = dict(spatial=spatial, kernel=kernel, stride=stride, dilation=dilation, causal=causal, batch=1,
                   hkv=2, hq=4, dqk=d, dv=d, extra=2, dtype=torch.float32, scale=None, noncontiguous=False)
        check_config(cfg, seed=d, path=path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "spatial, options",
    [
        ((7,), dict(kernel_size=3)),
        ((9,), dict(kernel_size=3, stride=3, dilation=2, is_causal=True)),
        ((3, 4), dict(kernel_size=(3, 2), stride=(1, 2), dilation=(1, 2), is_causal=(True, False))),
        ((2, 3, 4), dict(kernel_size=(2, 3, 2), stride=(2, 1, 1), dilation=(1, 1, 2), is_causal=(False, True, False))),
    ],
)
def test_gradcheck_float64(path, spatial, options, gen):
    spec = make_neighborhood_spec(spatial, **options)
    q = torch.randn(1, *spatial, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, *spatial, 1, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, *spatial, 1, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    ak = torch.randn(1, 2, 1, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    av = torch.randn(1, 2, 1, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    with use_path(path):
        assert gradcheck(lambda *x: backend_run(cpu, spec, *x[:3], 0.8, None, None), (q, k, v))
        assert gradcheck(lambda *x: backend_run(cpu, spec, *x[:3], 0.8, x[3], x[4]), (q, k, v, ak, av))


def test_paths_agree_float32(gen):
    if cpu.kernels() is None:
        pytest.skip(f"compiled kernels unavailable here: {cpu.describe()}")
    spec = make_neighborhood_spec((10, 11), (5, 3), (2, 1), (1, 3), (False, True))
    q, k, v = (torch.randn(2, 10, 11, 4, 32, generator=gen) for _ in range(3))
    with config.cpu_kernels(True):
        a = backend_run(cpu, spec, q, k, v, 0.2)
    with config.cpu_kernels(False):
        b = backend_run(cpu, spec, q, k, v, 0.2)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-5, rtol=1e-5)


def test_describe_names_the_active_path():
    with config.cpu_kernels(False):
        assert "pure-PyTorch" in cpu.describe() and "disabled" in cpu.describe()
    if cpu.kernels() is not None:
        with config.cpu_kernels(True):
            assert "compiled" in cpu.describe()


def test_build_failure_falls_back_to_pytorch(monkeypatch, gen):
    monkeypatch.setattr(build, "_build", {"module": None, "error": "RuntimeError: no compiler", "tried": True})
    assert cpu.active_path() == "pytorch"
    assert cpu.describe() == "cpu: pure-PyTorch path (compiled kernels build failed: RuntimeError: no compiler)"
    spec = make_neighborhood_spec((6, 7), 3, 1, (2, 1), (False, True))
    q, k, v = (torch.randn(1, 6, 7, 2, 16, generator=gen) for _ in range(3))
    got, want = backend_run(cpu, spec, q, k, v, 0.25), backend_run(reference, spec, q, k, v, 0.25)
    assert torch.allclose(got[0], want[0], atol=1e-5) and torch.allclose(got[1], want[1], atol=1e-5)


def test_refuses_tensors_off_the_cpu():
    spec = make_neighborhood_spec((4, 4), 3)
    q = torch.zeros(1, 4, 4, 1, 8, device="meta")
    reasons = cpu.can_run(spec, {"q": q, "k": q, "v": q, "additional_keys": None, "additional_values": None})
    assert reasons == ["cpu needs CPU tensors; q is on meta"]


def test_refuses_integer_dtype():
    spec = make_neighborhood_spec((4, 4), 3)
    q = torch.zeros(1, 4, 4, 1, 8, dtype=torch.int32)
    reasons = cpu.can_run(spec, {"q": q, "k": q, "v": q, "additional_keys": None, "additional_values": None})
    assert reasons == ["cpu takes float32, float64, bfloat16 or float16; got torch.int32"]


def test_dense_attention_on_meta_tensors_goes_to_the_reference():
    # The cpu dense path (torch's flash kernel) runs CPU tensors only and says why it refuses others.
    q = torch.zeros(1, 4, 1, 8, device="meta")
    assert backends.load("cpu", "dense") is not None
    with pytest.raises(RuntimeError, match="backend 'cpu' cannot run this problem: cpu runs dense attention on CPU "
                                           "tensors; got q.device=meta"):
        backends.choose_backend(AttentionSpec(4, 4, False), {"q": q, "k": q, "v": q}, "cpu")
    assert backends.choose_backend(AttentionSpec(4, 4, False), {"q": q, "k": q, "v": q}).NAME == "reference"


def test_bench_quick_json(tmp_path, capsys):
    from glocal.bench import command

    path = tmp_path / "out.json"
    parser = __import__("argparse").ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--quick", "--json", str(path), "--no-progress", "--backward",
                              "--config", "1d:64,k7,h2,dim16", "--config", "2d:8x8,k3,s2,d2,h2,dim16,causal=1"])
    assert command.main(args) == 0
    data = json.loads(path.read_text())
    assert data["machine"]["threads"] >= 1 and data["matmul_gflops"] > 0
    assert len(data["results"]) == 2
    for row in data["results"]:
        for key in command.FIELDS:
            assert key in row, f"missing field {key}"
        assert row["glocal_ms"] > 0 and row["dense_ms"] > 0 and row["glocal_bwd_ms"] > 0 and row["flex_ms"] > 0
        assert row["flex_bwd_ms"] is None  # FlexAttention on the CPU is inference only
        assert row["speedup_vs_dense"] == pytest.approx(row["dense_ms"] / row["glocal_ms"])
        assert 0 < row["floor_fraction"]
        assert row["peak_extra_bytes"] >= 0
    assert "glocal" in capsys.readouterr().out


def test_bench_config_syntax():
    from glocal.bench.neighborhood import parse_config

    cfg = parse_config("3d:8x32x32,k3x7x7,s1,d1x2x2,h2,dim32,b3,causal=1x0x0")
    assert cfg["spatial"] == (8, 32, 32) and cfg["kernel_size"] == (3, 7, 7) and cfg["dilation"] == (1, 2, 2)
    assert cfg["is_causal"] == (True, False, False) and cfg["heads"] == 2 and cfg["head_dim"] == 32
    assert cfg["batch"] == 3 and cfg["spec"].kernel_size == (3, 7, 7)


@pytest.mark.parametrize(
    "text, message",
    [
        ("64x64,k7", "must start with 1d:, 2d: or 3d: then the grid"),
        ("2d:64x64,k7xa", "kernel_size must be integers joined by 'x'; got '7xa'"),
        ("2d:64x64,k3x3x3", "kernel_size has 3 values for a 2-D grid; give 1 or 2"),
        ("2d:64x64,q7", "unknown item 'q7'; use k, s, d, h, dim, b, causal="),
    ],
)
def test_bench_config_errors(text, message, capsys):
    from glocal.bench import command
    from glocal.bench.neighborhood import parse_config

    with pytest.raises(ValueError, match=re.escape(message)):
        parse_config(text)
    parser = __import__("argparse").ArgumentParser()
    command.add_arguments(parser)
    assert command.main(parser.parse_args(["--config", text, "--no-progress"])) == 2
    assert message in capsys.readouterr().err
