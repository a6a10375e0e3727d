"""glocal.masks: dense masks against the brute-force key sets, mask_mods inside FlexAttention."""

from __future__ import annotations

import functools
import random
import warnings

import bruteforce
import pytest
import torch
from conftest import sweep_size

import glocal
from glocal.masks import (
    and_masks,
    causal_mask_mod,
    dense_mask,
    grid_coords,
    mask_mod_for,
    neighborhood_mask_mod,
    or_masks,
)
from glocal.spec import AttentionSpec, make_neighborhood_spec


def spec_of(cfg):
    return make_neighborhood_spec(cfg["spatial"], cfg["kernel"], cfg["stride"], cfg["dilation"], cfg["causal"])


def test_dense_mask_matches_bruteforce_key_sets():
    # Masks are cheap, so one test walks the whole seeded sweep (seeds shared with test_reference).
    for seed in range(sweep_size(300)):
        cfg = bruteforce.random_problem(random.Random(seed))
        want = bruteforce.dense_mask(cfg["spatial"], cfg["kernel"], cfg["stride"], cfg["dilation"], cfg["causal"])
        got = dense_mask(spec_of(cfg))
        assert got.dtype == torch.bool and got.shape == want.shape, cfg
        assert torch.equal(got, want), (cfg, (got != want).nonzero()[:5].tolist())


@pytest.mark.parametrize("seed", [3, 17, 42])
def test_mask_mod_on_python_ints(seed):
    # The same predicate must work on plain ints (axis_window's int path), not only on tensors.
    cfg = bruteforce.random_problem(random.Random(seed))
    spec = spec_of(cfg)
    mm = neighborhood_mask_mod(spec)
    dense = dense_mask(spec)
    n = spec.num_tokens
    for q_idx in range(n):
        for kv_idx in range(n):
            assert bool(mm(0, 0, q_idx, kv_idx)) == bool(dense[q_idx, kv_idx]), (cfg, q_idx, kv_idx)


def test_grid_coords_are_row_major():
    flat = torch.arange(3 * 4 * 5)
    coords = grid_coords(flat, (3, 4, 5))
    want = torch.unravel_index(flat, (3, 4, 5))
    for got, w in zip(coords, want):
        assert torch.equal(got, w)


def test_causal_mask_is_bottom_right_aligned():
    got = dense_mask(causal_mask_mod(3, 5), shape=(3, 5))
    want = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(got, want)
    assert torch.equal(dense_mask(AttentionSpec(3, 5, True)), want)
    # T_q > T_kv: the first rows see nothing.
    assert dense_mask(AttentionSpec(5, 3, True)).sum(-1).tolist() == [0, 0, 1, 2, 3]


def test_non_causal_attention_spec_has_no_mask():
    assert mask_mod_for(AttentionSpec(4, 6, False)) is None
    assert dense_mask(AttentionSpec(4, 6, False)).all()
    assert dense_mask(AttentionSpec(4, 6, False)).shape == (4, 6)


def test_and_or_masks():
    spec = make_neighborhood_spec((9,), kernel_size=3)
    local = neighborhood_mask_mod(spec)
    causal = causal_mask_mod(9, 9)
    want_local = bruteforce.dense_mask((9,), (3,), (1,), (1,), (False,))
    want_causal = torch.ones(9, 9, dtype=torch.bool).tril()
    assert torch.equal(dense_mask(and_masks(local, causal), shape=(9, 9)), want_local & want_causal)
    assert torch.equal(dense_mask(or_masks(local, causal), shape=(9, 9)), want_local | want_causal)
    # A single mask_mod is returned unchanged in meaning.
    assert torch.equal(dense_mask(and_masks(local), shape=(9, 9)), want_local)


def test_dense_mask_of_mask_mod_needs_shape():
    with pytest.raises(ValueError, match=r"needs shape=\(N_q, N_kv\)"):
        dense_mask(causal_mask_mod(3, 3))


def test_mask_mod_for_rejects_other_objects():
    with pytest.raises(TypeError, match="NeighborhoodSpec or AttentionSpec; got int"):
        mask_mod_for(3)


@functools.cache
def _flex_or_reason():
    """(torch's FlexAttention module, None), or (None, why it cannot run on the CPU here). Probed once."""
    try:
        from torch.nn.attention import flex_attention as flex

        # A trivial mask_mod, so a failure of glocal's own mask_mod is a test failure, not a skip.
        mask = flex.create_block_mask(lambda b, h, q, kv: kv <= q, None, None, 4, 4, device="cpu", BLOCK_SIZE=1)
        x = torch.zeros(1, 1, 4, 8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # flex without torch.compile warns that it is unfused
            flex.flex_attention(x, x, x, block_mask=mask)
    except Exception as err:  # noqa: BLE001 - older torch, or a build that cannot run flex on the CPU
        return None, f"FlexAttention's create_block_mask/flex_attention do not run on the CPU here: {err!r}"
    return flex, None


def _flex():
    flex, reason = _flex_or_reason()
    if flex is None:
        pytest.skip(reason)
    return flex


FLEX_SPECS = [
    ((23,), 5, 2, 3, True),
    ((5, 7), (3, 4), (2, 1), (1, 1), (False, True)),
    ((3, 4, 5), (3, 2, 2), (1, 2, 1), (1, 2, 2), (True, False, False)),
]


@pytest.mark.parametrize("spatial, kernel, stride, dilation, causal", FLEX_SPECS)
def test_mask_mod_in_create_block_mask(spatial, kernel, stride, dilation, causal):
    create_block_mask = _flex().create_block_mask
    spec = make_neighborhood_spec(spatial, kernel, stride, dilation, causal)
    n = spec.num_tokens
    want = bruteforce.dense_mask(spec.spatial, spec.kernel_size, spec.stride, spec.dilation, spec.is_causal)
    mm = neighborhood_mask_mod(spec)
    # BLOCK_SIZE=1: the block mask is the token mask.
    token_blocks = create_block_mask(mm, None, None, n, n, device="cpu", BLOCK_SIZE=1)
    assert torch.equal(token_blocks.to_dense()[0, 0].bool(), want)
    # A real block size: a block is listed iff any token pair inside it is attended.
    block = 8
    blocks = create_block_mask(mm, None, None, n, n, device="cpu", BLOCK_SIZE=block)
    nb = -(-n // block)
    padded = torch.zeros(nb * block, nb * block, dtype=torch.bool)
    padded[:n, :n] = want
    want_blocks = padded.reshape(nb, block, nb, block).any(3).any(1)
    assert torch.equal(blocks.to_dense()[0, 0].bool(), want_blocks)


@pytest.mark.parametrize("spatial, kernel, stride, dilation, causal", FLEX_SPECS[:2])
def test_mask_mod_in_flex_attention_matches_reference(gen, spatial, kernel, stride, dilation, causal):
    flex = _flex()
    spec = make_neighborhood_spec(spatial, kernel, stride, dilation, causal)
    n = spec.num_tokens
    q, k, v = (torch.randn(1, *spatial, 2, 4, generator=gen) for _ in range(3))
    block_mask = flex.create_block_mask(neighborhood_mask_mod(spec), None, None, n, n, device="cpu", BLOCK_SIZE=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flex without torch.compile warns that it is unfused
        got = flex.flex_attention(*(x.flatten(1, -3).transpose(1, 2) for x in (q, k, v)), block_mask=block_mask)
    want = glocal.neighborhood_attention(q, k, v, kernel, stride, dilation, causal, backend="reference")
    torch.testing.assert_close(got.transpose(1, 2).reshape(want.shape), want, rtol=0, atol=1e-5)
