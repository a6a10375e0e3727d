"""glocal.nn.HybridAttention against a dense reference written from its definition (one softmax over the union
of the key sets, or a per-head gate of two softmaxes), outputs and gradients; every error message."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import glocal
from glocal.masks import dense_mask
from glocal.nn.hybrid import compressed_keys_allowed
from glocal.nn.rope import rope, rope_grid
from glocal.spec import make_neighborhood_spec


def _blocks(grid, reduction):
    """Row-major block index of every token of ``grid`` (boxes of ``reduction`` per axis), and the block count."""
    coords = list(itertools.product(*[range(n) for n in grid]))
    per_axis = [-(-n // r) for n, r in zip(grid, reduction)]
    ids = []
    for c in coords:
        b = 0
        for x, r, n in zip(c, reduction, per_axis):
            b = b * n + x // r
        ids.append(b)
    total = 1
    for n in per_axis:
        total *= n
    return torch.tensor(ids), total


def _softmax_union(q, keys, values, allowed, scale):
    """q [N, D], keys [M, D], values [M, Dv], allowed [N, M] -> [N, Dv], one softmax per query (float64)."""
    scores = (q @ keys.T) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, -1).nan_to_num(0.0)
    return probs @ values


def reference(layer: glocal.nn.HybridAttention, x: torch.Tensor) -> torch.Tensor:
    """The layer from its definition, one query row at a time over explicit key sets (float64)."""
    grid = tuple(x.shape[1:-1])
    n = 1
    for s in grid:
        n *= s
    q, k, v = layer.qkv(x).unflatten(-1, (3, layer.num_heads, layer.head_dim)).unbind(-3)
    if layer.rope_theta is not None:
        if layer.ndim == 1:
            q, k = (rope(t, torch.arange(grid[0]), layer.rope_theta) for t in (q, k))
        else:
            q, k = (rope_grid(t, layer.rope_theta) for t in (q, k))
    qf, kf, vf = (t.reshape(x.shape[0], n, layer.num_heads, layer.head_dim) for t in (q, k, v))
    scale = layer.head_dim ** -0.5 if layer.scale is None else layer.scale
    spec = make_neighborhood_spec(grid, layer.kernel_size, 1, layer.dilation, layer.is_causal)
    local = dense_mask(spec)  # [N, N], itself checked against a loop over queries in test_reference
    causal = torch.ones(n, n, dtype=torch.bool).tril() if layer.is_causal else torch.ones(n, n, dtype=torch.bool)
    if layer.global_branch == "compressed":
        ids, nb = _blocks(grid, layer.reduction)
        member = F.one_hot(ids, nb).bool()  # [N, nb]
        # Causal: a block once all of its tokens are in the past; a partial last block never (it is not whole).
        whole = member.sum(0) == math.prod(layer.reduction)
        complete = torch.stack([member[:, b].nonzero().max() <= torch.arange(n) for b in range(nb)], 1) & whole
        touched = (local.double() @ member.double()) > 0
    outs = []
    for b in range(x.shape[0]):
        heads = []
        for h in range(layer.num_heads):
            qh, kh, vh = qf[b, :, h], kf[b, :, h], vf[b, :, h]
            kind = layer.head_branches[h]
            loc = _softmax_union(qh, kh, vh, local, scale)
            if layer.global_branch == "full":
                glob_k, glob_v, glob_allowed = kh, vh, causal
                union_k, union_v, union_allowed = kh, vh, causal  # window ⊂ all tokens
            elif layer.global_branch == "tokens":
                if layer.global_tokens is not None:
                    _, gk, gv = layer.qkv(layer.global_tokens).unflatten(-1, (3, layer.num_heads,
                                                                               layer.head_dim)).unbind(-3)
                    gk, gv = gk[:, h], gv[:, h]
                else:
                    ids, nb = _blocks(grid, layer.pool)
                    member = F.one_hot(ids, nb).double()
                    gk, gv = ((member.T @ t) / member.sum(0)[:, None] for t in (kh, vh))
                glob_k, glob_v = gk, gv
                glob_allowed = torch.ones(n, gk.shape[0], dtype=torch.bool)
                union_k, union_v = torch.cat([kh, gk]), torch.cat([vh, gv])
                union_allowed = torch.cat([local, glob_allowed], 1)
            elif layer.global_branch == "compressed":
                counts = member.double().sum(0)[:, None]
                pk, pv = (member.double().T @ kh) / counts, (member.double().T @ vh) / counts
                glob_allowed = complete if layer.is_causal else torch.ones(n, nb, dtype=torch.bool)
                glob_k, glob_v = pk, pv
                union_k, union_v = torch.cat([kh, pk]), torch.cat([vh, pv])
                union_allowed = torch.cat([local, glob_allowed & ~touched], 1)
            elif layer.global_branch == "moba" and kind == "both" and layer.combine == "merge":
                # The top_k best-gated blocks the window does not touch (causal: wholly before the query).
                sizes = layer.block_size if layer.ndim > 1 else (layer.block_size,)
                ids, nb = _blocks(grid, tuple(max(1, min(s, g)) for s, g in zip(sizes, grid)))
                member = F.one_hot(ids, nb).bool()
                means = (member.double().T @ kh) / member.sum(0)[:, None]
                union_k, union_v, union_allowed = kh, vh, local.clone()
                for i in range(n):
                    cands = [c for c in range(nb) if not bool((local[i] & member[:, c]).any())
                             and (not layer.is_causal or int(member[:, c].nonzero().max()) <= i)]
                    cands.sort(key=lambda c: (-float(qh[i].detach() @ means[c].detach()), c))
                    for c in cands[:layer.top_k]:
                        union_allowed[i] |= member[:, c]
            if layer.global_branch in ("full", "tokens", "compressed"):
                glob = _softmax_union(qh, glob_k, glob_v, glob_allowed, scale)
            elif layer.global_branch == "linear":
                a, c = F.elu(qh) + 1, F.elu(kh) + 1
                w = (a @ c.T) * causal
                glob = (w @ vh) / w.sum(-1, keepdim=True)
            else:  # moba: the routing of glocal.moba_selection (itself checked against a loop in test_block_sparse)
                view = (1, *grid, 1, layer.head_dim)
                if layer.ndim == 1:
                    glob = glocal.moba_attention(qh.reshape(view), kh.reshape(view), vh.reshape(view),
                                                 layer.block_size, top_k=layer.top_k, is_causal=layer.is_causal,
                                                 backend="reference")
                else:
                    glob = glocal.moba_attention_nd(qh.reshape(view), kh.reshape(view), vh.reshape(view),
                                                    layer.block_size, top_k=layer.top_k, backend="reference")
                glob = glob.reshape(n, -1)
            if kind == "local":
                heads.append(loc)
            elif kind == "global":
                heads.append(glob)
            elif layer.combine == "merge":
                heads.append(_softmax_union(qh, union_k, union_v, union_allowed, scale))
            else:
                s = torch.sigmoid(layer.gate_logit[h])
                heads.append(s * loc + (1 - s) * glob)
        outs.append(torch.stack(heads, 1))
    out = torch.stack(outs).reshape(*x.shape[:-1], layer.num_heads, layer.head_dim)
    return layer.proj(out.flatten(-2))


BRANCH_OPTIONS = {"full": {}, "tokens": {"num_global_tokens": 3}, "pooled": {"pool": 3},
                  "compressed": {"reduction": 3}, "linear": {}, "moba": {"block_size": 4, "top_k": 2}}
GRIDS = {1: (2, 23), 2: (1, 9, 7), 3: (1, 4, 5, 6)}


def _cases():
    for branch, combine, ndim, causal, heads in itertools.product(
            BRANCH_OPTIONS, ("merge", "gate"), (1, 2, 3), (False, True),
            (None, ("both", "local", "global", "both"))):
        name = "tokens" if branch == "pooled" else branch
        if combine == "merge" and name == "linear":
            continue
        if causal and (ndim > 1 or branch == "pooled"):
            continue
        if ndim == 3 and (heads is None or branch in ("tokens", "linear")):
            continue  # keep the sweep small: 3-D once per remaining branch
        yield branch, combine, ndim, causal, heads


@pytest.mark.parametrize("branch,combine,ndim,causal,heads", list(_cases()))
def test_layer_equals_its_dense_reference(branch, combine, ndim, causal, heads):
    torch.manual_seed(hash((branch, combine, ndim, causal, heads)) % 1000)
    name = "tokens" if branch == "pooled" else branch
    kernel = {1: 5, 2: (3, 5), 3: (3, 3, 5)}[ndim]
    options = dict(BRANCH_OPTIONS[branch])
    if branch == "moba" and ndim > 1:
        options["block_size"] = 2
    layer = glocal.nn.HybridAttention(16, 4, kernel, name, combine=combine, ndim=ndim, is_causal=causal,
                                      head_branches=heads, dilation=2 if ndim == 1 and not causal else 1,
                                      rope_theta=100.0 if ndim != 3 else None, **options).double()
    if layer.gate_logit is not None:
        with torch.no_grad():
            layer.gate_logit.uniform_(-2, 2)
    x = torch.randn(*GRIDS[ndim], 16, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    ref = reference(layer, x)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *layer.parameters()], grad)
    want = torch.autograd.grad(ref, [x, *layer.parameters()], grad, allow_unused=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, torch.zeros_like(g) if w is None else w, atol=1e-9, rtol=1e-9)


def test_merge_is_one_softmax_over_the_union_in_float32():
    torch.manual_seed(1)
    layer = glocal.nn.HybridAttention(32, 2, (5, 5), "compressed", ndim=2, reduction=4)
    x = torch.randn(2, 17, 15, 32)
    ref = reference(layer.double(), x.double())
    out = layer.float()(x)
    torch.testing.assert_close(out.double(), ref, atol=1e-4 * ref.abs().max().item(), rtol=0)


def test_merged_full_head_is_full_attention():
    torch.manual_seed(2)
    layer = glocal.nn.HybridAttention(16, 2, 5, "full", is_causal=True).double()
    x = torch.randn(1, 30, 16, dtype=torch.float64)
    q, k, v = layer.qkv(x).unflatten(-1, (3, 2, 8)).unbind(-3)
    full = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True).transpose(1, 2)
    torch.testing.assert_close(layer(x), layer.proj(full.flatten(-2)))


def test_compressed_blocks_touching_the_window_are_left_out():
    # 1-D, 12 tokens, window 3 (centred, shifted at the ends), blocks of 4: query 5 sees keys 4..6, all in block 1.
    allowed = compressed_keys_allowed((12,), (3,), (1,), (4,), False, True, "cpu")
    assert allowed[5].tolist() == [True, False, True]
    # Query 4 sees keys 3..5: blocks 0 and 1 touched.
    assert allowed[4].tolist() == [False, False, True]
    # Dilation 2: query 5 sees keys 3, 5, 7 (blocks 0 and 1); the window never holds an even key.
    allowed = compressed_keys_allowed((12,), (3,), (2,), (4,), False, True, "cpu")
    assert allowed[5].tolist() == [False, False, True]
    # Causal: query 9 (window 7..9) may read block 0 only; block 1 is touched and block 2 is incomplete.
    allowed = compressed_keys_allowed((12,), (3,), (1,), (4,), True, True, "cpu")
    assert allowed[9].tolist() == [True, False, False]
    assert allowed[11].tolist() == [True, True, False]


def test_gate_starts_even_and_learns():
    layer = glocal.nn.HybridAttention(16, 2, 5, "linear", combine="gate")
    assert torch.equal(layer.gate_logit, torch.zeros(2))
    layer(torch.randn(1, 20, 16)).sum().backward()
    assert layer.gate_logit.grad is not None and bool((layer.gate_logit.grad != 0).all())


def test_nothing_the_caller_passed_is_modified():
    layer = glocal.nn.HybridAttention(16, 2, 5, "compressed", reduction=2)
    x = torch.randn(1, 20, 16)
    before = x.clone()
    layer(x)
    assert torch.equal(x, before)


# -- error messages, one test each ---------------------------------------------------------------------


def _raises(match, **kw):
    args = dict(dim=16, num_heads=2, kernel_size=5, global_branch="full")
    args.update(kw)
    with pytest.raises((ValueError, TypeError), match=match):
        glocal.nn.HybridAttention(**args)


def test_error_unknown_branch():
    _raises(r"global_branch must be one of .*'full'.*got global_branch='dense'", global_branch="dense")


def test_error_unknown_combine():
    _raises(r"combine must be one of .*got combine='sum'", combine="sum")


def test_error_bad_ndim():
    _raises(r"ndim must be 1, 2 or 3 .*got ndim=4", ndim=4)


def test_error_causal_not_a_bool():
    _raises(r"is_causal must be a bool; got is_causal=1", is_causal=1)


def test_error_causal_grid():
    _raises(r"causal over sequences only; got is_causal=True with ndim=2", is_causal=True, ndim=2)


def test_error_merge_needs_softmax_keys():
    _raises(r"combine='merge' .* got global_branch='linear'\. Pass combine='gate'", global_branch="linear")


def test_error_option_of_another_branch():
    _raises(r"reduction is an option of global_branch='compressed'; got reduction=4 with global_branch='full'",
            reduction=4)


def test_error_tokens_need_one_source():
    _raises(r"num_global_tokens \(learned\) or pool .* Pass exactly one", global_branch="tokens")


def test_error_pooled_tokens_causal():
    _raises(r"pooled global tokens summarise the whole input.*pool=4", global_branch="tokens", pool=4,
            is_causal=True)


def test_error_compressed_needs_reduction():
    _raises(r"global_branch='compressed' needs reduction; got reduction=None", global_branch="compressed")


def test_error_moba_needs_block_size():
    _raises(r"global_branch='moba' needs block_size", global_branch="moba", combine="gate", top_k=2)


def test_error_head_branches_length():
    _raises(r"head_branches must be a sequence of num_heads=2 entries", head_branches=("local",))


def test_error_head_branches_word():
    _raises(r"every entry of head_branches must be one of .*got 'window'", head_branches=("local", "window"))


def test_error_rope_theta():
    _raises(r"rope_theta must be a positive number or None; got rope_theta=-1", rope_theta=-1)


def test_error_rope_head_dim_on_a_grid():
    _raises(r"head_dim must be divisible by 4; got head_dim=6", dim=12, ndim=2, rope_theta=100.0)


def test_error_num_global_tokens():
    _raises(r"num_global_tokens must be a positive int; got num_global_tokens=0", global_branch="tokens",
            num_global_tokens=0)
