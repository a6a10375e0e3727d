"""Public API behaviours: shapes, dtypes, layouts, GQA, NaN, scale, dispatch, CLI and docstrings."""

from __future__ import annotations

import doctest
import functools
import math
import os
import re
import subprocess
import sys
import types

import bruteforce
import pytest
import torch

import glocal
from glocal import backends, cli
from glocal.spec import AttentionSpec, make_neighborhood_spec

F64 = torch.float64
# These tests pin the foundation's behaviour on the reference backend; each fast backend
# is compared with the reference in its own tests. Dispatch itself is tested below.
REF = "reference"
na1d = functools.partial(glocal.na1d, backend=REF)
na2d = functools.partial(glocal.na2d, backend=REF)
na3d = functools.partial(glocal.na3d, backend=REF)
neighborhood_attention = functools.partial(glocal.neighborhood_attention, backend=REF)
attention = functools.partial(glocal.attention, backend=REF)
merge_attentions = glocal.merge_attentions
NA = {1: na1d, 2: na2d, 3: na3d}
GRIDS = {1: (11,), 2: (5, 6), 3: (3, 4, 5)}
KERNELS = {1: 5, 2: (3, 4), 3: (3, 2, 3)}


def randn(gen, *shape, dtype=F64):
    return torch.randn(*shape, generator=gen, dtype=F64).to(dtype)


# --- shapes ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_batch_size_zero(gen, ndim):
    grid = GRIDS[ndim]
    q = torch.zeros(0, *grid, 4, 8, requires_grad=True)
    kv = torch.zeros(0, *grid, 2, 8, requires_grad=True)
    extra = torch.zeros(0, 3, 2, 8)
    for fn in (NA[ndim], neighborhood_attention):
        out, lse = fn(q, kv, kv, KERNELS[ndim], additional_keys=extra, additional_values=extra, return_lse=True)
        assert out.shape == (0, *grid, 4, 8) and lse.shape == (0, *grid, 4)
        assert out.dtype == torch.float32 and lse.dtype == torch.float32
        out.sum().backward()
        assert q.grad.shape == q.shape and kv.grad.shape == kv.shape


def test_batch_size_zero_attention():
    q, k, v = torch.zeros(0, 5, 4, 8), torch.zeros(0, 7, 2, 8), torch.zeros(0, 7, 2, 3)
    out, lse = attention(q, k, v, is_causal=True, return_lse=True)
    assert out.shape == (0, 5, 4, 3) and lse.shape == (0, 5, 4)


def test_attention_without_keys_or_queries(gen):
    # T_kv = 0: every query sees nothing, so out is 0 and lse -inf (as for the empty rows of causal cross).
    q, empty = randn(gen, 2, 3, 2, 4), torch.zeros(2, 0, 2, 4, dtype=F64)
    out, lse = attention(q, empty, empty, return_lse=True)
    assert torch.equal(out, torch.zeros_like(out)) and torch.all(lse == -math.inf)
    out, lse = attention(empty, q, q, is_causal=True, return_lse=True)
    assert out.shape == (2, 0, 2, 4) and lse.shape == (2, 0, 2)


def test_zero_extra_tokens_change_nothing(gen):
    q = randn(gen, 2, 9, 2, 4)
    empty = torch.zeros(2, 0, 2, 4, dtype=F64)
    got = na1d(q, q, q, 3, additional_keys=empty, additional_values=empty, return_lse=True)
    torch.testing.assert_close(got, na1d(q, q, q, 3, return_lse=True), rtol=0, atol=0)


def test_return_lse_flag(gen):
    q = randn(gen, 2, 9, 2, 4)
    out = na1d(q, q, q, 3)
    assert isinstance(out, torch.Tensor) and out.shape == q.shape
    pair = na1d(q, q, q, 3, return_lse=True)
    assert isinstance(pair, tuple) and len(pair) == 2
    torch.testing.assert_close(pair[0], out, rtol=0, atol=0)
    assert pair[1].shape == (2, 9, 2)


def test_neighborhood_attention_picks_the_rank_of_q(gen):
    for ndim in (1, 2, 3):
        q = randn(gen, 1, *GRIDS[ndim], 2, 4)
        want = NA[ndim](q, q, q, KERNELS[ndim], return_lse=True)
        got = neighborhood_attention(q, q, q, KERNELS[ndim], return_lse=True)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


# --- layouts and dtypes --------------------------------------------------------------------------------

@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_non_contiguous_inputs(gen, ndim):
    grid, kernel = GRIDS[ndim], KERNELS[ndim]
    # q: a heads-first tensor viewed heads-last; k: every other channel; v: broadcast (stride 0) along axis 1.
    q = randn(gen, 2, 4, *grid, 6).movedim(1, -2)
    k = randn(gen, 2, *grid, 2, 12)[..., ::2]
    v = randn(gen, 2, 1, *grid[1:], 2, 3).expand(2, *grid, 2, 3)
    ak = randn(gen, 2, 2, 3, 6).transpose(1, 2)  # [B, S=3, H_kv=2, D] with a non-standard stride
    av = randn(gen, 2, 3, 2, 3)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous() or ak.is_contiguous())
    got = NA[ndim](q, k, v, kernel, additional_keys=ak, additional_values=av, return_lse=True)
    want = NA[ndim](q.contiguous(), k.contiguous(), v.contiguous(), kernel, additional_keys=ak.contiguous(),
                    additional_values=av, return_lse=True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_non_contiguous_attention(gen):
    q = randn(gen, 2, 4, 7, 8).transpose(1, 2)
    k = randn(gen, 2, 9, 2, 16)[..., 1::2]
    v = randn(gen, 2, 2, 9, 5).transpose(1, 2)
    got = attention(q, k, v, is_causal=True, return_lse=True)
    want = attention(q.contiguous(), k.contiguous(), v.contiguous(), is_causal=True, return_lse=True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# Tolerances of DESIGN.md §4, relative to max |reference|.
DTYPE_TOL = {F64: 1e-12, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 1e-2}


@pytest.mark.parametrize("dtype", list(DTYPE_TOL))
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_dtypes(gen, dtype, ndim):
    grid = GRIDS[ndim]
    q, k, v = (randn(gen, 2, *grid, 4, 8, dtype=dtype) for _ in range(3))
    ak, av = randn(gen, 2, 2, 4, 8, dtype=dtype), randn(gen, 2, 2, 4, 8, dtype=dtype)
    out, lse = NA[ndim](q, k, v, KERNELS[ndim], stride=2, is_causal=True, additional_keys=ak,
                        additional_values=av, return_lse=True)
    assert out.dtype == dtype
    assert lse.dtype == (F64 if dtype == F64 else torch.float32)
    # Judge against float64 on the same (already rounded) inputs: only the kernel's rounding is measured.
    want_out, want_lse = NA[ndim](q.double(), k.double(), v.double(), KERNELS[ndim], stride=2, is_causal=True,
                                  additional_keys=ak.double(), additional_values=av.double(), return_lse=True)
    tol = DTYPE_TOL[dtype]
    assert (out.double() - want_out).abs().max() <= tol * want_out.abs().max()
    assert (lse.double() - want_lse).abs().max() <= tol * want_lse.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_attention_dtypes(gen, dtype):
    q, k, v = (randn(gen, 2, 9, 2, 8, dtype=dtype) for _ in range(3))
    out, lse = attention(q, k, v, is_causal=True, return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    want = attention(q.double(), k.double(), v.double(), is_causal=True)
    assert (out.double() - want).abs().max() <= DTYPE_TOL[dtype] * want.abs().max()


# --- heads and head dims --------------------------------------------------------------------------------------

@pytest.mark.parametrize("heads_kv", [1, 2, 3, 6])
def test_gqa_reads_kv_head_h_div_group(gen, heads_kv):
    q = randn(gen, 2, 6, 5, 6, 4)
    k, v = randn(gen, 2, 6, 5, heads_kv, 4), randn(gen, 2, 6, 5, heads_kv, 3)
    ak, av = randn(gen, 2, 2, heads_kv, 4), randn(gen, 2, 2, heads_kv, 3)
    got = na2d(q, k, v, 3, dilation=(2, 1), additional_keys=ak, additional_values=av, return_lse=True)
    # repeat_interleave maps query head h to kv head h // (H_q / H_kv) (not h % H_kv).
    g = 6 // heads_kv
    want = na2d(q, k.repeat_interleave(g, -2), v.repeat_interleave(g, -2), 3, dilation=(2, 1),
                       additional_keys=ak.repeat_interleave(g, -2), additional_values=av.repeat_interleave(g, -2),
                       return_lse=True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("heads_kv", [1, 2])
def test_gqa_attention(gen, heads_kv):
    q, k, v = randn(gen, 2, 6, 4, 8), randn(gen, 2, 9, heads_kv, 8), randn(gen, 2, 9, heads_kv, 5)
    got = attention(q, k, v, is_causal=True, return_lse=True)
    g = 4 // heads_kv
    want = attention(q, k.repeat_interleave(g, -2), v.repeat_interleave(g, -2), is_causal=True,
                            return_lse=True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_value_dim_differs_from_key_dim(gen):
    q, k = randn(gen, 1, 5, 6, 2, 4), randn(gen, 1, 5, 6, 2, 4)
    v = randn(gen, 1, 5, 6, 2, 7)
    out, lse = na2d(q, k, v, (3, 2), return_lse=True)
    assert out.shape == (1, 5, 6, 2, 7) and lse.shape == (1, 5, 6, 2)
    # The output is linear in v per channel: splitting v's channels splits the output's.
    torch.testing.assert_close(out[..., :3], na2d(q, k, v[..., :3], (3, 2)), rtol=1e-12, atol=1e-12)
    want, _ = bruteforce.neighborhood_attention(q, k, v, (3, 2), (1, 1), (1, 1), (False, False), 0.5)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)


# --- NaN, immutability, scale ---------------------------------------------------------------------------------

def test_nan_propagates_to_the_queries_that_attend_it(gen):
    q, k, v = randn(gen, 1, 9, 2, 4), randn(gen, 1, 9, 2, 4), randn(gen, 1, 9, 2, 4)
    ak, av = randn(gen, 1, 2, 2, 4), randn(gen, 1, 2, 2, 4)
    nan = float("nan")
    # K=3 on 9 tokens: key 0 is attended by queries 0 and 1 only (query 2 sees 1..3).

    def nan_rows(out):
        return torch.isnan(out[0, :, 0]).any(-1).tolist()

    q_bad = q.clone()
    q_bad[0, 4, 0, 0] = nan
    assert nan_rows(na1d(q_bad, k, v, 3)) == [i == 4 for i in range(9)]
    k_bad = k.clone()
    k_bad[0, 0, 0, 1] = nan
    out = na1d(q, k_bad, v, 3)
    assert nan_rows(out) == [i < 2 for i in range(9)]
    assert not torch.isnan(out[0, :, 1]).any()  # the other head reads another kv head
    v_bad = v.clone()
    v_bad[0, 0, 0, 2] = nan
    assert nan_rows(na1d(q, k, v_bad, 3)) == [i < 2 for i in range(9)]
    ak_bad = ak.clone()
    ak_bad[0, 1, 0, 0] = nan
    assert all(nan_rows(na1d(q, k, v, 3, additional_keys=ak_bad, additional_values=av)))
    k_seq = k.clone()
    k_seq[0, 8, 0, 0] = nan
    out = attention(q, k_seq, v, is_causal=True)
    assert nan_rows(out) == [i == 8 for i in range(9)]  # causal: only the last query sees key 8


def test_infinite_values_reach_only_the_queries_that_attend_them(gen):
    q, k, v = randn(gen, 1, 9, 2, 4), randn(gen, 1, 9, 2, 4), randn(gen, 1, 9, 2, 4)
    inf = float("inf")
    v[0, 0, 0, 0] = inf  # key 0: attended by queries 0, 1
    v[0, 0, 0, 1] = -inf
    v[0, 1, 0, 1] = inf  # key 1: attended by queries 0, 1, 2
    out = na1d(q, k, v, 3)[0, :, 0]
    assert out[:, 0].tolist()[:3] == [inf, inf, out[2, 0].item()] and torch.isfinite(out[2:, 0]).all()
    assert torch.isnan(out[:2, 1]).all()  # +inf and -inf in one sum
    assert out[2, 1].item() == inf and torch.isfinite(out[3:, 1]).all()
    assert torch.isfinite(out[:, 2:]).all()


def test_inputs_are_not_modified(gen):
    q, k, v = (randn(gen, 2, 6, 5, 4, 8).requires_grad_() for _ in range(3))
    ak, av = randn(gen, 2, 3, 4, 8).requires_grad_(), randn(gen, 2, 3, 4, 8).requires_grad_()
    inputs = (q, k, v, ak, av)
    before = [x.detach().clone() for x in inputs]
    out, lse = na2d(q, k, v, 3, stride=2, dilation=(2, 1), is_causal=(True, False), additional_keys=ak,
                           additional_values=av, return_lse=True)
    (out.sum() + lse.sum()).backward()
    with torch.no_grad():
        out.add_(1.0)  # the output must not alias an input
        lse.add_(1.0)
    for x, b in zip(inputs, before):
        assert torch.equal(x.detach(), b)
    a = attention(q.flatten(1, 2), k.flatten(1, 2), v.flatten(1, 2), is_causal=True, return_lse=True)
    merged, _ = merge_attentions([a[0]], [a[1]])
    with torch.no_grad():
        merged.add_(1.0)
    for x, b in zip(inputs, before):
        assert torch.equal(x.detach(), b)


def test_scale_none_is_inverse_sqrt_head_dim(gen):
    q, k, v = randn(gen, 1, 9, 2, 6), randn(gen, 1, 9, 2, 6), randn(gen, 1, 9, 2, 3)
    torch.testing.assert_close(na1d(q, k, v, 3, return_lse=True),
                               na1d(q, k, v, 3, scale=6 ** -0.5, return_lse=True), rtol=0, atol=0)
    torch.testing.assert_close(attention(q, k, v, return_lse=True),
                               attention(q, k, v, scale=6 ** -0.5, return_lse=True), rtol=0, atol=0)


@pytest.mark.parametrize("zero", [0.0, 0])
def test_explicit_zero_scale_is_honoured(gen, zero):
    # scale 0: every attended key has weight 1 / count, and lse = log(count).
    q, k, v = randn(gen, 1, 7, 2, 4), randn(gen, 1, 7, 2, 4), randn(gen, 1, 7, 2, 3)
    out, lse = na1d(q, k, v, 4, is_causal=True, scale=zero, return_lse=True)
    for x in range(7):
        keys = bruteforce.axis_keys(x, 7, 4, 1, 1, True)
        torch.testing.assert_close(out[:, x], v[:, keys].mean(1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lse[:, x], torch.full_like(lse[:, x], math.log(len(keys))), rtol=0, atol=1e-12)
    assert not torch.allclose(out, na1d(q, k, v, 4, is_causal=True))
    out, lse = attention(q, k, v, scale=zero, return_lse=True)
    torch.testing.assert_close(out, v.mean(1, keepdim=True).expand_as(out), rtol=1e-12, atol=1e-12)


def test_merge_of_parts_that_all_saw_nothing():
    outs = [torch.randn(1, 3, 2, 4, requires_grad=True) for _ in range(2)]
    lses = [torch.full((1, 3, 2), -math.inf, requires_grad=True) for _ in range(2)]
    out, lse = merge_attentions(outs, lses)
    assert torch.equal(out, torch.zeros_like(out)) and torch.all(lse == -math.inf)
    out.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in outs + lses)


def test_merge_dtypes(gen):
    # Half-precision outputs with float32 lses (what a kernel returns): out keeps its dtype, lse stays float32.
    q, k, v = (randn(gen, 1, 8, 2, 4, dtype=torch.bfloat16) for _ in range(3))
    a = attention(q, k[:, :3], v[:, :3], return_lse=True)
    b = attention(q, k[:, 3:], v[:, 3:], return_lse=True)
    out, lse = merge_attentions([a[0], b[0]], [a[1], b[1]])
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    want_out, want_lse = attention(q.double(), k.double(), v.double(), return_lse=True)
    assert (out.double() - want_out).abs().max() <= DTYPE_TOL[torch.bfloat16] * want_out.abs().max()
    assert (lse.double() - want_lse).abs().max() <= 1e-5 * want_lse.abs().max()


# --- backends and dispatch ---------------------------------------------------------------------------------------

def test_available_backends():
    names = glocal.available_backends()
    assert "reference" in names
    assert names == [n for n in backends.BACKENDS if n in names]  # priority order kept


def test_backend_none_agrees_with_named_reference(gen):
    q = randn(gen, 1, 5, 6, 2, 4)
    torch.testing.assert_close(glocal.na2d(q, q, q, 3, backend="reference"), glocal.na2d(q, q, q, 3),
                               rtol=1e-10, atol=1e-10)


class _Unknown:
    """A spec type no backend implements."""


TENSORS = {"q": torch.zeros(1, 4, 1, 2), "k": torch.zeros(1, 4, 1, 2), "v": torch.zeros(1, 4, 1, 2),
           "additional_keys": None, "additional_values": None}


def test_named_backend_that_cannot_run_raises_its_reasons():
    with pytest.raises(RuntimeError, match=r"backend 'reference' cannot run this problem: .*_Unknown"):
        backends.choose_backend(_Unknown(), TENSORS, "reference")


def test_no_backend_can_run_lists_every_reason():
    with pytest.raises(RuntimeError, match="no backend can run this problem") as err:
        backends.choose_backend(_Unknown(), TENSORS, None)
    # Every backend tried for CPU tensors gives its reasons; the reference is always among them.
    lines = str(err.value).splitlines()[1:]
    assert lines and all(re.fullmatch(r"  \w+: .*does not implement _Unknown.*", line) for line in lines), lines
    assert any(line.startswith("  reference: ") for line in lines)


def fake_backend(name, reasons):
    return types.SimpleNamespace(NAME=name, can_run=lambda spec, tensors: list(reasons), run=None)


@pytest.fixture
def fake_backends(monkeypatch):
    """Three backends in priority order: 'a' always refuses, 'b' and 'c' can run."""
    fakes = {"a": fake_backend("a", ["a needs a GPU"]), "b": fake_backend("b", []), "c": fake_backend("c", [])}
    monkeypatch.setattr(backends, "BACKENDS", tuple(fakes))
    families = ("neighborhood", "dense")
    monkeypatch.setattr(backends, "PRIORITY", {f: {"cpu": tuple(fakes)} for f in families}, raising=False)
    monkeypatch.setattr(backends, "load", lambda name, family=None: fakes.get(name))
    return fakes


def test_dispatch_takes_the_first_able_backend(fake_backends):
    spec = make_neighborhood_spec((4,), 3)
    assert backends.choose_backend(spec, TENSORS) is fake_backends["b"]
    assert backends.choose_backend(spec, TENSORS, "c") is fake_backends["c"]
    with pytest.raises(RuntimeError, match="backend 'a' cannot run this problem: a needs a GPU"):
        backends.choose_backend(spec, TENSORS, "a")


def test_dispatch_lists_every_refusal(fake_backends):
    fake_backends["b"].can_run = fake_backends["c"].can_run = lambda spec, tensors: ["not today", "nor tomorrow"]
    with pytest.raises(RuntimeError) as err:
        backends.choose_backend(AttentionSpec(4, 4, False), TENSORS)
    assert str(err.value) == ("no backend can run this problem:\n  a: a needs a GPU\n"
                              "  b: not today; nor tomorrow\n  c: not today; nor tomorrow")


def test_use_backend_scopes_the_choice(fake_backends):
    spec = make_neighborhood_spec((4,), 3)
    with glocal.use_backend("c"):
        assert backends.choose_backend(spec, TENSORS) is fake_backends["c"]
        with glocal.use_backend(None):  # None restores automatic choice
            assert backends.choose_backend(spec, TENSORS) is fake_backends["b"]
        assert backends.choose_backend(spec, TENSORS) is fake_backends["c"]
        # An explicit name in the call beats the scoped preference.
        assert backends.choose_backend(spec, TENSORS, "b") is fake_backends["b"]
    assert backends.choose_backend(spec, TENSORS) is fake_backends["b"]
    with pytest.raises(RuntimeError, match="backend 'a' cannot run"):
        with glocal.use_backend("a"):
            backends.choose_backend(spec, TENSORS)
    # The scope was left through an exception and still restored.
    assert backends.choose_backend(spec, TENSORS) is fake_backends["b"]


def test_use_backend_reference_on_real_calls(gen, monkeypatch):
    from glocal.backends.reference import dense, neighborhood

    calls = []
    for module in (dense, neighborhood):
        real_run = module.run
        monkeypatch.setattr(module, "run", lambda *a, real_run=real_run, **kw: calls.append(1) or real_run(*a, **kw))
    q = randn(gen, 1, 9, 2, 4)
    with glocal.use_backend("reference"):
        glocal.na1d(q, q, q, 3)
        glocal.attention(q, q, q)
    assert len(calls) == 2


def test_backend_env_variable_sets_the_default(tmp_path):
    code = ("import torch, glocal\nq = torch.zeros(1, 5, 1, 2)\n"
            "try:\n    glocal.na1d(q, q, q, 3)\nexcept ValueError as e:\n    print(e)\n")
    env = dict(os.environ, GLOCAL_BACKEND="no-such-backend")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "unknown backend 'no-such-backend'" in result.stdout, result.stderr


# --- command line ----------------------------------------------------------------------------------------------------

def test_glocal_info(capsys):
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert f"glocal {glocal.__version__}" in text
    assert f"torch {torch.__version__}" in text
    assert "devices: cpu" in text
    lines = text.splitlines()
    for name in backends.BACKENDS:
        assert any(line.split()[:1] == [name] for line in lines), (name, text)
    assert any(line.split()[:3] == ["reference", "cpu", "can"] for line in lines), text


def test_glocal_console_script():
    script = os.path.join(os.path.dirname(sys.executable), "glocal")
    if not os.path.exists(script):
        pytest.skip("the glocal console script is not installed next to this Python")
    result = subprocess.run([script, "info"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"glocal {glocal.__version__}")


# --- docstrings -------------------------------------------------------------------------------------------------------

DOCUMENTED = [glocal.na1d, glocal.na2d, glocal.na3d, glocal.neighborhood_attention, glocal.attention,
              glocal.merge_attentions]


@pytest.mark.parametrize("fn", DOCUMENTED, ids=lambda fn: fn.__name__)
def test_docstring_opens_with_shapes_and_has_an_example(fn):
    doc = fn.__doc__ or ""
    lines = [line.strip() for line in doc.splitlines() if line.strip()]
    # A one-line summary, then the shape legend.
    assert any(line.startswith("Shapes:") for line in lines[:3]), doc
    legend = doc[doc.index("Shapes:"):]
    assert "[B," in legend and "H" in legend and "D" in legend
    assert ">>>" in doc


@pytest.mark.parametrize("fn", DOCUMENTED, ids=lambda fn: fn.__name__)
def test_docstring_example_runs(fn):
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(fn, fn.__name__, globs={})
    assert tests and tests[0].examples
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0


# --- every op dispatches: backend= and use_backend ----------------------------------------------------------------

def _op_calls(gen):
    """One call of every public op on small inputs: (name, fn(backend) -> result)."""
    x = randn(gen, 1, 12, 2, 8)
    img = randn(gen, 1, 5, 6, 2, 8)
    vol = randn(gen, 1, 3, 4, 4, 2, 8)
    g = randn(gen, 1, 3, 2, 8)
    a, lse_a = glocal.attention(x, x[:, :5], x[:, :5], return_lse=True)
    b, lse_b = glocal.attention(x, x[:, 5:], x[:, 5:], return_lse=True)
    return {
        "na1d": lambda be: glocal.na1d(x, x, x, 5, backend=be),
        "na2d": lambda be: glocal.na2d(img, img, img, 3, dilation=(1, 2), backend=be),
        "na3d": lambda be: glocal.na3d(vol, vol, vol, (3, 3, 3), is_causal=(True, False, False), backend=be),
        "neighborhood_attention": lambda be: glocal.neighborhood_attention(img, img, img, 3, backend=be),
        "attention": lambda be: glocal.attention(x, x, x, is_causal=True, backend=be),
        "merge_attentions": lambda be: glocal.merge_attentions([a, b], [lse_a, lse_b], backend=be)[0],
        "linear_attention": lambda be: glocal.linear_attention(x, x, x, is_causal=True, chunk_size=4, backend=be),
        "linear_attention_step": lambda be: glocal.linear_attention_step(x[:, 0], x[:, 0], x[:, 0], backend=be)[0],
        "inline_attention": lambda be: glocal.inline_attention(img, img, img, backend=be),
        "local_concentration_attention": lambda be: glocal.local_concentration_attention(img, img, img, 3,
                                                                                         backend=be),
        "global_token_attention": lambda be: glocal.global_token_attention(img, img, img, 3, g, g, backend=be),
        "compressed_attention": lambda be: glocal.compressed_attention(img, img, img, 2, backend=be),
        "channel_attention": lambda be: glocal.channel_attention(img, img, img, backend=be),
        "moba_attention": lambda be: glocal.moba_attention(x, x, x, 4, top_k=2, backend=be),
        "moba_attention_nd": lambda be: glocal.moba_attention_nd(img, img, img, (2, 3), top_k=2, backend=be),
        "rat_attention": lambda be: glocal.rat_attention(x, x, x, x.sigmoid(), x.sigmoid(), 4, backend=be),
        "parallax_attention": lambda be: glocal.parallax_attention(x, 0.1 * x, x, x, window_size=5, backend=be),
        "local_linear_attention": lambda be: glocal.local_linear_attention(x, x, x, window_size=5, backend=be),
    }


# Public functions of glocal.ops that run no attention of their own, so take no backend: the routing of MoBA.
NOT_DISPATCHED = {"moba_selection"}


def test_every_public_op_takes_backend():
    import inspect

    ops = [name for name in glocal.ops.__all__ if callable(getattr(glocal.ops, name))
           and not inspect.ismodule(getattr(glocal.ops, name)) and name not in NOT_DISPATCHED]
    assert sorted(ops) == sorted(_op_calls(torch.Generator().manual_seed(0)))
    for name in ops:
        assert "backend" in inspect.signature(getattr(glocal, name)).parameters, name


@pytest.mark.parametrize("name", sorted(_op_calls(torch.Generator().manual_seed(0))))
def test_every_op_runs_on_the_reference_when_asked(name, gen, monkeypatch):
    import importlib
    import pkgutil

    import glocal.backends.reference as ref_pkg

    calls = []
    for info in pkgutil.iter_modules(ref_pkg.__path__):
        module = importlib.import_module(f"glocal.backends.reference.{info.name}")
        if hasattr(module, "run"):
            real = module.run
            monkeypatch.setattr(module, "run", lambda *a, real=real, **kw: calls.append(1) or real(*a, **kw))
    fn = _op_calls(gen)[name]
    default = fn(None)
    n_default = len(calls)
    named = fn("reference")
    assert len(calls) > n_default  # the reference ran
    with glocal.use_backend("reference"):
        scoped = fn(None)
    torch.testing.assert_close(named, default, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scoped, named, atol=0, rtol=0)


def test_convert_and_capture_are_modules_that_can_be_called():
    import importlib

    import glocal.analysis.capture as capture_module
    import glocal.convert as convert_module

    assert convert_module is importlib.import_module("glocal.convert") is glocal.convert
    assert capture_module is importlib.import_module("glocal.analysis.capture") is glocal.analysis.capture
    for name in ("converted_probs", "converted_attention", "local_mask", "Local", "Hybrid", "restore",
                 "plan_from_report", "mean_pooled", "mean_cosine", "validate_plan"):
        assert hasattr(glocal.convert, name), name
    for name in ("Recorder", "AttentionCall", "sdpa_call", "intercept", "capture"):
        assert hasattr(glocal.analysis.capture, name), name
    q = torch.randn(1, 10, 2, 8)
    with glocal.analysis.capture(None) as rec:  # the module, called
        glocal.na1d(q, q, q, 3)
    assert isinstance(rec, capture_module.Recorder) and rec.maps[0][0].shape == (1, 2, 10, 10)
    with pytest.raises(TypeError, match="glocal.convert handles Hugging Face"):
        glocal.convert(torch.nn.Linear(2, 2), {})
