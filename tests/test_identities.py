"""The identities of DESIGN.md §1, checked against dense attention (glocal.attention and torch SDPA)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import glocal

TOL = dict(rtol=1e-10, atol=1e-10)
F64 = torch.float64


def randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=F64)


def qkv(gen, batch, grid, h_q=4, h_kv=2, d_qk=5, d_v=3):
    return (randn(gen, batch, *grid, h_q, d_qk), randn(gen, batch, *grid, h_kv, d_qk),
            randn(gen, batch, *grid, h_kv, d_v))


def sdpa(q, k, v, scale, mask=None, is_causal=False):
    """torch SDPA on heads-last sequences ``[B, T, H, D]`` (GQA by repeating kv heads)."""
    group = q.shape[-2] // k.shape[-2]
    k, v = k.repeat_interleave(group, dim=-2), v.repeat_interleave(group, dim=-2)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=is_causal, scale=scale)
    return out.transpose(1, 2)


def dense_lse(q, k, scale, mask=None):
    """logsumexp of the scaled scores of ``[B, T, H, D]`` sequences, ``[B, T_q, H]``."""
    k = k.repeat_interleave(q.shape[-2] // k.shape[-2], dim=-2)
    scores = torch.einsum("bqhd,bkhd->bqhk", q, k) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask[None, :, None, :], -math.inf)
    return scores.logsumexp(-1)


def flat(x):
    """``[B, *grid, H, D]`` → ``[B, N, H, D]`` (row-major tokens)."""
    return x.flatten(1, -3)


@pytest.mark.parametrize("grid, stride", [((13,), 5), ((4, 5), (2, 3)), ((2, 3, 4), (1, 3, 2)), ((6,), 6)])
def test_full_kernel_is_self_attention(gen, grid, stride):
    q, k, v = qkv(gen, 2, grid)
    scale = 0.7
    out, lse = glocal.neighborhood_attention(q, k, v, kernel_size=grid, stride=stride, scale=scale,
                                             return_lse=True, backend="reference")
    ref_out, ref_lse = glocal.attention(flat(q), flat(k), flat(v), scale=scale, return_lse=True, backend="reference")
    torch.testing.assert_close(flat(out), ref_out, **TOL)
    torch.testing.assert_close(lse.flatten(1, -2), ref_lse, **TOL)
    torch.testing.assert_close(flat(out), sdpa(flat(q), flat(k), flat(v), scale), **TOL)
    torch.testing.assert_close(lse.flatten(1, -2), dense_lse(flat(q), flat(k), scale), **TOL)


@pytest.mark.parametrize("grid, kernel, dilation", [((12,), 4, 3), ((6, 4), (3, 2), (2, 2)), ((9, 5), (3, 5), (3, 1))])
def test_full_kernel_with_dilation_is_attention_within_each_group(gen, grid, kernel, dilation):
    # K * d = L: every dilation group has exactly K tokens, so each query attends its whole group.
    q, k, v = qkv(gen, 1, grid)
    out, lse = glocal.neighborhood_attention(q, k, v, kernel_size=kernel, dilation=dilation, scale=0.9,
                                             return_lse=True, backend="reference")
    dil = dilation if isinstance(dilation, tuple) else (dilation,)
    for group in itertools.product(*[range(d) for d in dil]):
        index = (slice(None),) + tuple(slice(g, None, d) for g, d in zip(group, dil))
        gq, gk, gv = flat(q[index]), flat(k[index]), flat(v[index])
        torch.testing.assert_close(flat(out[index]), sdpa(gq, gk, gv, 0.9), **TOL)
        torch.testing.assert_close(lse[index].flatten(1, -2), dense_lse(gq, gk, 0.9), **TOL)


def to_blocks(x, grid, kernel):
    """``[B, *grid, H, D]`` → ``[B * n_blocks, K_1 · … · K_n, H, D]``: non-overlapping windows as sequences."""
    b, h, d = x.shape[0], x.shape[-2], x.shape[-1]
    split = [b]
    for length, kk in zip(grid, kernel):
        split += [length // kk, kk]
    x = x.reshape(*split, h, d)
    n = len(grid)
    block_axes = [1 + 2 * i for i in range(n)]
    inner_axes = [2 + 2 * i for i in range(n)]
    x = x.permute(0, *block_axes, *inner_axes, 2 * n + 1, 2 * n + 2)
    return x.reshape(-1, math.prod(kernel), h, d)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("grid, kernel", [((12,), (4,)), ((12,), (3,)), ((6, 8), (3, 4)), ((4, 6, 4), (2, 3, 2))])
def test_stride_equal_kernel_is_blocked_attention(gen, grid, kernel, is_causal):
    q, k, v = qkv(gen, 2, grid)
    scale = 0.6
    out, lse = glocal.neighborhood_attention(q, k, v, kernel_size=kernel, stride=kernel, is_causal=is_causal,
                                             scale=scale, return_lse=True, backend="reference")
    bq, bk, bv = (to_blocks(x, grid, kernel) for x in (q, k, v))
    got_out = to_blocks(out, grid, kernel)
    got_lse = to_blocks(lse[..., None], grid, kernel)[..., 0]
    if is_causal and len(grid) == 1:
        # A causal 1-D axis with s = K is causal attention inside each block.
        torch.testing.assert_close(got_out, sdpa(bq, bk, bv, scale, is_causal=True), **TOL)
        mask = torch.ones(kernel[0], kernel[0], dtype=torch.bool).tril()
        torch.testing.assert_close(got_lse, dense_lse(bq, bk, scale, mask), **TOL)
    elif not is_causal:
        torch.testing.assert_close(got_out, sdpa(bq, bk, bv, scale), **TOL)
        torch.testing.assert_close(got_lse, dense_lse(bq, bk, scale), **TOL)
    else:
        # Causal on every axis: inside a block, key c is visible iff c <= query on every axis.
        axes = torch.meshgrid(*[torch.arange(kk) for kk in kernel], indexing="ij")
        coords = torch.stack(axes, -1).reshape(-1, len(kernel))
        mask = (coords[None, :, :] <= coords[:, None, :]).all(-1)
        torch.testing.assert_close(got_out, sdpa(bq, bk, bv, scale, mask=mask), **TOL)
        torch.testing.assert_close(got_lse, dense_lse(bq, bk, scale, mask), **TOL)


@pytest.mark.parametrize("length, stride", [(1, 1), (9, 1), (9, 4), (16, 16)])
def test_causal_full_kernel_is_causal_attention(gen, length, stride):
    q, k, v = qkv(gen, 2, (length,))
    out, lse = glocal.na1d(q, k, v, kernel_size=length, stride=stride, is_causal=True, scale=0.8,
                           return_lse=True, backend="reference")
    ref_out, ref_lse = glocal.attention(q, k, v, is_causal=True, scale=0.8, return_lse=True, backend="reference")
    torch.testing.assert_close(out, ref_out, **TOL)
    torch.testing.assert_close(lse, ref_lse, **TOL)
    torch.testing.assert_close(out, sdpa(q, k, v, 0.8, is_causal=True), **TOL)
    mask = torch.ones(length, length, dtype=torch.bool).tril()
    torch.testing.assert_close(lse, dense_lse(q, k, 0.8, mask), **TOL)


@pytest.mark.parametrize("dilation", [1, 3])
def test_kernel_one_attends_only_itself(gen, dilation):
    q, k, v = qkv(gen, 1, (6, 7))
    out, lse = glocal.na2d(q, k, v, kernel_size=1, dilation=dilation, scale=1.0, return_lse=True, backend="reference")
    heads = torch.arange(q.shape[-2]) // 2  # GQA: query head h reads kv head h // 2
    torch.testing.assert_close(out, v[..., heads, :], **TOL)
    torch.testing.assert_close(lse, (q * k[..., heads, :]).sum(-1), **TOL)


@pytest.mark.parametrize("grid, kernel, causal",
                         [((11,), 3, True), ((5, 6), (3, 4), (False, True)), ((3, 4, 5), 3, False)])
def test_merge_neighborhood_and_extra_tokens(gen, grid, kernel, causal):
    q, k, v = qkv(gen, 2, grid)
    ak, av = randn(gen, 2, 3, 2, 5), randn(gen, 2, 3, 2, 3)
    both, both_lse = glocal.neighborhood_attention(q, k, v, kernel, is_causal=causal, additional_keys=ak,
                                                   additional_values=av, return_lse=True, backend="reference")
    local, local_lse = glocal.neighborhood_attention(q, k, v, kernel, is_causal=causal, return_lse=True,
                                                     backend="reference")
    extra, extra_lse = glocal.attention(flat(q), ak, av, return_lse=True, backend="reference")
    out, lse = glocal.merge_attentions([local, extra.reshape(local.shape)],
                                       [local_lse, extra_lse.reshape(local_lse.shape)])
    torch.testing.assert_close(out, both, **TOL)
    torch.testing.assert_close(lse, both_lse, **TOL)


@pytest.mark.parametrize("cuts", [(5,), (1,), (3, 9), (2, 4, 11)])
def test_merge_over_a_split_of_the_keys(gen, cuts):
    q = randn(gen, 2, 7, 4, 5)
    k, v = randn(gen, 2, 13, 2, 5), randn(gen, 2, 13, 2, 3)
    bounds = (0, *cuts, 13)
    parts = [glocal.attention(q, k[:, a:b], v[:, a:b], scale=0.5, return_lse=True, backend="reference")
             for a, b in zip(bounds, bounds[1:])]
    out, lse = glocal.merge_attentions([p[0] for p in parts], [p[1] for p in parts])
    want_out, want_lse = glocal.attention(q, k, v, scale=0.5, return_lse=True, backend="reference")
    torch.testing.assert_close(out, want_out, **TOL)
    torch.testing.assert_close(lse, want_lse, **TOL)
    torch.testing.assert_close(out, sdpa(q, k, v, 0.5), **TOL)


def test_merge_with_a_part_that_saw_nothing(gen):
    # Causal cross attention with T_q > T_kv: the first rows see no key (out 0, lse -inf);
    # merging with extra tokens must give exactly the extra tokens' result for those rows.
    q, k, v = randn(gen, 1, 6, 2, 4), randn(gen, 1, 3, 2, 4), randn(gen, 1, 3, 2, 4)
    ek, ev = randn(gen, 1, 2, 2, 4), randn(gen, 1, 2, 2, 4)
    a = glocal.attention(q, k, v, is_causal=True, return_lse=True, backend="reference")
    b = glocal.attention(q, ek, ev, return_lse=True, backend="reference")
    out, lse = glocal.merge_attentions([a[0], b[0]], [a[1], b[1]])
    torch.testing.assert_close(out[:, :3], b[0][:, :3], **TOL)
    torch.testing.assert_close(lse[:, :3], b[1][:, :3], **TOL)
    mask = torch.cat([torch.arange(3)[None, :] <= torch.arange(6)[:, None] - 3, torch.ones(6, 2, dtype=torch.bool)], 1)
    kk, vv = torch.cat([k, ek], 1), torch.cat([v, ev], 1)
    torch.testing.assert_close(out, sdpa(q, kk, vv, 0.5, mask=mask), **TOL)
    torch.testing.assert_close(lse, dense_lse(q, kk, 0.5, mask), **TOL)


@pytest.mark.parametrize("t_q, t_kv", [(5, 9), (7, 7), (9, 5), (4, 1)])
def test_causal_cross_attention_is_bottom_right_aligned(gen, t_q, t_kv):
    q, k, v = randn(gen, 2, t_q, 4, 6), randn(gen, 2, t_kv, 2, 6), randn(gen, 2, t_kv, 2, 3)
    out, lse = glocal.attention(q, k, v, is_causal=True, scale=0.4, return_lse=True, backend="reference")
    mask = torch.arange(t_kv)[None, :] <= torch.arange(t_q)[:, None] + (t_kv - t_q)
    seen = mask.any(-1)
    want = sdpa(q, k, v, 0.4, mask=mask)
    torch.testing.assert_close(out[:, seen], want[:, seen], **TOL)
    torch.testing.assert_close(lse[:, seen], dense_lse(q, k, 0.4, mask)[:, seen], **TOL)
    # Rows that see no key: output exactly 0 and lse -inf (not NaN).
    assert int((~seen).sum()) == max(0, t_q - t_kv)
    assert torch.equal(out[:, ~seen], torch.zeros_like(out[:, ~seen]))
    assert torch.all(lse[:, ~seen] == -math.inf)
    if t_q == t_kv:
        torch.testing.assert_close(out, sdpa(q, k, v, 0.4, is_causal=True), **TOL)
