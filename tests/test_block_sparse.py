"""Block-routed attention (MoBA, VMoBA): the routing, the reference and the cpu fast path.

- the routing (glocal.masks.block_selection via glocal.moba_selection) against a loop over queries
  written from the rules of the issue;
- the reference (dense mask of the routing) against a brute-force loop over queries;
- the cpu path (both its row-gather and grouped paths, flash and matmul tiles) against the
  reference: output, lse and every gradient, on a seeded sweep;
- identities with dense attention, decoding over a growing cache, gradcheck.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
from conftest import sweep_size

import glocal
from glocal import masks
from glocal.backends.cpu import block_sparse as cpu
from glocal.backends.reference import block_sparse as reference
from glocal.spec import BlockSparseSpec

F64 = torch.float64


def rand(gen, *shape, dtype=F64):
    return torch.randn(*shape, generator=gen, dtype=F64).to(dtype)


def assert_close(got, want, tol):
    scale = max(want.abs().max().item() if want.numel() else 0.0, 1.0)
    assert got.shape == want.shape
    assert torch.isfinite(got).all()
    assert (got - want).abs().max().item() <= tol * scale if got.numel() else True


# --------------------------------------------------------------------------------- brute force, from the rules


def rule_selection(q, k, block_size, top_k=None, is_causal=True, threshold=None, means=None):
    """The routing, query by query: [B, H_q, T_q, n] bool. Sequences only."""
    batch, tq, hq, _ = q.shape
    tkv, hkv = k.shape[1], k.shape[2]
    n = -(-tkv // block_size)
    if means is None:
        means = torch.stack([k[:, j * block_size:min((j + 1) * block_size, tkv)].double().mean(1) for j in range(n)], 1)
    own = [(tkv - tq + i) // block_size for i in range(tq)]
    # Causal: the own block's gate key is the mean of its keys up to the query (no later key routes it).
    own_means = [k[:, p // block_size * block_size:p + 1].double().mean(1) for p in range(tkv - tq, tkv)] \
        if is_causal else None
    return _rule(q, means, own, hq // hkv, n, top_k, is_causal, threshold, own_means)


def _rule(q, means, own_blocks, group, n, top_k, is_causal, threshold, own_means=None):
    batch, tq, hq, _ = q.shape
    sel = torch.zeros(batch, hq, tq, n, dtype=torch.bool)
    for b, h, i in itertools.product(range(batch), range(hq), range(tq)):
        own = own_blocks[i]
        eligible = list(range(own + 1)) if is_causal else list(range(n))
        gate = {j: float(q[b, i, h].double() @ means[b, j, h // group].double()) for j in eligible}
        if own_means is not None:
            gate[own] = float(q[b, i, h].double() @ own_means[i][b, h // group])
        others = sorted((j for j in eligible if j != own), key=lambda j: (-gate[j], j))  # ties: lower index
        if top_k is not None:
            chosen = others[:top_k - 1]
        elif threshold >= 1:
            chosen = others
        else:
            low, high = min(gate.values()), max(gate.values())
            norm = {j: (g - low) / (high - low) if high > low else 1.0 for j, g in gate.items()}
            total = sum(norm.values())
            share = {j: x / total for j, x in norm.items()}
            chosen, reached = [], share[own]
            for j in others:
                if reached >= threshold:
                    break
                chosen.append(j)
                reached += share[j]
        sel[b, h, i, own] = True
        sel[b, h, i, chosen] = True
    return sel


def box_of(coord, grid, block_shape):
    index = 0
    for c, length, size in zip(coord, grid, block_shape):
        index = index * math.ceil(length / size) + c // size
    return index


def rule_selection_nd(q, k, block_shape, top_k=None, threshold=None):
    """The VMoBA routing on a grid, token by token (boxes from coordinates)."""
    grid = tuple(q.shape[1:-2])
    coords = list(itertools.product(*(range(length) for length in grid)))
    boxes = [box_of(c, grid, block_shape) for c in coords]
    n = max(boxes) + 1
    kf = k.flatten(1, -3).double()
    means = torch.stack([kf[:, [t for t, bx in enumerate(boxes) if bx == j]].mean(1) for j in range(n)], 1)
    return _rule(q.flatten(1, -3), means, boxes, q.shape[-2] // k.shape[-2], n, top_k, False, threshold)


def brute_attention(q, k, v, selection, block_of, is_causal, scale):
    """Query by query: one softmax over the keys y with selection[b, h, i, block(y)] (and y <= p_i if causal)."""
    batch, tq, hq, _ = q.shape
    tkv, hkv = k.shape[1], k.shape[2]
    out = torch.zeros(batch, tq, hq, v.shape[-1], dtype=F64)
    lse = torch.full((batch, tq, hq), -math.inf, dtype=F64)
    for b, h, i in itertools.product(range(batch), range(hq), range(tq)):
        keys = [y for y in range(tkv) if selection[b, h, i, block_of[y]] and (not is_causal or y <= tkv - tq + i)]
        if keys:
            scores = k[b, keys, h // (hq // hkv)].double() @ q[b, i, h].double() * scale
            lse[b, i, h] = torch.logsumexp(scores, 0)
            out[b, i, h] = torch.softmax(scores, 0) @ v[b, keys, h // (hq // hkv)].double()
    return out, lse


# --------------------------------------------------------------------------------- routing


ROUTINGS = [dict(top_k=1), dict(top_k=2), dict(top_k=3), dict(top_k=50), dict(threshold=0.0),
            dict(threshold=0.3), dict(threshold=0.7), dict(threshold=1.0)]


@pytest.mark.parametrize("routing", ROUTINGS, ids=str)
@pytest.mark.parametrize("is_causal", [True, False])
@pytest.mark.parametrize("tq,tkv,hq,hkv,size", [(23, 23, 2, 2, 4), (7, 30, 4, 2, 8), (1, 17, 3, 1, 5)])
def test_selection_follows_the_rules(gen, routing, is_causal, tq, tkv, hq, hkv, size):
    q, k = rand(gen, 2, tq, hq, 6), rand(gen, 2, tkv, hkv, 6)
    got = glocal.moba_selection(q, k, size, is_causal=is_causal, **routing)
    assert got.dtype == torch.bool and got.shape == (2, hq, tq, -(-tkv // size))
    assert torch.equal(got, rule_selection(q, k, size, is_causal=is_causal, **routing))


def test_selection_counts_and_causality(gen):
    q, k = rand(gen, 1, 40, 2, 4), rand(gen, 1, 40, 2, 4)
    sel = glocal.moba_selection(q, k, 8, top_k=3)
    own = torch.arange(40) // 8
    assert sel[0, :, torch.arange(40), own].all()  # the own block, always
    assert (sel.sum(-1) == torch.clamp(own + 1, max=3)).all()  # top_k blocks, or all earlier ones
    later = torch.arange(5)[None, :] > own[:, None]
    assert not sel[0][:, later].any()  # never a later block


def test_ties_go_to_the_lower_block():
    # Every block has the same mean key, so every gate ties.
    q = torch.ones(1, 16, 1, 2)
    k = torch.ones(1, 16, 1, 2)
    sel = glocal.moba_selection(q, k, 2, top_k=3, is_causal=False)
    assert sel[0, 0, 15].nonzero().flatten().tolist() == [0, 1, 7]
    sel = glocal.moba_selection(q, k, 2, top_k=3)
    assert sel[0, 0, 15].nonzero().flatten().tolist() == [0, 1, 7]
    # Equal gates: min-max has no range, every share is 1/8; tau = 0.3 needs the own block and two more.
    sel = glocal.moba_selection(q, k, 2, threshold=0.3, is_causal=False)
    assert sel[0, 0, 15].nonzero().flatten().tolist() == [0, 1, 7]
    # With more than _ARGMAX_PICKS picks, the stable sort breaks the same ties the same way.
    sel = glocal.moba_selection(q, torch.ones(1, 40, 1, 2), 2, top_k=12, is_causal=False)
    assert sel[0, 0, 0].nonzero().flatten().tolist() == list(range(11)) + [12]  # query 0 sits at 24: block 12


def test_selection_with_many_picks_and_chunked_routing(gen, monkeypatch):
    monkeypatch.setattr(masks, "_ROUTING_ELEMENTS", 64)  # several slices of queries
    q, k = rand(gen, 1, 60, 2, 4), rand(gen, 1, 60, 1, 4)
    for routing in (dict(top_k=12), dict(top_k=3), dict(threshold=0.5)):
        assert torch.equal(glocal.moba_selection(q, k, 3, **routing), rule_selection(q, k, 3, **routing))


def test_threshold_edge_cases(gen):
    q, k = rand(gen, 1, 12, 2, 4), rand(gen, 1, 12, 2, 4)
    own_only = glocal.moba_selection(q, k, 4, top_k=1)
    assert torch.equal(glocal.moba_selection(q, k, 4, threshold=0.0), own_only)
    causal_all = glocal.moba_selection(q, k, 4, top_k=99)
    assert torch.equal(glocal.moba_selection(q, k, 4, threshold=1.0), causal_all)
    # One eligible block (the first block's queries): the own block's share is 1.
    assert (glocal.moba_selection(q, k, 4, threshold=0.9)[0, :, :4].sum(-1) == 1).all()


def test_block_means_given_equal_computed(gen):
    q, k = rand(gen, 2, 9, 4, 5), rand(gen, 2, 29, 2, 5)
    means = masks.block_means(k, (6,))
    by_hand = torch.stack([k[:, j * 6:(j + 1) * 6].mean(1) for j in range(5)], 1)  # the last block holds 5 keys
    assert torch.allclose(means, by_hand, atol=1e-12)
    for routing in (dict(top_k=2), dict(threshold=0.5)):
        assert torch.equal(glocal.moba_selection(q, k, 6, block_means=means, **routing),
                           glocal.moba_selection(q, k, 6, **routing))
    # The means decide the routing: other means, other blocks.
    other = glocal.moba_selection(q, k, 6, top_k=2, block_means=rand(torch.Generator().manual_seed(1), 2, 5, 2, 5))
    assert not torch.equal(other, glocal.moba_selection(q, k, 6, top_k=2))


@pytest.mark.parametrize("grid,block_shape", [((7,), (3,)), ((5, 6), (2, 4)), ((3, 5, 4), (2, 2, 3)),
                                              ((4, 4, 4), (4, 2, 2))])
@pytest.mark.parametrize("routing", [dict(top_k=1), dict(top_k=3), dict(threshold=0.4)], ids=str)
def test_selection_on_grids_follows_the_rules(gen, grid, block_shape, routing):
    q, k = rand(gen, 1, *grid, 2, 3), rand(gen, 1, *grid, 1, 3)
    spec = BlockSparseSpec(grid, block_shape, math.prod(grid), False)
    got = masks.block_selection(q.flatten(1, -3), masks.block_means(k, block_shape),
                                masks.query_blocks(grid, block_shape, spec.q_len), False, **routing)
    assert torch.equal(got, rule_selection_nd(q, k, block_shape, **routing))


def test_block_layout_numbers_boxes_row_major():
    layout = masks.block_layout((3, 5), (2, 2))
    coords = itertools.product(range(3), range(5))
    assert layout.tolist() == [box_of(c, (3, 5), (2, 2)) for c in coords]
    assert torch.equal(reference.token_blocks((3, 5, 2), (2, 2, 1)), masks.block_layout((3, 5, 2), (2, 2, 1)))


# --------------------------------------------------------------------------------- reference vs brute force


@pytest.mark.parametrize("tq,tkv,hq,hkv,size,is_causal", [(11, 11, 2, 1, 4, True), (5, 13, 2, 2, 3, True),
                                                          (9, 9, 4, 2, 4, False), (3, 10, 1, 1, 4, False)])
def test_reference_matches_brute_force(gen, tq, tkv, hq, hkv, size, is_causal):
    q, k, v = rand(gen, 2, tq, hq, 4), rand(gen, 2, tkv, hkv, 4), rand(gen, 2, tkv, hkv, 3)
    sel = glocal.moba_selection(q, k, size, top_k=2, is_causal=is_causal)
    out, lse = glocal.moba_attention(q, k, v, size, top_k=2, is_causal=is_causal, return_lse=True,
                                     backend="reference")
    want = brute_attention(q, k, v, sel, [y // size for y in range(tkv)], is_causal, 4 ** -0.5)
    assert_close(out, want[0], 1e-12)
    assert_close(lse, want[1], 1e-12)


def test_reference_on_a_grid_matches_brute_force(gen):
    grid, block_shape = (3, 5), (2, 3)
    q, k, v = rand(gen, 1, *grid, 2, 4), rand(gen, 1, *grid, 2, 4), rand(gen, 1, *grid, 2, 4)
    out, lse = glocal.moba_attention_nd(q, k, v, block_shape, top_k=2, scale=0.3, return_lse=True, backend="reference")
    sel = rule_selection_nd(q, k, block_shape, top_k=2)
    boxes = [box_of(c, grid, block_shape) for c in itertools.product(range(3), range(5))]
    want = brute_attention(q.flatten(1, -3), k.flatten(1, -3), v.flatten(1, -3), sel, boxes, False, 0.3)
    assert_close(out.flatten(1, -3), want[0], 1e-12)
    assert_close(lse.flatten(1, -2), want[1], 1e-12)


# --------------------------------------------------------------------------------- cpu vs reference


def compare(gen, q, k, v, run, dtype=F64, tol=1e-9):
    """run(q, k, v, backend) -> (out, lse): cpu (NaN-poisoned) against the reference in float64, and gradients."""
    inputs = [x.detach().to(dtype).requires_grad_(True) for x in (q, k, v)]
    with glocal.config.nan_poisoning(True):
        out, lse = run(*inputs, "cpu")
    assert out.dtype == dtype and lse.dtype == (F64 if dtype == F64 else torch.float32)
    ref_inputs = [x.detach().to(dtype).double().requires_grad_(True) for x in (q, k, v)]
    ref, ref_lse = run(*ref_inputs, "reference")
    assert_close(out.double(), ref, tol)
    assert_close(lse.double(), ref_lse, tol)
    if out.numel() == 0:
        return
    g, g_lse = rand(gen, *out.shape), rand(gen, *lse.shape)
    with glocal.config.nan_poisoning(True):
        got = torch.autograd.grad((out.double() * g).sum() + (lse.double() * g_lse).sum(), inputs)
    want = torch.autograd.grad((ref * g).sum() + (ref_lse * g_lse).sum(), ref_inputs)
    for a, b in zip(got, want):
        assert_close(a.double(), b, tol)


@pytest.fixture(params=["rows", "grouped-flash", "grouped-matmul"])
def path(request, monkeypatch):
    """Each path of the cpu backend: the row gather (decoding) or the grouped path with either tile kernel."""
    monkeypatch.setattr(cpu, "GATHER_ELEMENTS", 1 << 40 if request.param == "rows" else 0)
    monkeypatch.setattr(cpu, "USE_FLASH", request.param != "grouped-matmul")
    monkeypatch.setattr(cpu, "TILE_ELEMENTS", 512)  # several tiles even on small problems
    monkeypatch.setattr(cpu, "HALVES_FROM", 2)  # whole causal blocks split into halves even when small
    return request.param


CASES = [  # (T_q, T_kv, H_q, H_kv, D, D_v, block, causal, routing)
    (32, 32, 4, 2, 8, 8, 8, True, dict(top_k=3)),          # whole blocks: one own call on views
    (37, 37, 2, 1, 8, 8, 8, True, dict(top_k=2)),          # partial last block
    (13, 37, 2, 2, 6, 6, 8, True, dict(top_k=3)),          # T_q < T_kv, misaligned
    (16, 48, 2, 1, 4, 4, 8, True, dict(top_k=2)),          # T_q < T_kv, aligned
    (29, 29, 4, 1, 5, 3, 6, True, dict(threshold=0.4)),    # D_v != D, MQA
    (19, 27, 2, 2, 4, 4, 5, False, dict(top_k=3)),         # non-causal cross
    (1, 37, 4, 2, 8, 8, 8, True, dict(top_k=3)),           # decoding
    (20, 20, 2, 2, 4, 4, 4, True, dict(top_k=1)),          # own block only
]


@pytest.mark.parametrize("case", CASES, ids=[str(c[:8]) for c in CASES])
def test_cpu_matches_reference(gen, path, case):
    tq, tkv, hq, hkv, d, dv, size, is_causal, routing = case
    q, k, v = rand(gen, 2, tq, hq, d), rand(gen, 2, tkv, hkv, d), rand(gen, 2, tkv, hkv, dv)
    compare(gen, q, k, v, lambda q, k, v, be: glocal.moba_attention(q, k, v, size, is_causal=is_causal, scale=0.4,
                                                                  return_lse=True, backend=be, **routing))


@pytest.mark.parametrize("grid,block_shape,routing", [((3, 5, 4), (2, 3, 2), dict(top_k=3)),
                                                      ((6, 7), (4, 3), dict(threshold=0.5)),
                                                      ((4, 4, 4), (2, 2, 2), dict(top_k=2)),
                                                      ((9,), (4,), dict(top_k=2))])
def test_cpu_matches_reference_on_grids(gen, path, grid, block_shape, routing):
    q, k, v = rand(gen, 2, *grid, 2, 4), rand(gen, 2, *grid, 1, 4), rand(gen, 2, *grid, 1, 4)
    compare(gen, q, k, v, lambda q, k, v, be: glocal.moba_attention_nd(q, k, v, block_shape, return_lse=True,
                                                                     backend=be, **routing))


def test_seeded_sweep(gen, monkeypatch):
    monkeypatch.setattr(cpu, "TILE_ELEMENTS", 2048)
    rng = random.Random(0)
    for _ in range(sweep_size(12)):
        monkeypatch.setattr(cpu, "GATHER_ELEMENTS", rng.choice([0, 1 << 40]))
        monkeypatch.setattr(cpu, "USE_FLASH", rng.random() < 0.7)
        hkv = rng.choice([1, 2])
        tkv = rng.randint(1, 45)
        tq = rng.choice([tkv, rng.randint(0, tkv)])
        d = rng.choice([4, 6])
        dv = rng.choice([d, 3])
        size, causal = rng.randint(1, 12), rng.random() < 0.7
        routing = rng.choice([dict(top_k=rng.randint(1, 5)), dict(threshold=rng.random())])
        batch = rng.choice([0, 1, 2])
        q, k, v = rand(gen, batch, tq, hkv * rng.choice([1, 2]), d), rand(gen, batch, tkv, hkv, d), \
            rand(gen, batch, tkv, hkv, dv)
        compare(gen, q, k, v, lambda q, k, v, be: glocal.moba_attention(q, k, v, size, is_causal=causal,
                                                                      return_lse=True, backend=be, **routing))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2), (torch.float16, 1e-2)])
def test_low_precision_and_noncontiguous(gen, path, dtype, tol):
    # inputs laid out [B, H, T, D] and transposed: strided, not contiguous
    q, k, v = (rand(gen, 1, 2, 40, 8).transpose(1, 2) for _ in range(3))
    compare(gen, q, k, v, lambda q, k, v, be: glocal.moba_attention(q, k, v, 8, top_k=3, return_lse=True, backend=be),
            dtype, tol)


def test_inputs_are_not_modified(gen):
    q, k, v = rand(gen, 1, 24, 2, 4), rand(gen, 1, 24, 2, 4), rand(gen, 1, 24, 2, 4)
    copies = [x.clone() for x in (q, k, v)]
    glocal.moba_attention(q, k, v, 8, top_k=2, backend="cpu")
    glocal.moba_attention(q[:, -1:], k, v, 8, top_k=2, backend="cpu")
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), copies))


def test_gradcheck_float64(gen):
    for gather in (0, 1 << 40):
        cpu_gather = cpu.GATHER_ELEMENTS
        cpu.GATHER_ELEMENTS = gather
        try:
            q, k, v = (rand(gen, 1, 10, 2, 3).requires_grad_(True) for _ in range(3))
            assert torch.autograd.gradcheck(lambda q, k, v: glocal.moba_attention(q, k, v, 4, top_k=2, return_lse=True,
                                                                                  backend="cpu"), (q, k, v), fast_mode=True)
            x = rand(gen, 1, 3, 4, 1, 3).requires_grad_(True)
            assert torch.autograd.gradcheck(lambda x: glocal.moba_attention_nd(x, x, x, (2, 3), top_k=2, backend="cpu"),
                                            (x,), fast_mode=True)
        finally:
            cpu.GATHER_ELEMENTS = cpu_gather


# --------------------------------------------------------------------------------- identities


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_top_k_all_blocks_is_dense_attention(gen, backend):
    q, k, v = rand(gen, 1, 30, 2, 4), rand(gen, 1, 30, 2, 4), rand(gen, 1, 30, 2, 4)
    causal = glocal.attention(q, k, v, is_causal=True, backend="reference")
    assert_close(glocal.moba_attention(q, k, v, 7, top_k=5, backend=backend), causal, 1e-12)
    assert_close(glocal.moba_attention(q, k, v, 7, top_k=99, backend=backend), causal, 1e-12)
    full = glocal.attention(q, k, v, backend="reference")
    assert_close(glocal.moba_attention(q, k, v, 7, top_k=5, is_causal=False, backend=backend), full, 1e-12)
    # A query block of a cross problem sees the whole cache with top_k = n_blocks.
    assert_close(glocal.moba_attention(q[:, -6:], k, v, 7, top_k=5, backend=backend),
                 glocal.attention(q[:, -6:], k, v, is_causal=True, backend="reference"), 1e-12)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_top_k_one_is_block_diagonal_causal_attention(gen, backend):
    q, k, v = rand(gen, 2, 20, 2, 4), rand(gen, 2, 20, 2, 4), rand(gen, 2, 20, 2, 4)
    out = glocal.moba_attention(q, k, v, 5, top_k=1, backend=backend)
    blocks = [glocal.attention(q[:, s:s + 5], k[:, s:s + 5], v[:, s:s + 5], is_causal=True, backend="reference")
              for s in range(0, 20, 5)]
    assert_close(out, torch.cat(blocks, 1), 1e-12)


def test_grid_top_k_all_boxes_is_full_attention(gen):
    q, k, v = rand(gen, 1, 4, 5, 2, 4), rand(gen, 1, 4, 5, 2, 4), rand(gen, 1, 4, 5, 2, 4)
    full = glocal.attention(q.flatten(1, 2), k.flatten(1, 2), v.flatten(1, 2), backend="reference")
    out = glocal.moba_attention_nd(q, k, v, (2, 2), top_k=6, backend="cpu")
    assert_close(out.flatten(1, 2), full, 1e-12)


def test_decoding_over_a_growing_cache(gen):
    size, total = 4, 23
    q, k, v = rand(gen, 1, total, 4, 8), rand(gen, 1, total, 2, 8), rand(gen, 1, total, 2, 8)
    full = glocal.moba_attention(q, k, v, size, top_k=3, backend="reference")
    sums = torch.zeros(1, 0, 2, 8, dtype=F64)
    for t in range(total):
        # The cache keeps the block means up to date: add the new key to its block's running sum.
        if t % size == 0:
            sums = torch.cat([sums, torch.zeros(1, 1, 2, 8, dtype=F64)], 1)
        sums[:, -1] += k[:, t]
        counts = torch.tensor([min(size, t + 1 - j * size) for j in range(sums.shape[1])], dtype=F64)
        means = sums / counts[None, :, None, None]
        for backend in ("cpu", "reference"):
            step = glocal.moba_attention(q[:, t:t + 1], k[:, :t + 1], v[:, :t + 1], size, top_k=3, block_means=means,
                                         backend=backend)
            assert_close(step[:, 0], full[:, t], 1e-10)


def test_batch_zero_and_empty_queries(gen):
    q = torch.zeros(0, 9, 4, 8, requires_grad=True)
    kv = torch.zeros(0, 9, 2, 8, requires_grad=True)
    out, lse = glocal.moba_attention(q, kv, kv, 4, top_k=2, return_lse=True)
    assert out.shape == (0, 9, 4, 8) and lse.shape == (0, 9, 4) and lse.dtype == torch.float32
    out.sum().backward()
    assert q.grad.shape == q.shape and kv.grad.shape == kv.shape
    grid = torch.zeros(0, 3, 4, 2, 8)
    assert glocal.moba_attention_nd(grid, grid, grid, 2, top_k=2).shape == (0, 3, 4, 2, 8)
    k = rand(gen, 1, 9, 2, 8)
    assert glocal.moba_attention(k[:, :0], k, k, 4, top_k=2).shape == (1, 0, 2, 8)


@pytest.mark.parametrize("tq,tkv,is_causal", [(12, 12, True), (5, 12, True), (12, 12, False)])
def test_backends_follow_the_contract_on_any_selection(gen, path, tq, tkv, is_causal):
    # Selections the op never makes: rows without their own block, rows with nothing, later blocks.
    spec = BlockSparseSpec((tkv,), (4,), tq, is_causal)
    sel = torch.rand(2, 4, tq, 3, generator=gen) < 0.5
    sel[0, 0, 0] = False  # attends nothing: out 0, lse -inf
    sel[1, :, :, -1] = True  # later blocks: only their keys up to the query's position count
    q, k, v = rand(gen, 2, tq, 4, 4), rand(gen, 2, tkv, 2, 4), rand(gen, 2, tkv, 2, 4)
    block_of = [y // 4 for y in range(tkv)]
    want = brute_attention(q, k, v, sel, block_of, is_causal, 0.5)
    for module in (reference, cpu):
        inputs = [x.clone().requires_grad_(True) for x in (q, k, v)]
        with glocal.config.nan_poisoning(True):
            out, lse = module.run(spec, {"q": inputs[0], "k": inputs[1], "v": inputs[2], "selection": sel}, 0.5)
        assert out[0, 0, 0].abs().max() == 0 and lse[0, 0, 0] == -math.inf
        attended = torch.isfinite(want[1])
        assert_close(out, want[0], 1e-12)
        assert torch.equal(torch.isfinite(lse), attended) and assert_close(lse[attended], want[1][attended], 1e-12) is None
        grads = torch.autograd.grad((out * out).sum() + lse[attended].sum(), inputs)
        if module is reference:
            ref_grads = grads
        else:
            for a, b in zip(grads, ref_grads):
                assert_close(a, b, 1e-12)


@pytest.mark.parametrize("tq,tkv,hq,hkv,dv,is_causal,layout", [
    (1, 70, 4, 2, 8, True, "heads-last"), (3, 70, 2, 2, 5, True, "heads-first"), (6, 41, 3, 1, 8, False, "heads-last"),
])
def test_compiled_decoding_kernel_follows_the_contract(gen, monkeypatch, tq, tkv, hq, hkv, dv, is_causal, layout):
    # The compiled row kernel (float32, no gradients) reads the cache in place, whatever its strides.
    if cpu.kernels() is None:
        pytest.skip("compiled kernels unavailable here")
    taken = []
    real = cpu._compiled_rows
    monkeypatch.setattr(cpu, "_compiled_rows", lambda *a: taken.append(1) or real(*a))
    size, n = 8, -(-tkv // 8)
    spec = BlockSparseSpec((tkv,), (size,), tq, is_causal)
    sel = torch.rand(2, hq, tq, n, generator=gen) < 0.4
    sel[0, 0, 0] = False  # attends nothing
    q = rand(gen, 2, tq, hq, 8, dtype=torch.float32)
    k, v = rand(gen, 2, tkv, hkv, 8, dtype=torch.float32), rand(gen, 2, tkv, hkv, dv, dtype=torch.float32)
    if layout == "heads-first":  # a cache stored [B, H, T, D], seen heads-last through a transposed view
        k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (k, v))
    want = brute_attention(q.double(), k.double(), v.double(), sel, [y // size for y in range(tkv)], is_causal, 0.5)
    with torch.no_grad(), glocal.config.nan_poisoning(True):
        out, lse = cpu.run(spec, {"q": q, "k": k, "v": v, "selection": sel}, 0.5)
        with glocal.config.cpu_kernels(False):
            out_py, lse_py = cpu.run(spec, {"q": q, "k": k, "v": v, "selection": sel}, 0.5)
    assert taken and out.dtype == torch.float32
    attended = torch.isfinite(want[1])
    assert out[0, 0, 0].abs().max() == 0 and lse[0, 0, 0] == -math.inf
    assert torch.equal(torch.isfinite(lse), attended)
    assert_close(out.double(), want[0], 1e-5)
    assert_close(lse[attended].double(), want[1][attended], 1e-5)
    assert_close(out.double(), out_py.double(), 1e-5)


def test_row_gather_only_where_its_copies_stay_small():
    # The row path copies each query row's blocks: right for decoding, wrong for a prefill of many queries
    # (256 queries x 2 heads over 4 blocks of 64 gathered 16 MiB of copies of a 32 KiB key set).
    from glocal.backends.cpu import block_sparse as cpu_block_sparse
    from glocal.spec import BlockSparseSpec

    def uses_rows(tq, tkv, heads=2, dim=16):
        spec = BlockSparseSpec((tkv,), (64,), tq, False, 4, None)
        selection = torch.ones(1, heads, tq, -(-tkv // 64), dtype=torch.bool)
        lay = cpu_block_sparse._Layout(1, tq, tkv, heads, heads, False, 0.25, False)
        return cpu_block_sparse._use_row_path(spec, selection, lay, 2 * dim)

    assert uses_rows(1, 20000) and uses_rows(4, 4096)
    assert not uses_rows(256, 256)
