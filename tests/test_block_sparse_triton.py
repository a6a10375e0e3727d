"""Triton block-routed attention (MoBA) vs a float64 dense reference, on CPU tensors through Triton's interpreter.

The kernels run with ``TRITON_INTERPRET=1`` (set by the ``interpret`` fixture before the kernel
module is first imported) and NaN poisoning on (every buffer a kernel writes starts as NaN, so an
element no program writes fails). The backend's ``run`` is called directly with hand-made
selections; the reference is written here from the contract: query i (position
p_i = T_kv - T_q + i) of head h attends key y iff ``selection[b, h, i, y // block_size]`` and, when
causal, ``y <= p_i`` (one softmax over those keys; nothing attended: output 0, lse -inf).
Tiles are small so that small problems have several query tiles, several key sub-tiles per block
and partial tiles. Each case compares the output, the lse and the gradients of q, k, v for a loss
that uses both the output and the lse.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys

import pytest
import torch
from conftest import interpreted, sweep_size

import glocal
from glocal import config
from glocal.backends import choose_backend
from glocal.backends.triton import block_sparse as backend
from glocal.numerics import dense_attention
from glocal.spec import AttentionSpec, BlockSparseSpec

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (pip install glocal[triton])")

SMALL = dict(moba_fwd_q=16, moba_fwd_k=16, moba_dq_q=32, moba_dq_k=16, moba_bwd_k=16, moba_bwd_q=16)


@pytest.fixture(scope="module")
def interpret():
    """Run the kernels through the interpreter, with NaN-poisoned outputs; yields the host module."""
    yield from interpreted("block_sparse_kernels", "_moba_fwd_kernel", "block_sparse_ops")


def _reference(spec, q, k, v, selection, scale):
    """Dense attention under the contract's key mask (float64 for float64 inputs)."""
    q_len, kv_len = q.shape[1], k.shape[1]
    keys = torch.arange(kv_len)
    allowed = selection[..., keys // spec.block_shape[0]]  # [B, H_q, T_q, T_kv]
    if spec.is_causal:
        positions = (kv_len - q_len) + torch.arange(q_len)
        allowed = allowed & (keys[None, :] <= positions[:, None])
    return dense_attention(q, k, v, scale, allowed)


def _selection(gen, batch, heads, q_len, kv_len, block_size, kind, top_k=3, causal=True):
    """bool [B, H_q, T_q, n_blocks]. ``routed``: each query's own block plus top_k - 1 others (earlier ones
    when causal), as MoBA routes; ``random``: each block with probability 0.35, anything goes (future blocks
    under causal masking, queries with nothing selected); ``sparse``: like random at 0.1."""
    n_blocks = -(-kv_len // block_size)
    if kind in ("random", "sparse"):
        p = 0.35 if kind == "random" else 0.1
        return torch.rand(batch, heads, q_len, n_blocks, generator=gen) < p
    positions = (kv_len - q_len) + torch.arange(q_len)
    own = (positions // block_size).clamp(0, n_blocks - 1)
    blocks = torch.arange(n_blocks)
    scores = torch.rand(batch, heads, q_len, n_blocks, generator=gen)
    if causal:
        scores = scores.masked_fill(blocks[None, :] >= own[:, None], -1.0)  # only earlier blocks compete
    scores = scores.masked_fill(blocks[None, :] == own[:, None], 2.0)  # the own block always wins
    picked = scores.topk(min(top_k, n_blocks), dim=-1).indices
    selection = torch.zeros(batch, heads, q_len, n_blocks, dtype=torch.bool)
    selection.scatter_(-1, picked, True)
    if causal:
        selection &= blocks[None, :] <= own[:, None]
    return selection


def _compare(ops, spec, selection, batch=1, hq=2, hkv=2, d_qk=16, d_v=16, dtype=torch.float32, tiles=SMALL,
             transposed=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q_len, kv_len = spec.q_len, spec.grid[0]

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    q = rand(batch, q_len, hq, d_qk)
    if transposed:
        # Non-contiguous q and selection: heads-last views of heads-first / query-first tensors.
        q = rand(batch, hq, q_len, d_qk).transpose(1, 2)
        selection = selection.transpose(1, 2).contiguous().transpose(1, 2)
    k = rand(batch, kv_len, hkv, d_qk)
    v = rand(batch, kv_len, hkv, d_v)
    inputs = [x.requires_grad_() for x in (q, k, v)]
    scale = d_qk ** -0.5
    with config.triton_tiles(**tiles):
        out, lse = backend.run(spec, {"q": q, "k": k, "v": v, "selection": selection}, scale)
        gout = torch.randn(out.shape, generator=gen)
        glse = torch.randn(lse.shape, generator=gen)
        attended = torch.isfinite(lse)
        grads = torch.autograd.grad((out.float() * gout).sum() + (lse.masked_fill(~attended, 0) * glse).sum(), inputs)
    ref_in = [x.detach().double().requires_grad_() for x in inputs]
    rout, rlse = _reference(spec, *ref_in, selection, scale)
    r_attended = torch.isfinite(rlse)
    ref_loss = (rout * gout.double()).sum() + (rlse.masked_fill(~r_attended, 0) * glse.double()).sum()
    rgrads = torch.autograd.grad(ref_loss, ref_in)
    tol = {torch.float32: 1e-4, torch.float16: 1e-2}[dtype]
    assert out.dtype == dtype and out.shape == rout.shape
    assert lse.dtype == torch.float32 and lse.shape == rlse.shape
    assert torch.equal(attended, r_attended), "the queries that attend nothing differ"
    assert (lse[~attended] == -float("inf")).all() and (out[~attended] == 0).all()
    names = ["out", "lse", "dq", "dk", "dv"]
    for name, got, want in zip(names, [out, lse.masked_fill(~attended, 0), *grads],
                               [rout, rlse.masked_fill(~r_attended, 0), *rgrads]):
        assert torch.isfinite(got).all(), f"{name} has NaN/inf (unwritten element?)"
        err = ((got.double() - want).abs().max() / want.abs().max().clamp(min=1e-30)).item()
        assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


def _case(ops, q_len, kv_len, block_size, causal, kind, seed=0, batch=1, hq=2, top_k=3, **kw):
    gen = torch.Generator().manual_seed(100 + seed)
    spec = BlockSparseSpec(grid=(kv_len,), block_shape=(block_size,), q_len=q_len, is_causal=causal, top_k=top_k)
    selection = _selection(gen, batch, hq, q_len, kv_len, block_size, kind, top_k, causal)
    _compare(ops, spec, selection, batch=batch, hq=hq, seed=seed, **kw)


CASES = [
    # (T_q, T_kv, block_size, causal, selection kind, extra keyword arguments)
    (48, 48, 16, True, "routed", {}),  # causal self-attention, blocks aligned with the query tiles
    (40, 40, 12, False, "routed", {}),  # non-causal, partial last block (40 = 3 x 12 + 4), tiles across blocks
    (1, 50, 16, True, "routed", dict(hq=4, hkv=1)),  # decoding: one query at the end, MQA
    (20, 53, 10, True, "random", dict(hq=4, hkv=2)),  # T_q < T_kv, GQA, future blocks and empty rows
    (70, 70, 40, False, "random", dict(d_qk=24, d_v=40, hkv=1)),  # 3 key sub-tiles per block, padded head dims
    (33, 33, 8, True, "sparse", dict(batch=2)),  # blocks narrower than a key sub-tile, many empty rows
    (36, 45, 16, True, "routed", dict(batch=2, transposed=True)),  # non-contiguous q and selection
]


@pytest.mark.parametrize("q_len,kv_len,block_size,causal,kind,kw", CASES)
def test_matches_reference(interpret, q_len, kv_len, block_size, causal, kind, kw):
    _case(interpret, q_len, kv_len, block_size, causal, kind, **kw)


@pytest.mark.parametrize("causal,kind,kw", [(True, "routed", {}), (False, "random", dict(hq=4, hkv=2, d_v=24))])
def test_float16(interpret, causal, kind, kw):
    _case(interpret, 40, 44, 12, causal, kind, dtype=torch.float16, **kw)


# bfloat16 is not tested here: Triton's interpreter multiplies bf16 operands of tl.dot wrongly
# (the backend refuses it under the interpreter); it is for a GPU session to check.


def test_default_tiles_pad_small_problems(interpret):
    # The GPU tile sizes (128-query tiles, key sub-tiles cut to the 24-key block's 32) on a problem smaller
    # than one query tile: padded and masked.
    _case(interpret, 30, 50, 24, True, "routed", tiles={})


def test_wide_head_dim_default_tiles(interpret):
    # A head dim over 128 (padded to 256) takes the wide-row tile table.
    _case(interpret, 21, 21, 8, False, "random", hq=1, hkv=1, d_qk=136, d_v=8, tiles={})


def test_every_block_and_no_block(interpret):
    # All blocks selected is causal (or full) attention; nothing selected gives 0 and -inf everywhere
    # (and zero gradients, every one of them written).
    gen = torch.Generator().manual_seed(3)
    for causal in (True, False):
        spec = BlockSparseSpec(grid=(37,), block_shape=(16,), q_len=37, is_causal=causal)
        _compare(interpret, spec, torch.ones(1, 2, 37, 3, dtype=torch.bool), seed=1)
    spec = BlockSparseSpec(grid=(37,), block_shape=(16,), q_len=20, is_causal=True)
    selection = torch.rand(1, 2, 20, 3, generator=gen) < 0.5
    selection[:, :, :7] = False
    _compare(interpret, spec, selection, seed=2)


@pytest.mark.parametrize("batch,q_len,kv_len", [(0, 8, 8), (1, 0, 8), (1, 4, 0)])
def test_empty_sizes(interpret, batch, q_len, kv_len):
    # Batch 0, no queries, no keys: outputs of the right shapes; with no keys every query gets 0 and -inf, and
    # with no queries dK and dV are written as zeros (NaN poisoning would show an unwritten one).
    spec = BlockSparseSpec(grid=(kv_len,), block_shape=(4,), q_len=q_len, is_causal=True)
    q = torch.randn(batch, q_len, 2, 16, requires_grad=True)
    k = torch.randn(batch, kv_len, 2, 16, requires_grad=True)
    v = torch.randn(batch, kv_len, 2, 8, requires_grad=True)
    selection = torch.ones(batch, 2, q_len, -(-kv_len // 4), dtype=torch.bool)
    out, lse = backend.run(spec, {"q": q, "k": k, "v": v, "selection": selection}, 0.25)
    assert out.shape == (batch, q_len, 2, 8) and lse.shape == (batch, q_len, 2)
    assert (out == 0).all() and (lse == -float("inf")).all()
    grads = torch.autograd.grad((out * 2).sum(), (q, k, v))
    assert all(g.shape == x.shape and (g == 0).all() for g, x in zip(grads, (q, k, v)))


def _random_case(ops, seed):
    rng = random.Random(2000 + seed)
    kv_len = rng.randint(1, 70)
    q_len = rng.choice((kv_len, rng.randint(1, kv_len)))
    block_size = rng.choice((4, 8, 11, 16, 20, 33))
    hkv = rng.choice((1, 2))
    _case(ops, q_len, kv_len, block_size, rng.random() < 0.6, rng.choice(("routed", "random", "sparse")), seed=seed,
          hq=hkv * rng.choice((1, 2)), hkv=hkv, top_k=rng.randint(1, 4), d_qk=rng.choice((8, 16, 24)),
          d_v=rng.choice((8, 16, 32)))


@pytest.mark.parametrize("seed", range(sweep_size(3)))
def test_random_problems(interpret, seed):
    _random_case(interpret, seed)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("GLOCAL_SWEEP"), reason="long interpreter sweep: set GLOCAL_SWEEP=N to run it")
@pytest.mark.parametrize("seed", range(100, 100 + sweep_size(20)))
def test_random_problems_long(interpret, seed):
    _random_case(interpret, seed)


def test_reference_of_these_tests_matches_a_loop_over_queries(gen):
    # The dense reference above, against the contract written as a loop over (batch, head, query).
    spec = BlockSparseSpec(grid=(13,), block_shape=(4,), q_len=9, is_causal=True)
    q = torch.randn(2, 9, 2, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(2, 13, 1, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 13, 1, 8, generator=gen, dtype=torch.float64)
    selection = torch.rand(2, 2, 9, 4, generator=gen) < 0.4
    out, lse = _reference(spec, q, k, v, selection, 0.3)
    for b in range(2):
        for h in range(2):
            for i in range(9):
                keys = [y for y in range(13) if selection[b, h, i, y // 4] and y <= 4 + i]
                if not keys:
                    assert out[b, i, h].abs().max() == 0 and lse[b, i, h] == -float("inf")
                    continue
                scores = torch.stack([(q[b, i, h] * k[b, y, 0]).sum() * 0.3 for y in keys])
                weights = torch.softmax(scores, 0)
                want = sum(w * v[b, y, 0] for w, y in zip(weights, keys))
                torch.testing.assert_close(out[b, i, h], want)
                torch.testing.assert_close(lse[b, i, h], torch.logsumexp(scores, 0))


def test_tables_list_each_tiles_blocks_and_each_blocks_tiles(interpret, gen):
    # The host tables against loops: per query tile the sorted union of its queries' blocks (causal: only
    # blocks starting at or before the tile's last query), and per block and kv head the (head, tile) pairs.
    spec = BlockSparseSpec(grid=(23,), block_shape=(5,), q_len=11, is_causal=True)
    selection = torch.rand(2, 4, 11, 5, generator=gen) < 0.4
    table, count = interpret.block_table(spec, selection, 4, 23)
    entries, entry_count = interpret.inverse_table(spec, selection, 4, 23, 2)
    for b in range(2):
        for h in range(4):
            for t in range(3):
                last = 12 + min(4 * t + 4, 11) - 1
                want = [n for n in range(5) if selection[b, h, 4 * t:4 * t + 4, n].any() and 5 * n <= last]
                assert table[b, h, t, :count[b, h, t]].tolist() == want
        for hk in range(2):
            for n in range(5):
                want = [g * 3 + t for g in range(2) for t in range(3)
                        if n in table[b, 2 * hk + g, t, :count[b, 2 * hk + g, t]]]
                assert entries[b, hk, n, :entry_count[b, hk, n]].tolist() == want


def test_through_the_op(interpret, gen):
    # glocal.moba_attention(backend="triton") computes the contract on the op's own routing (moba_selection).
    q = torch.randn(1, 24, 4, 16, generator=gen).requires_grad_()
    k = torch.randn(1, 56, 2, 16, generator=gen).requires_grad_()
    v = torch.randn(1, 56, 2, 16, generator=gen).requires_grad_()
    with config.triton_tiles(**SMALL):
        out, lse = glocal.moba_attention(q, k, v, block_size=8, top_k=3, return_lse=True, backend="triton")
        grads = torch.autograd.grad(out.sum() + lse.sum(), (q, k, v))
    selection = glocal.moba_selection(q.detach(), k.detach(), block_size=8, top_k=3)
    spec = BlockSparseSpec(grid=(56,), block_shape=(8,), q_len=24, is_causal=True, top_k=3)
    ref_in = [x.detach().double().requires_grad_() for x in (q, k, v)]
    rout, rlse = _reference(spec, *ref_in, selection, 0.25)
    rgrads = torch.autograd.grad(rout.sum() + rlse.sum(), ref_in)
    for name, got, want in zip(["out", "lse", "dq", "dk", "dv"], [out, lse, *grads], [rout, rlse, *rgrads]):
        err = ((got.double() - want).abs().max() / want.abs().max()).item()
        assert err <= 1e-4, f"{name}: relative error {err:.2e}"


def test_dispatch_picks_triton_for_cpu_tensors_under_interpreter(interpret):
    spec = BlockSparseSpec(grid=(8,), block_shape=(4,), q_len=8)
    q = torch.randn(1, 8, 2, 16)
    tensors = {"q": q, "k": q, "v": q, "selection": torch.ones(1, 2, 8, 2, dtype=torch.bool)}
    assert backend.can_run(spec, tensors) == []
    assert choose_backend(spec, tensors, "triton") is backend


_COMPILE_FOR_SM90 = """
import json, torch
from glocal.bench.gpu import report
from glocal.backends.triton import ops, block_sparse_ops
from glocal.spec import BlockSparseSpec
q = k = v = torch.zeros(1, 512, 2, 64, dtype=torch.float16)
selection = torch.ones(1, 2, 512, 4, dtype=torch.bool)
spec = BlockSparseSpec((512,), (128,), 512, True, 3)
with report._offline_target(90), ops.compile_only():
    out, lse, tables = block_sparse_ops.forward(spec, q, k, v, selection, 0.125)
    block_sparse_ops.backward(spec, q, k, v, selection, out, lse, torch.zeros_like(out), None, 0.125, tables)
print(json.dumps({name: report._resources(c, c.metadata.num_warps) for name, c in ops.last_compiled.items()}))
"""


@pytest.mark.skipif(not importlib.util.find_spec("triton") or not os.path.exists(os.path.join(
    os.path.dirname(importlib.util.find_spec("triton").origin), "backends", "nvidia", "bin", "cuobjdump")),
    reason="Triton's NVIDIA tools (ptxas, cuobjdump) are not installed")
def test_kernels_compile_for_sm90_without_a_gpu():
    # The interpreter runs the kernels' Python, not the compiler: real compiles for an H100 (nothing is
    # launched) catch what it lets through, and the resource report must come out plausible.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(report) == ["_moba_dkdv_kernel", "_moba_dq_kernel", "_moba_fwd_kernel"]
    for name, r in report.items():
        assert 0 < r["regs"] <= 255 and r["wgmma"] > 0 and r["mufu_ex2"] > 0, (name, r)
        assert r["local_bytes"] + r["spill_ld_st"] == 0, f"{name} spills registers: {r}"


# One test per refusal message.

SPEC = BlockSparseSpec(grid=(8,), block_shape=(4,), q_len=8)


def _tensors(q, k=None, v=None, selection=None):
    return {"q": q, "k": q if k is None else k, "v": q if v is None else v,
            "selection": torch.ones(q.shape[0], q.shape[2], q.shape[1], 2, dtype=torch.bool) if selection is None
            else selection}


def test_refuses_other_specs():
    reasons = backend.can_run(AttentionSpec(8, 8, False), _tensors(torch.randn(1, 8, 2, 16)))
    assert reasons == ["triton's block_sparse kernels take a BlockSparseSpec, not AttentionSpec"]


def test_refuses_when_triton_missing(monkeypatch):
    monkeypatch.setattr(backend, "triton_installed", lambda: False)
    reasons = backend.can_run(SPEC, _tensors(torch.randn(1, 8, 2, 16)))
    assert reasons == ["triton is not installed: pip install glocal[triton]"]


def test_refuses_cpu_tensors_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert backend.can_run(SPEC, _tensors(torch.randn(1, 8, 2, 16))) == [
        "triton needs CUDA tensors (got device 'cpu'); set TRITON_INTERPRET=1 to run its kernels on the CPU "
        "through the interpreter"]


def test_refuses_float64(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    reasons = backend.can_run(SPEC, _tensors(torch.randn(1, 8, 2, 16, dtype=torch.float64)))
    assert reasons == ["triton runs float16, bfloat16 and float32 (as TF32), not torch.float64"]


def test_refuses_bfloat16_in_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    reasons = backend.can_run(SPEC, _tensors(torch.randn(1, 8, 2, 16).bfloat16()))
    assert reasons == ["Triton's interpreter (TRITON_INTERPRET=1) computes bfloat16 matrix products wrongly; "
                       "run bfloat16 on a GPU, or pass float16 or float32 tensors to the interpreter"]


@pytest.mark.parametrize("width", [0, 12, 264])
def test_refuses_head_dims(monkeypatch, width):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q = torch.randn(1, 8, 2, 16)
    reasons = backend.can_run(SPEC, _tensors(q, v=torch.randn(1, 8, 2, width)))
    assert reasons == [f"triton takes head dims that are multiples of 8 up to 256; got v.shape[-1]={width}"]


def test_refuses_grids():
    spec = BlockSparseSpec(grid=(4, 4), block_shape=(2, 2), q_len=16, is_causal=False)
    q = torch.randn(1, 16, 2, 16)
    assert backend.can_run(spec, _tensors(q, selection=torch.ones(1, 2, 16, 4, dtype=torch.bool))) == [
        "triton runs block-routed attention over sequences (1-D grids) only; got grid=(4, 4); use the cpu or "
        "reference backend for N-D grids (VMoBA)"]


def test_refuses_batch_entries_past_32_bit_offsets(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q = torch.empty(1, 2**24, 8, 16, device="meta")  # 2^31 elements per batch entry, no memory
    reasons = backend.can_run(SPEC, _tensors(q, selection=torch.empty(1, 8, 2**24, 2, dtype=torch.bool, device="meta")))
    assert "triton indexes one batch entry with 32-bit offsets; got 2147483648 elements per entry; split the batch " \
           "or the heads" in reasons


def test_refuses_a_selection_that_is_not_bool(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q = torch.randn(1, 8, 2, 16)
    reasons = backend.can_run(SPEC, _tensors(q, selection=torch.ones(1, 2, 8, 2)))
    assert reasons == ["triton reads the selection as a bool tensor on q's device; got selection.dtype=torch.float32, "
                       "selection.device=cpu, q.device=cpu"]
