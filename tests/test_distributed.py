"""glocal.distributed: context-parallel ops on 2 and 4 gloo processes against the single-process ops.

The multi-process part spawns one process group per world size (tests/distributed_cases.py runs every
scenario in it, seeded) and asserts on what each rank reports: outputs and every gradient, bytes sent,
shard / gather / wrap, and the errors of bad inputs on one rank (every rank raises, none hangs: the
launcher kills the group after a timeout). The rest runs in this process: the halo plans against the
single-device op (no messages), the ring schedule's coverage and balance, and the errors a single
rank can see.
"""

from __future__ import annotations

import random

import distributed_cases
import pytest
import torch
import torch.distributed as dist
from conftest import raises, sweep_size

import glocal
import glocal.distributed as gd
from glocal.distributed import halo
from glocal.distributed.launch import run_local
from glocal.distributed.ring import ring_blocks, ring_flops
from glocal.spec import make_neighborhood_spec

TOLERANCE = {"torch.float64": 1e-10, "torch.float32": 1e-4}  # DESIGN.md §4 (errors relative to the largest value)


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"{w}ranks")
def ranks(request):
    """What every rank of a ``world``-process gloo group reported (one list entry per rank)."""
    world = request.param
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GLOCAL_SWEEP", str(sweep_size(10)))  # the ranks read it: cases per op
        return world, run_local(distributed_cases.everything, world, (1234 + world,), timeout=240)


def _assert_cases(reports, scenario, prefix=""):
    checked = 0
    for rank, report in enumerate(reports):
        for name, case in report[scenario].items():
            if not str(name).startswith(prefix) or not isinstance(case, dict) or "errors" not in case:
                continue
            bad = {k: e for k, e in case["errors"].items() if not e <= TOLERANCE[case["dtype"]]}
            assert not bad, f"rank {rank}, case {name} ({case['dtype']}, {case['config']}): errors {bad}"
            checked += 1
    assert checked >= 2 * len(reports)


def test_neighborhood_matches_single_process(ranks):
    _assert_cases(ranks[1], "halo")


def test_ring_matches_single_process(ranks):
    _assert_cases(ranks[1], "sequences", "ring")


def test_linear_matches_single_process(ranks):
    _assert_cases(ranks[1], "sequences", "linear")


def test_agreement_takes_one_small_all_gather_unless_something_differs(ranks):
    world, reports = ranks
    for report in reports:
        agreement = report["agreement"]
        assert agreement["fast_path_objects"] == 0  # gather, halo and ring agreed without pickling
        assert agreement["mismatch_objects"] == 1
        assert "every rank must pass the same options (is_causal, scale, layout, return_lse)" in agreement["mismatch"]
        assert "rank 0: (False, None, 'zigzag', False), rank 1: (False, 0.5, 'zigzag', False)" in agreement["mismatch"]


def test_agreement_ints_round_trip():
    from glocal.distributed.comm import _ints, _rebuild

    value = (7, (torch.Size([1, 4, 2, 8]), (3, 5)))
    ints = _ints(value)
    assert ints == [7, 1, 4, 2, 8, 3, 5] and _rebuild(value, list(ints)) == (7, ((1, 4, 2, 8), (3, 5)))
    assert _ints((1, True)) is None and _ints((1, "a")) is None and _ints(2.0) is None


def test_subgroups_shard_independently(ranks):
    """group=: two groups of a 4-rank world each match the single-process ops on their own input."""
    world, reports = ranks
    if world < 4:
        pytest.skip("two groups need 4 ranks")
    _assert_cases(reports, "subgroups")


def test_halo_bytes_256x256_k7(ranks):
    """Rows sharded, K=7: each neighbour gets (K // 2) = 3 rows of keys and 3 of values, one message."""
    world, reports = ranks
    for rank, report in enumerate(reports):
        sent = report["halo"]["bytes"]
        neighbours = (rank > 0) + (rank < world - 1)
        assert sent["messages"] == neighbours
        assert sent["sent"] == neighbours * 2 * 3 * sent["row_bytes"]


def test_shard_and_gather(ranks):
    world, reports = ranks
    for rank, report in enumerate(reports):
        tools = report["tools"]
        for name in ("near_equal", "sizes", "zigzag"):
            assert tools[name]["roundtrip"], (rank, name)
            assert tools[name]["grad"] == 0.0 and abs(tools[name]["grad_outside"]) < 1e-12, (rank, name)
        assert tools["near_equal"]["piece"] == [2, 8, 3]
        assert tools["sizes"]["piece"][1] == (rank + 1 if rank < world - 1 else 8 * world - world * (world - 1) // 2)
        assert tools["zigzag_positions"] == [2.0 * rank, 2.0 * rank + 1, 4.0 * world - 2 - 2 * rank,
                                             4.0 * world - 1 - 2 * rank]


@pytest.mark.parametrize("model", ["na2d", "causal_ring", "linear"])
def test_wrap_matches_the_unwrapped_model(ranks, model):
    for rank, report in enumerate(ranks[1]):
        result = report["tools"][f"wrap_{model}"]
        assert result["out"] < 1e-10 and result["params"] < 1e-10, (rank, result)
        assert result["same_names"] and result["original_kept"]


def _messages(ranks, key):
    return [report["errors"][key] for report in ranks[1]]


def test_group_still_works_after_every_refusal(ranks):
    assert all(report["errors"]["after"] < 1e-5 for report in ranks[1])


def test_error_off_axis_shape_differs(ranks):
    for message in _messages(ranks, "off_axis"):
        assert "every rank must pass the same shapes of q, k and v off the sharded axis" in message
        assert "rank 1: ((1, 0, 5, 2, 4)" in message and "Shard only along the sharded axis" in message


def test_error_one_rank_refuses_its_input(ranks):
    for rank, message in enumerate(_messages(ranks, "dtype")):
        assert "q must be a floating-point tensor" in message
        assert ("rank 1 of" in message and "refused its input, so every rank stops" in message) == (rank != 1)


def test_error_empty_slab(ranks):
    for message in _messages(ranks, "empty_slab"):
        assert "every rank must hold at least one position along spatial axis 0" in message
        assert "(ranks [1] hold none)" in message and "glocal.distributed.shard" in message


def test_error_kernel_larger_than_the_global_grid(ranks):
    world = ranks[0]
    for message in _messages(ranks, "kernel_too_big"):
        assert "kernel_size * dilation must not exceed the input length" in message
        assert f"spatial shape=({4 * world}, 6)" in message  # the global grid, not the slab


def test_error_zigzag_needs_equal_even_lengths(ranks):
    for message in _messages(ranks, "zigzag_odd"):
        assert "layout='zigzag' needs every rank to hold two chunks of equal length" in message
        assert "[3, 3" in message and "layout='contiguous'" in message


def test_error_ring_options_differ(ranks):
    for message in _messages(ranks, "options"):
        assert "every rank must pass the same options (is_causal, scale, layout, return_lse)" in message
        assert "rank 0: (True," in message and "rank 1: (False," in message


def test_error_linear_options_differ(ranks):
    for message in _messages(ranks, "linear_options"):
        assert "every rank must pass the same options (feature_map, is_causal, normalize" in message


def test_error_gather_shapes_differ(ranks):
    for message in _messages(ranks, "gather_shapes"):
        assert "every rank must pass the same shape off the gathered axis and dtype" in message


def test_error_shard_axis_too_short(ranks):
    world = ranks[0]
    for message in _messages(ranks, "shard_short"):
        assert f"an axis of length {world - 1} cannot give each of {world} ranks a position" in message


def test_error_wrap_zigzag_neighborhood(ranks):
    for message in _messages(ranks, "wrap_zigzag_na"):
        assert "NeighborhoodAttention1D shards a grid into contiguous slabs; got layout='zigzag'" in message


def test_error_wrap_nothing_to_shard(ranks):
    for message in _messages(ranks, "wrap_nothing"):
        assert message.startswith("TypeError: glocal.distributed.wrap shards attention modules")
        assert "got a Linear, which holds none" in message


def test_error_wrapped_module_input(ranks):
    for rank, message in enumerate(_messages(ranks, "wrap_input")):
        assert "the last axis of x must have the module's dim channels; got x.shape[-1]=9" in message
        assert ("refused its input" in message) == (rank != 1)


# --- the launcher -----------------------------------------------------------------------------------------------

def test_launcher_reports_a_rank_error():
    with pytest.raises(RuntimeError, match="rank 1 of 2 raised") as err:
        run_local(distributed_cases.fails_on_rank_one, 2, timeout=60)
    assert "ZeroDivisionError: division by zero" in str(err.value)  # the rank's own traceback


def test_launcher_kills_ranks_that_hang():
    with raises(TimeoutError, "the 2 ranks did not finish within 6 s", "all were killed"):
        run_local(distributed_cases.hangs, 2, timeout=6)


# --- in this process: plans, schedules and single-rank errors ------------------------------------------------------

def _random_axis(rng):
    length = rng.randint(4, 30)
    k = rng.randint(1, min(7, length))
    d = rng.randint(1, max(1, length // k))
    return (length, k, rng.randint(1, k), d, rng.random() < 0.4)


def _cuts(length, world, rng):
    cuts = sorted(rng.sample(range(1, length), world - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, length])]


@pytest.mark.parametrize("seed", range(sweep_size(40)))
def test_halo_plan_reproduces_the_global_op(seed):
    """Every rank's plan, run on the global tensors with every row it does not receive zeroed, gives its
    slab of the global output; its messages are the rows it needs, each sent by the rank that holds it."""
    rng = random.Random(seed)
    world = rng.choice([2, 3, 4])
    axis = _random_axis(rng)
    while axis[0] < world:
        axis = _random_axis(rng)
    other = rng.randint(1, 5)
    lengths = tuple(_cuts(axis[0], world, rng))
    spec = make_neighborhood_spec((axis[0], other), (axis[1], 1), (axis[2], 1), (axis[3], 1), (axis[4], False))
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, axis[0], other, 1, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    options = (spec.kernel_size, spec.stride, spec.dilation, spec.is_causal)
    want = glocal.neighborhood_attention(q, k, v, *options)
    plans = halo.halo_plan(lengths, spec.axis(0))
    for rank, plan in enumerate(plans):
        sends, recvs = halo.messages(plans, rank)
        pieces = sorted((start, start + n) for _, start, n in recvs)
        joined = []
        for a, b in pieces:  # contiguous pieces from several ranks join into one range
            if joined and joined[-1][1] == a:
                joined[-1] = (joined[-1][0], b)
            else:
                joined.append((a, b))
        assert joined == [r for r in ((plan.recv_lo, plan.lo), (plan.hi, plan.recv_hi)) if r[1] > r[0]]
        for src, start, n in recvs:
            assert sum(lengths[:src]) <= start and start + n <= sum(lengths[:src + 1])
            assert (rank, start, n) in halo.messages(plans, src)[0]
        known = torch.zeros(axis[0], dtype=torch.bool)
        known[plan.recv_lo:plan.recv_hi] = True
        k_seen, v_seen = (torch.where(known[None, :, None, None, None], t, torch.zeros_like(t)) for t in (k, v))
        rows = [c.q_lo for c in plan.chunks] + [plan.chunks[-1].q_hi]
        assert rows[0] == plan.lo and rows[-1] == plan.hi and rows == sorted(rows)
        for chunk in plan.chunks:
            assert plan.ext_lo <= chunk.slab_lo and chunk.slab_hi <= plan.ext_hi
            assert chunk.local == (plan.lo <= chunk.slab_lo and chunk.slab_hi <= plan.hi)
            cut = slice(chunk.slab_lo, chunk.slab_hi)
            got = glocal.neighborhood_attention(q[:, cut], k_seen[:, cut], v_seen[:, cut], *options)
            start = chunk.q_lo - chunk.slab_lo
            torch.testing.assert_close(got[:, start:start + chunk.q_hi - chunk.q_lo], want[:, chunk.q_lo:chunk.q_hi],
                                       rtol=0, atol=1e-12, msg=f"axis {axis}, lengths {lengths}, rank {rank}")


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("layout", ["zigzag", "contiguous"])
def test_ring_blocks_cover_the_causal_mask_once(world, layout):
    chunk = 3
    local = 2 * chunk if layout == "zigzag" else 5
    length = world * local
    if layout == "zigzag":
        positions = [[*range(r * chunk, (r + 1) * chunk), *range((2 * world - 1 - r) * chunk, (2 * world - r) * chunk)]
                     for r in range(world)]
    else:
        positions = [list(range(r * local, (r + 1) * local)) for r in range(world)]
    count = torch.zeros(length, length, dtype=torch.int64)
    for rank in range(world):
        for src in range(world):
            for q_lo, q_hi, kv_lo, kv_hi, causal in ring_blocks(rank, src, local, local, True, layout):
                for i in range(q_lo, q_hi):
                    for j in range(kv_lo, kv_hi):
                        if not causal or j <= i:
                            count[positions[rank][i], positions[src][j]] += 1
    assert torch.equal(count, torch.ones(length, length, dtype=torch.int64).tril())


def test_ring_causal_zigzag_is_balanced():
    """The issue's target: over 4 ranks, the busiest rank's attention FLOPs within 10 % of the least busy."""
    for world, local in ((4, 1024), (4, 2), (8, 64)):
        flops = [ring_flops(r, world, local, local, True, "zigzag", 1, 8, 64, 64) for r in range(world)]
        assert max(flops) <= 1.1 * min(flops), flops
        total = 2 * 128 * 8 * (world * local) * (world * local + 1) // 2
        assert sum(flops) == total  # every causal pair scored once
    contiguous = [ring_flops(r, 4, 1024, 1024, True, "contiguous", 1, 8, 64, 64) for r in range(4)]
    assert max(contiguous) > 5 * min(contiguous)  # what the zigzag layout is for


def test_error_no_process_group():
    assert not dist.is_initialized()
    q = torch.zeros(1, 8, 2, 4)
    with raises(ValueError, "glocal.distributed needs an initialised process group",
                "torch.distributed.is_initialized() is False", "init_process_group"):
        gd.ring_attention(q, q, q)


@pytest.fixture(scope="module")
def one_rank():
    """A one-process gloo group in this process, for errors one rank sees on its own."""
    from glocal.distributed.launch import _free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_one_rank_is_the_single_process_op(one_rank):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 9, 7, 2, 4, generator=gen)
    torch.testing.assert_close(gd.neighborhood_attention(x, x, x, kernel_size=(3, 5), shard_dim=1),
                               glocal.neighborhood_attention(x, x, x, kernel_size=(3, 5)))
    s = torch.randn(1, 10, 2, 4, generator=gen)
    torch.testing.assert_close(gd.ring_attention(s, s, s, is_causal=True), glocal.attention(s, s, s, is_causal=True))


def test_error_shard_dim_not_a_spatial_axis(one_rank):
    x = torch.zeros(1, 6, 6, 2, 4)
    with raises(ValueError, "shard_dim must be a spatial axis of the 2-D grid, 0 <= shard_dim < 2",
                "got shard_dim=2", "(0 for the first, after the batch axis)"):
        gd.neighborhood_attention(x, x, x, kernel_size=3, shard_dim=2)


def test_error_unknown_layout(one_rank):
    q = torch.zeros(1, 4, 2, 4)
    with raises(ValueError, "layout must be one of ['contiguous', 'zigzag']", "got layout='ring'"):
        gd.ring_attention(q, q, q, is_causal=True, layout="ring")


def test_error_causal_cross_attention(one_rank):
    q, k = torch.zeros(1, 4, 2, 4), torch.zeros(1, 6, 2, 4)
    with raises(ValueError, "causal ring attention shards one sequence", "got T_q=4, T_kv=6",
                "Pass is_causal=False for cross attention"):
        gd.ring_attention(q, k, k, is_causal=True, layout="contiguous")


def test_error_shard_sizes(one_rank):
    with raises(ValueError, "sizes must give every one of the 1 ranks at least one position and sum to the axis "
                "length 5", "got sizes=[2, 3]", "sizes=None for near-equal slabs"):
        gd.shard(torch.zeros(1, 5, 2), 1, sizes=[2, 3])


def test_error_zigzag_shard_length(one_rank):
    with raises(ValueError, "layout='zigzag' cuts the axis into 2 x world = 2 equal chunks", "got length 5",
                "Pad the sequence to a multiple of 2"):
        gd.shard(torch.zeros(1, 5, 2), 1, layout="zigzag")


def test_error_shard_dim_out_of_range(one_rank):
    with raises(ValueError, "dim must be an axis of x, -3 <= dim < 3", "got dim=3", "dim=1"):
        gd.gather(torch.zeros(1, 5, 2), 3)


def test_shard_leaves_the_input_alone(one_rank):
    x = torch.arange(10.0).reshape(1, 10, 1)
    before = x.clone()
    assert torch.equal(gd.gather(gd.shard(x, 1), 1), x) and torch.equal(x, before)
