"""The reference backend against the independent brute-force loop (DESIGN.md §4)."""

from __future__ import annotations

import random

import bruteforce
import pytest
import torch
from conftest import sweep_size

import glocal

SWEEP = sweep_size(300)
# float64 on both sides: any difference beyond rounding is a semantic mismatch.
TOL = dict(rtol=1e-10, atol=1e-10)


def make_tensors(cfg: dict, seed: int):
    gen = torch.Generator().manual_seed(seed)
    b, grid = cfg["batch"], cfg["spatial"]

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q = randn(b, *grid, cfg["heads_q"], cfg["dim_qk"])
    k = randn(b, *grid, cfg["heads_kv"], cfg["dim_qk"])
    v = randn(b, *grid, cfg["heads_kv"], cfg["dim_v"])
    ak = av = None
    if cfg["extra"]:
        ak = randn(b, cfg["extra"], cfg["heads_kv"], cfg["dim_qk"])
        av = randn(b, cfg["extra"], cfg["heads_kv"], cfg["dim_v"])
    return q, k, v, ak, av


@pytest.mark.parametrize("seed", range(SWEEP))
def test_reference_matches_bruteforce(seed):
    cfg = bruteforce.random_problem(random.Random(seed))
    q, k, v, ak, av = make_tensors(cfg, seed)
    out, lse = glocal.neighborhood_attention(
        q, k, v, kernel_size=cfg["kernel"], stride=cfg["stride"], dilation=cfg["dilation"],
        is_causal=cfg["causal"], scale=cfg["scale"], additional_keys=ak, additional_values=av,
        return_lse=True, backend="reference",
    )
    scale = cfg["dim_qk"] ** -0.5 if cfg["scale"] is None else cfg["scale"]
    want_out, want_lse = bruteforce.neighborhood_attention(
        q, k, v, cfg["kernel"], cfg["stride"], cfg["dilation"], cfg["causal"], scale, ak, av)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64, cfg
    torch.testing.assert_close(out, want_out, **TOL, msg=lambda m: f"{cfg}\n{m}")
    torch.testing.assert_close(lse, want_lse, **TOL, msg=lambda m: f"{cfg}\n{m}")


def test_sweep_covers_the_required_cases():
    """The seeded sweep really contains every case the issue asks for (else the sweep above proves less)."""
    cfgs = [bruteforce.random_problem(random.Random(seed)) for seed in range(max(SWEEP, 300))]
    axes = [(cfg, i) for cfg in cfgs for i in range(len(cfg["spatial"]))]
    seen = {
        "1-D": any(len(c["spatial"]) == 1 for c in cfgs),
        "2-D": any(len(c["spatial"]) == 2 for c in cfgs),
        "3-D": any(len(c["spatial"]) == 3 for c in cfgs),
        "prime length > 7": any(c["spatial"][i] in bruteforce.PRIMES and c["spatial"][i] > 7 for c, i in axes),
        "K*d = L": any(c["kernel"][i] * c["dilation"][i] == c["spatial"][i] > 1 for c, i in axes),
        "odd K > 1": any(c["kernel"][i] % 2 == 1 and c["kernel"][i] > 1 for c, i in axes),
        "even K": any(c["kernel"][i] % 2 == 0 for c, i in axes),
        "1 < s < K": any(1 < c["stride"][i] < c["kernel"][i] for c, i in axes),
        "s = K > 1": any(c["stride"][i] == c["kernel"][i] > 1 for c, i in axes),
        "dilation > 1": any(c["dilation"][i] > 1 for c, i in axes),
        "causal + stride + dilation": any(
            c["causal"][i] and c["stride"][i] > 1 and c["dilation"][i] > 1 for c, i in axes),
        "mixed causal axes": any(len(set(c["causal"])) == 2 for c in cfgs),
        "GQA": any(c["heads_q"] > c["heads_kv"] > 1 for c in cfgs),
        "MQA": any(c["heads_q"] > c["heads_kv"] == 1 for c in cfgs),
        "D_v != D_qk": any(c["dim_v"] != c["dim_qk"] for c in cfgs),
        "extra keys/values": any(c["extra"] for c in cfgs),
        "explicit scale 0.0": any(c["scale"] == 0.0 for c in cfgs),
    }
    assert all(seen.values()), [name for name, ok in seen.items() if not ok]


@pytest.mark.parametrize("seed", range(sweep_size(40)))
def test_reference_attention_matches_bruteforce(seed):
    rng = random.Random(10_000 + seed)
    gen = torch.Generator().manual_seed(seed)
    b, t_q, t_kv = rng.choice((1, 2)), rng.randint(1, 12), rng.randint(1, 12)
    h_kv = rng.choice((1, 2))
    h_q = h_kv * rng.choice((1, 2, 3))
    d_qk, d_v = rng.randint(1, 6), rng.randint(1, 6)
    causal = rng.random() < 0.6
    scale = rng.choice((None, 0.5, 1.3))
    q = torch.randn(b, t_q, h_q, d_qk, generator=gen, dtype=torch.float64)
    k = torch.randn(b, t_kv, h_kv, d_qk, generator=gen, dtype=torch.float64)
    v = torch.randn(b, t_kv, h_kv, d_v, generator=gen, dtype=torch.float64)
    out, lse = glocal.attention(q, k, v, is_causal=causal, scale=scale, return_lse=True, backend="reference")
    want_out, want_lse = bruteforce.attention(q, k, v, causal, d_qk ** -0.5 if scale is None else scale)
    torch.testing.assert_close(out, want_out, **TOL)
    torch.testing.assert_close(lse, want_lse, **TOL)


# Key sets worked out by hand from DESIGN.md §1, so the brute force is itself checked
# against the text and not only against the reference (two copies of one mistake would agree).
@pytest.mark.parametrize(
    "length, kernel, stride, dilation, causal, query, keys",
    [
        (7, 3, 1, 1, False, 0, [0, 1, 2]),  # shifted inward at the left border
        (7, 3, 1, 1, False, 3, [2, 3, 4]),
        (7, 3, 1, 1, False, 6, [4, 5, 6]),  # shifted inward at the right border
        (8, 4, 1, 1, False, 4, [2, 3, 4, 5]),  # even K: one key fewer on the right
        (8, 4, 2, 1, False, 0, [0, 1, 2, 3]),  # lead 1, centre clamped to left = 2
        (8, 4, 2, 1, False, 2, [1, 2, 3, 4]),  # lead 3 for the stride group {2, 3}
        (8, 4, 2, 1, False, 3, [1, 2, 3, 4]),
        (8, 4, 2, 1, False, 7, [4, 5, 6, 7]),
        (7, 3, 1, 2, False, 0, [0, 2, 4]),  # group 0 = {0, 2, 4, 6}
        (7, 3, 1, 2, False, 5, [1, 3, 5]),  # group 1 = {1, 3, 5} has exactly K keys
        (7, 2, 1, 2, False, 6, [4, 6]),
        (8, 3, 2, 1, True, 0, [0]),  # causal: lead 1, but never a key after the query
        (8, 3, 2, 1, True, 1, [0, 1]),
        (8, 3, 2, 1, True, 2, [1, 2]),  # lead 3: keys max(0, 3 - 3 + 1) .. 2
        (8, 3, 2, 1, True, 3, [1, 2, 3]),
        (9, 2, 1, 3, True, 7, [4, 7]),  # group 1 = {1, 4, 7}
        (5, 5, 1, 1, True, 4, [0, 1, 2, 3, 4]),
    ],
)
def test_bruteforce_axis_keys_by_hand(length, kernel, stride, dilation, causal, query, keys):
    assert bruteforce.axis_keys(query, length, kernel, stride, dilation, causal) == keys


def test_bruteforce_key_set_is_row_major_product():
    # 2-D (3, 4) grid, K=(1, 2): query (1, 2) sees (1, 1) and (1, 2) → flat 5, 6.
    assert bruteforce.key_set((1, 2), (3, 4), (1, 2), (1, 1), (1, 1), (False, False)) == [5, 6]
    # K=(3, 1): query (0, 3) sees (0, 3), (1, 3), (2, 3) → flat 3, 7, 11.
    assert bruteforce.key_set((0, 3), (3, 4), (3, 1), (1, 1), (1, 1), (False, False)) == [3, 7, 11]
