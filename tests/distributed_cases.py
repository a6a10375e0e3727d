"""What each rank runs in tests/test_distributed.py: seeded cases against the single-process ops.

Every rank builds the same full tensors from a seed, computes the single-process result and its
gradients, then the context-parallel op on its shard, and reports the largest error per case
(relative to the largest reference value) or the message of the error it raised. The parent
process asserts on what the ranks report.
"""

from __future__ import annotations

import os
import random

import torch

import glocal
import glocal.distributed as gd


def _error(got, want) -> float:
    got, want = got.detach(), want.detach()
    scale = max(float(want.abs().max()), 1.0) if want.numel() else 1.0
    return float((got.double() - want.double()).abs().max()) / scale if want.numel() else 0.0


def _cuts(length: int, world: int, rng: random.Random) -> list[int]:
    """Unequal slab lengths (each >= 1) summing to ``length``."""
    cuts = sorted(rng.sample(range(1, length), world - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, length])]


def _compare(full_inputs, sharded, reference, distributed, upstream, rank):
    """Max errors of outputs and gradients. ``sharded[name]`` maps a full input to this rank's part (None:
    replicated); ``sharded["out"]`` holds one such map per output. A replicated output (a returned state)
    gets its upstream gradient on rank 0 only: each rank's loss is one term of the global loss."""
    full_inputs = {name: x.detach().requires_grad_() for name, x in full_inputs.items()}
    ref_out = reference(*full_inputs.values())
    loss = sum((o * g).sum() for o, g in zip(ref_out, upstream))
    ref_grads = torch.autograd.grad(loss, list(full_inputs.values()))
    local = {name: (x if sharded[name] is None else sharded[name](x)).detach().clone().requires_grad_()
             for name, x in full_inputs.items()}
    out = distributed(*local.values())
    cuts = sharded["out"]
    loss = sum((o * (g if cut is None else cut(g))).sum() * (1.0 if cut is not None or rank == 0 else 0.0)
               for o, g, cut in zip(out, upstream, cuts))
    loss.backward()
    errors = {f"out{i}": _error(o, w if cut is None else cut(w))
              for i, (o, w, cut) in enumerate(zip(out, ref_out, cuts))}
    for (name, x), g in zip(local.items(), ref_grads):
        want = g if sharded[name] is None else sharded[name](g)
        errors[f"d{name}"] = _error(x.grad, want) if x.grad is not None else float("nan")
    return errors


def _halo_case(rank, world, rng, dtype):
    ndim = rng.choice([1, 2, 2, 3])
    axis = rng.randrange(ndim)
    shape = [rng.randint(3, 9) for _ in range(ndim)]
    shape[axis] = rng.randint(max(world, 6), 24)
    kernel = [rng.randint(1, min(5, n)) for n in shape]
    dilation = [rng.randint(1, max(1, n // k)) for n, k in zip(shape, kernel)]
    stride = [rng.randint(1, k) for k in kernel]
    causal = [rng.random() < 0.35 for _ in range(ndim)]
    hkv = rng.choice([1, 2])
    hq, d, dv = hkv * rng.choice([1, 2]), rng.choice([4, 8]), rng.choice([4, 6])
    extra = rng.random() < 0.3
    sizes = _cuts(shape[axis], world, rng)
    batch = rng.choice([1, 2])
    gen = torch.Generator().manual_seed(rng.randrange(2**31))

    def rand(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype)

    inputs = {"q": rand(batch, *shape, hq, d), "k": rand(batch, *shape, hkv, d), "v": rand(batch, *shape, hkv, dv)}
    if extra:
        s = rng.randint(1, 4)
        inputs["ek"], inputs["ev"] = rand(batch, s, hkv, d), rand(batch, s, hkv, dv)
    upstream = (rand(batch, *shape, hq, dv), rand(batch, *shape, hq).to(torch.float64 if dtype == torch.float64
                                                                         else torch.float32))
    offset = sum(sizes[:rank])

    def part(x):
        return x.narrow(1 + axis, offset, sizes[rank])

    sharded = {"q": part, "k": part, "v": part, "out": (part, part), "ek": None, "ev": None}
    options = dict(kernel_size=kernel, stride=stride, dilation=dilation, is_causal=causal)

    def reference(q, k, v, ek=None, ev=None):
        return glocal.neighborhood_attention(q, k, v, additional_keys=ek, additional_values=ev, return_lse=True,
                                             **options)

    def distributed(q, k, v, ek=None, ev=None):
        return gd.neighborhood_attention(q, k, v, additional_keys=ek, additional_values=ev, return_lse=True,
                                         shard_dim=axis, **options)

    config = dict(shape=shape, axis=axis, sizes=sizes, hq=hq, hkv=hkv, extra=extra, **options)
    return config, _compare(inputs, sharded, reference, distributed, upstream, rank)


def halo(rank, world, seed):
    rng = random.Random(seed)
    cases = {}
    for i in range(int(os.environ.get("GLOCAL_SWEEP", "10"))):
        dtype = torch.float32 if i % 5 == 4 else torch.float64
        config, errors = _halo_case(rank, world, rng, dtype)
        cases[i] = {"config": config, "dtype": str(dtype), "errors": errors}
    # The configuration: 256 x 256, K=7, sharded by rows; bytes sent per rank.
    x = torch.randn(1, 256, 256, 1, 8, generator=torch.Generator().manual_seed(seed))
    part = gd.shard(x, 1)
    with gd.traffic() as record:
        gd.neighborhood_attention(part, part, part, kernel_size=7)
    cases["bytes"] = {"sent": record.bytes_sent, "row_bytes": 256 * 8 * 4, "messages": record.messages}
    return cases


def _seq_case(rank, world, rng, dtype, op):
    hkv = rng.choice([1, 2])
    hq, d, dv = hkv * rng.choice([1, 2]), rng.choice([4, 8]), rng.choice([4, 6])
    batch = rng.choice([1, 2])
    causal = rng.random() < 0.6
    layout = rng.choice(["zigzag", "contiguous"]) if causal and op == "ring" else "contiguous"
    length = 2 * world * rng.randint(1, 5) if layout == "zigzag" else rng.randint(world, 40)
    q_sizes = kv_sizes = [length // (2 * world) * 2] * world if layout == "zigzag" else _cuts(length, world, rng)
    kv_length = length
    if not causal and rng.random() < 0.5:  # cross attention: another sequence of keys
        kv_length = rng.randint(world, 40)
        kv_sizes = _cuts(kv_length, world, rng)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))

    def rand(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype)

    inputs = {"q": rand(batch, length, hq, d), "k": rand(batch, kv_length, hkv, d),
              "v": rand(batch, kv_length, hkv, dv)}

    def part(sizes):
        def cut(x):
            if layout == "zigzag":
                return gd.shard(x, 1, layout="zigzag")
            return x.narrow(1, sum(sizes[:rank]), sizes[rank])
        return cut

    sharded = {"q": part(q_sizes), "k": part(kv_sizes), "v": part(kv_sizes), "out": (part(q_sizes), part(q_sizes))}
    config = dict(length=length, kv_length=kv_length, causal=causal, layout=layout, hq=hq, hkv=hkv, d=d, dv=dv)
    if op == "ring":
        upstream = (rand(batch, length, hq, dv), rand(batch, length, hq).to(torch.float64 if dtype == torch.float64
                                                                             else torch.float32))

        def reference(q, k, v):
            return glocal.attention(q, k, v, is_causal=causal, return_lse=True)

        def distributed(q, k, v):
            return gd.ring_attention(q, k, v, is_causal=causal, return_lse=True, layout=layout)

        return config, _compare(inputs, sharded, reference, distributed, upstream, rank)
    feature = rng.choice(["elu1", "relu"])
    normalize = rng.random() < 0.7
    state = rng.random() < 0.5
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    if state:
        inputs["kv0"] = rand(batch, hkv, d, dv).to(compute)
        inputs["ksum0"] = rand(batch, hkv, d).abs().to(compute)
        sharded["kv0"] = sharded["ksum0"] = None
    upstream = (rand(batch, length, hq, dv), rand(batch, hkv, d, dv).to(compute), rand(batch, hkv, d).to(compute))
    sharded["out"] = (part(q_sizes), None, None)
    chunk = rng.choice([2, 4, 64])
    config.update(feature=feature, normalize=normalize, state=state, chunk=chunk)

    def reference(q, k, v, kv0=None, ksum0=None):
        out, (kv, ksum) = glocal.linear_attention(q, k, v, feature, causal, normalize, chunk_size=chunk,
                                                  initial_state=None if kv0 is None else (kv0, ksum0),
                                                  return_state=True)
        return out, kv, ksum

    def distributed(q, k, v, kv0=None, ksum0=None):
        out, (kv, ksum) = gd.linear_attention(q, k, v, feature, causal, normalize, chunk_size=chunk,
                                              initial_state=None if kv0 is None else (kv0, ksum0),
                                              return_state=True)
        return out, kv, ksum

    return config, _compare(inputs, sharded, reference, distributed, upstream, rank)


def sequences(rank, world, seed):
    rng = random.Random(seed)
    cases = {}
    n = int(os.environ.get("GLOCAL_SWEEP", "10"))
    for op in ("ring", "linear"):
        for i in range(n):
            dtype = torch.float32 if i % 5 == 4 else torch.float64
            config, errors = _seq_case(rank, world, rng, dtype, op)
            cases[f"{op}{i}"] = {"config": config, "dtype": str(dtype), "errors": errors}
    return cases


def tools(rank, world, seed):
    """shard / gather round trips and their gradients; wrap() on models against the unwrapped model."""
    gen = torch.Generator().manual_seed(seed)
    report = {}
    x = torch.randn(2, 8 * world, 3, generator=gen, dtype=torch.float64)
    sizes = list(range(1, world)) + [8 * world - world * (world - 1) // 2]
    for name, kwargs in (("near_equal", {}), ("sizes", {"sizes": sizes}), ("zigzag", {"layout": "zigzag"})):
        layout = kwargs.get("layout", "contiguous")
        full = x.clone().requires_grad_()
        weight = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        piece = gd.shard(full, 1, **kwargs)
        whole = gd.gather(piece, 1, layout=layout)
        (whole * weight).sum().backward()
        # Each rank's loss is one term of the global loss (world copies of one sum): d/dx is world x
        # the weight on this rank's piece, zero elsewhere.
        own = gd.shard(full.grad, 1, **kwargs)
        report[name] = {"piece": list(piece.shape), "roundtrip": bool(torch.equal(whole, x)),
                        "grad": _error(own, gd.shard(weight * world, 1, **kwargs)),
                        "grad_outside": float(full.grad.abs().sum() - own.abs().sum())}
    zig = gd.shard(torch.arange(4.0 * world)[None, :, None], 1, layout="zigzag").flatten().tolist()
    report["zigzag_positions"] = zig

    # wrap(): the sharded model's output and gradients against the unwrapped model on the whole input.
    torch.manual_seed(seed)
    models = {
        "na2d": (torch.nn.Sequential(torch.nn.Linear(8, 16), glocal.nn.NeighborhoodAttention2D(16, 2, kernel_size=5,
                                                                                             dilation=(2, 1)),
                                     torch.nn.LayerNorm(16)), (1, 6 * world, 9, 8), {}),
        "causal_ring": (torch.nn.Sequential(glocal.nn.Attention(16, 2, is_causal=True), torch.nn.GELU(),
                                            glocal.nn.Attention(16, 4)), (2, 4 * world, 16), {"layout": "zigzag"}),
        "linear": (torch.nn.Sequential(glocal.nn.LinearAttention(16, 2, is_causal=True, chunk_size=4)),
                   (2, 5 * world + 1, 16), {}),
    }
    for name, (model, shape, kwargs) in models.items():
        model = model.double()
        inp = torch.randn(*shape, generator=gen, dtype=torch.float64)
        upstream = torch.randn(*shape[:-1], 16, generator=gen, dtype=torch.float64)
        ref = model(inp)
        ref_grads = torch.autograd.grad((ref * upstream).sum(), list(model.parameters()))
        wrapped = gd.wrap(model, **kwargs)
        local_in = gd.shard(inp, 1, **kwargs)
        out = wrapped(local_in)
        grads = torch.autograd.grad((out * gd.shard(upstream, 1, **kwargs)).sum(), list(wrapped.parameters()))
        summed = []
        for g in grads:  # the parameter gradient of the global loss is the sum of every rank's
            g = g.contiguous().clone()
            torch.distributed.all_reduce(g)
            summed.append(g)
        report[f"wrap_{name}"] = {
            "out": _error(out, gd.shard(ref, 1, **kwargs)),
            "params": max(_error(g, w) for g, w in zip(summed, ref_grads)),
            "same_names": [n for n, _ in wrapped.named_parameters()] == [n for n, _ in model.named_parameters()],
            "original_kept": all(not isinstance(m, gd.ShardedAttention) for m in model.modules()),
        }
    return report


def _message(call):
    try:
        call()
    except (ValueError, TypeError, RuntimeError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def errors(rank, world, seed):
    """A bad input on one rank: every rank raises (the bad one its own error), none waits; the group stays usable."""
    x = torch.randn(1, 4 * world, 6, 2, 4, generator=torch.Generator().manual_seed(seed))
    part = gd.shard(x, 1)
    report = {}
    odd = part[:, :, :5] if rank == 1 else part  # rank 1's slab is narrower off the sharded axis
    report["off_axis"] = _message(lambda: gd.neighborhood_attention(odd, odd, odd, kernel_size=3))
    bad = part.to(torch.int32) if rank == 1 else part
    report["dtype"] = _message(lambda: gd.neighborhood_attention(bad, bad, bad, kernel_size=3))
    empty = part[:, :0] if rank == 1 else part
    report["empty_slab"] = _message(lambda: gd.neighborhood_attention(empty, empty, empty, kernel_size=3))
    report["kernel_too_big"] = _message(lambda: gd.neighborhood_attention(part, part, part, kernel_size=(4 * world + 1, 3)))
    seq = torch.randn(1, 3, 2, 4)
    report["zigzag_odd"] = _message(lambda: gd.ring_attention(seq, seq, seq, is_causal=True))
    report["options"] = _message(lambda: gd.ring_attention(seq, seq, seq, is_causal=rank == 0, layout="contiguous"))
    report["linear_options"] = _message(lambda: gd.linear_attention(seq, seq, seq, normalize=rank == 0))
    report["gather_shapes"] = _message(lambda: gd.gather(torch.zeros(1, 2, 3 + (rank == 1)), 1))
    report["shard_short"] = _message(lambda: gd.shard(torch.zeros(1, world - 1, 2), 1))
    report["wrap_zigzag_na"] = _message(lambda: gd.wrap(glocal.nn.NeighborhoodAttention1D(8, 2, 3), layout="zigzag"))
    report["wrap_nothing"] = _message(lambda: gd.wrap(torch.nn.Linear(2, 2)))
    report["wrap_input"] = _message(lambda: gd.wrap(glocal.nn.Attention(8, 2))(torch.zeros(1, 3, 8 + (rank == 1))))
    # After every refusal the group still works: one good call, checked against one device.
    out = gd.neighborhood_attention(part, part, part, kernel_size=3)
    report["after"] = _error(out, gd.shard(glocal.neighborhood_attention(x, x, x, kernel_size=3), 1))
    return report


def agreement(rank, world, seed):
    """How the ranks agree before an op: one small all-gather when all is well, the pickled exchange (which the
    error messages quote) only when a rank refused or the descriptions differ."""
    calls = {"object": 0}
    original = torch.distributed.all_gather_object

    def counting(*args, **kwargs):
        calls["object"] += 1
        return original(*args, **kwargs)

    torch.distributed.all_gather_object = counting
    try:
        x = torch.randn(1, 4 * world + rank, 2, 4, generator=torch.Generator().manual_seed(seed))  # unequal pieces
        gd.gather(x, 1)
        gd.neighborhood_attention(x, x, x, 3)
        seq = torch.randn(1, 4, 2, 4, generator=torch.Generator().manual_seed(seed))
        gd.ring_attention(seq, seq, seq, is_causal=True)
        fast = calls["object"]
        mismatch = _message(lambda: gd.ring_attention(seq, seq, seq, scale=0.5 if rank else None))
        return {"fast_path_objects": fast, "mismatch_objects": calls["object"] - fast, "mismatch": mismatch}
    finally:
        torch.distributed.all_gather_object = original


def subgroups(rank, world, seed):
    """Two process groups side by side (ranks 0-1 and 2..world-1), each sharding its own input with ``group=``:
    messages go to the group's members by their global ranks, collectives stay inside the group."""
    if world < 4:
        return {}
    groups = [torch.distributed.new_group([0, 1]), torch.distributed.new_group(list(range(2, world)))]
    group = groups[rank >= 2]
    sub_rank, sub_world = torch.distributed.get_rank(group), torch.distributed.get_world_size(group)
    gen = torch.Generator().manual_seed(seed + (rank >= 2))
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    piece = lambda x: gd.shard(x, 1, group=group)  # noqa: E731
    zigzag = lambda x: gd.shard(x, 1, group=group, layout="zigzag")  # noqa: E731
    grid = {"q": rand(1, 5 * sub_world, 6, 2, 4), "k": rand(1, 5 * sub_world, 6, 2, 4),
            "v": rand(1, 5 * sub_world, 6, 2, 4)}
    seq = {"q": rand(1, 8 * sub_world, 2, 4), "k": rand(1, 8 * sub_world, 2, 4), "v": rand(1, 8 * sub_world, 2, 4)}
    cases = {
        "halo": (grid, piece, lambda q, k, v: (glocal.na2d(q, k, v, (5, 3), is_causal=(True, False)),),
                 lambda q, k, v: (gd.neighborhood_attention(q, k, v, (5, 3), is_causal=(True, False), group=group),)),
        "ring": (seq, zigzag, lambda q, k, v: (glocal.attention(q, k, v, is_causal=True),),
                 lambda q, k, v: (gd.ring_attention(q, k, v, is_causal=True, group=group),)),
        "linear": (seq, piece, lambda q, k, v: (glocal.linear_attention(q, k, v, is_causal=True, chunk_size=4),),
                   lambda q, k, v: (gd.linear_attention(q, k, v, is_causal=True, chunk_size=4, group=group),)),
    }
    report = {}
    for name, (inputs, cut, reference, distributed) in cases.items():
        upstream = (rand(*inputs["q"].shape),)
        sharded = {"q": cut, "k": cut, "v": cut, "out": (cut,)}
        report[name] = {"config": {"group": 0 if rank < 2 else 1, "group_world": sub_world}, "dtype": "torch.float64",
                        "errors": _compare(inputs, sharded, reference, distributed, upstream, sub_rank)}
    return report


SCENARIOS = {"halo": halo, "sequences": sequences, "tools": tools, "errors": errors, "subgroups": subgroups, "agreement": agreement}


def fails_on_rank_one(rank, world):
    return 1 / (rank - 1)


def hangs(rank, world):
    if rank == 0:  # waits for a message rank 1 never sends
        torch.distributed.recv(torch.zeros(1), 1)


def everything(rank, world, seed):
    """Every scenario in one process group (one spawn per world size keeps the test run short)."""
    os.environ.pop("TRITON_INTERPRET", None)
    return {name: scenario(rank, world, seed) for name, scenario in SCENARIOS.items()}
