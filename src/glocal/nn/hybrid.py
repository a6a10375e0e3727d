"""Local + global in one layer: a neighborhood branch and a global branch, merged exactly or gated per head.

Shapes: x [B, T, dim] (ndim=1) or [B, *spatial, dim] (ndim=2, 3) -> the same shape.

Example:
    >>> import torch, glocal
    >>> layer = glocal.nn.HybridAttention(64, 4, kernel_size=5, global_branch="compressed", ndim=2, reduction=4)
    >>> layer(torch.randn(1, 16, 16, 64)).shape
    torch.Size([1, 16, 16, 64])
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .. import checks
from ..backends import choose_backend
from ..backends.cpu.dense import masked_attention
from ..checks.decoding import cache_decodable, cache_kind, cache_prefill
from ..checks.hybrid import BRANCH_OPTIONS
from ..decoding import (
    DecodingCache,
    KVCache,
    LinearAttentionState,
    MoBACache,
    SlidingWindowCache,
)
from ..masks import block_means, pool_tokens
from ..numerics import compute_dtype, dense_attention, merge_lse
from ..ops import (
    attention,
    linear_attention,
    moba_attention,
    moba_attention_nd,
    neighborhood_attention,
)
from ..spec import BlockSparseSpec, axis_window
from .attention import _QKVModule
from .rope import rope, rope_grid


@functools.lru_cache(maxsize=32)
def _axis_touches(length: int, kernel: int, dilation: int, causal: bool, reduction: int, device: str):
    """bool [length, n_blocks]: whether the window of query x along one axis holds a token of block b
    (blocks of ``reduction`` tokens). Exact under dilation: only the window's own keys count."""
    x = torch.arange(length, device=device)
    group, lo, hi = axis_window(x, length, kernel, 1, dilation, causal)
    steps = torch.arange(kernel, device=device)
    # A causal window near the start holds fewer than `kernel` keys; repeat its first key for the rest.
    slot = torch.minimum(lo[:, None] + steps, hi[:, None] - 1)
    blocks = (slot * dilation + group[:, None]) // reduction
    n_blocks = -(-length // reduction)
    return torch.zeros(length, n_blocks, dtype=torch.bool, device=device).scatter_(1, blocks, True)


@functools.lru_cache(maxsize=32)
def compressed_keys_allowed(grid: tuple, kernel: tuple, dilation: tuple, reduction: tuple, is_causal: bool,
                            exclude_window: bool, device: str) -> torch.Tensor:
    """bool [N, n_blocks]: the pooled blocks each query attends in the compressed global branch.

    A block (a box of ``reduction`` tokens per axis, row-major) is excluded when ``exclude_window``
    and the query's neighborhood holds any of its tokens (those tokens are attended exactly by the
    window, so the block's summary would count them twice); when causal (sequences), a block is
    attended only once all its ``reduction`` tokens are at or before the query.
    """
    allowed = None
    for length, k, d, r in zip(grid, kernel, dilation, reduction):
        touches = _axis_touches(length, k, d, is_causal, r, device)
        allowed = touches if allowed is None else \
            (allowed[:, None, :, None] & touches[None, :, None, :]).flatten(0, 1).flatten(1, 2)
    allowed = ~allowed if exclude_window else torch.ones_like(allowed)
    if is_causal:
        (length,), (r,) = grid, reduction
        # A block counts once all its r tokens are in the past; a partial last block never does (a longer
        # input would complete it later), so no query's result depends on where the input ends.
        last = (torch.arange(allowed.shape[1], device=device) + 1) * r - 1
        allowed = allowed & (last[None, :] <= torch.arange(length, device=device)[:, None])
    return allowed


class HybridCache(DecodingCache):
    """The decoding cache of a causal HybridAttention layer: the window, and what its global branch reads.

    ``parts``: "window" (a SlidingWindowCache of the dilated window), and by branch "full" (a
    KVCache: every key), "moba" (a MoBACache: every key and the block means), "linear" (a
    LinearAttentionState); the compressed branch keeps ``key_sums`` / ``value_sums``, the running
    sum of every block of ``reduction`` tokens [B, n_blocks, H, head_dim]. Memory: O(window) for
    the tokens branch and linear, O(window + T / reduction) compressed, O(T) full and moba.
    Keys are rotated by their stream positions when the layer has RoPE.
    """

    BUFFERS = ("key_sums", "value_sums")

    def __init__(self, parts: dict, reduction: int | None):
        self.parts, self.reduction = parts, reduction
        self.options = {"parts": sorted(parts), "reduction": reduction}
        super().__init__()

    def reset(self) -> None:
        super().reset()
        for part in self.parts.values():
            part.reset()

    def nbytes(self) -> int:
        return super().nbytes() + sum(part.nbytes() for part in self.parts.values())

    def state_dict(self) -> dict:
        return {**super().state_dict(), "parts": {name: part.state_dict() for name, part in self.parts.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for name, part in self.parts.items():
            part.load_state_dict(state["parts"][name])

    def extend(self, k, v, linear: bool = True) -> None:
        """Add tokens ``k, v [B, T, H, D]`` (rotated) to the window and the key sets of the branch; the linear
        state too unless ``linear=False`` (a step adds its token there while reading it)."""
        for name in ("window", "full", "moba") + (("linear",) if linear else ()):
            if name in self.parts:
                self.parts[name].extend(k, v)
        if self.reduction is not None:
            end = self.length + k.shape[1]
            blocks = torch.arange(self.length, end, device=k.device) // self.reduction
            for sums, x in ((self.key_sums, k), (self.value_sums, v)):
                missing = -(-end // self.reduction) - sums.length
                if missing > 0:
                    sums.extend(x.new_zeros((x.shape[0], missing, *x.shape[2:]), dtype=compute_dtype(x)))
                sums.view().index_add_(1, blocks, x.detach().to(sums.data.dtype))
        self.length += k.shape[1]

    def pooled(self):
        """Keys and values averaged over the completed blocks, ``[B, n_complete, H, D]`` each."""
        complete = self.length // self.reduction
        return (self.key_sums.view()[:, :complete] / self.reduction,
                self.value_sums.view()[:, :complete] / self.reduction)


class HybridAttention(_QKVModule):
    """A neighborhood branch plus a global branch in one layer, combined exactly or by a learned gate.

    Shapes: x [B, T, dim] (ndim=1) or [B, *spatial, dim] (ndim=2, 3) -> the same shape; dim is split
    into num_heads heads of dim // num_heads channels. q, k, v come from one projection; both
    branches read the same q, k, v.

    Branches (``global_branch``):
        "full"        every token;
        "tokens"      G global tokens: ``num_global_tokens`` learned embeddings projected by the layer's
                      qkv, or the input pooled by ``pool`` per axis (GC ViT's global token generator);
        "compressed"  keys and values average-pooled over boxes of ``reduction`` tokens per axis (PVT);
        "linear"      kernelised linear attention over every token (``feature_map``);
        "moba"        block-routed attention (MoBA on sequences, VMoBA on grids; ``block_size``, ``top_k``).
    The local branch is neighborhood attention with ``kernel_size`` and ``dilation`` (DESIGN.md §1).

    Combining (``combine``):
        "merge"  one softmax over the union of both key sets, computed by an lse merge of the two
                 branches. Where the sets overlap the overlap is removed from the global side, so no
                 key is counted twice: "full" minus the window is every other token, so a merged
                 full head is exactly full attention; global tokens are keys of their own (no
                 overlap); a pooled block is dropped for a query whose window holds any of its
                 tokens (they are attended exactly there; the block's tokens outside the window are
                 then not seen by that query), and, when causal, until all its tokens are in the past.
                 "moba": the ``top_k`` best-gated blocks among those the window does not touch
                 (and, causal, wholly before it): the window plays the part of MoBA's own block, so
                 ``top_k`` counts routed blocks only. "linear" has no softmax keys to unite with
                 the window and takes "gate" (where "moba" is MoBA itself, own block included).
        "gate"   out_h = s_h * local_h + (1 - s_h) * global_h with s_h = sigmoid(gate_logit_h), one
                 learned logit per head (initialised to 0: an even mix), each branch its own softmax.
    ``head_branches`` sets per head which branch it runs: "local", "global" or "both" (the combined
    layer; the default for every head). ``is_causal`` (sequences only): the window ends at the query,
    the global branch never reads a later token (pooled tokens are refused; pooled blocks wait until
    complete). ``rope_theta``: rotate q and k before both branches (``rope`` for sequences,
    ``rope_grid`` for grids; learned global tokens are not rotated).

    Example:
        >>> import torch, glocal
        >>> layer = glocal.nn.HybridAttention(64, 4, kernel_size=7, global_branch="tokens", num_global_tokens=4,
        ...                                   head_branches=("both", "both", "local", "global"))
        >>> layer(torch.randn(2, 50, 64)).shape
        torch.Size([2, 50, 64])
    """

    def __init__(self, dim, num_heads, kernel_size, global_branch, combine="merge", ndim=1, dilation=1,
                 is_causal=False, head_branches=None, num_global_tokens=None, pool=None, reduction=None,
                 block_size=None, top_k=None, feature_map=None, rope_theta=None, qkv_bias=True, qk_scale=None,
                 proj_drop=0.0):
        super().__init__(dim, num_heads, qkv_bias, proj_drop)
        options = dict(num_global_tokens=num_global_tokens, pool=pool, reduction=reduction, block_size=block_size,
                       top_k=top_k, feature_map=feature_map)
        checks.hybrid_branch(global_branch, combine, ndim, is_causal, options)
        checks.scale(qk_scale)
        self.kernel_size = checks.per_axis("kernel_size", kernel_size, ndim, int)
        self.dilation = checks.per_axis("dilation", dilation, ndim, int)
        checks.window_args(self.kernel_size, (1,) * ndim, self.dilation)
        self.global_branch, self.combine, self.ndim, self.is_causal = global_branch, combine, ndim, is_causal
        self.head_branches = checks.head_branches(head_branches, num_heads)
        checks.rope_dims(rope_theta, self.head_dim, ndim)
        self.scale, self.rope_theta = qk_scale, rope_theta
        self.pool = None if pool is None else checks.reduction(pool, ndim)
        self.reduction = None if reduction is None else checks.reduction(reduction, ndim)
        self.block_size = block_size if block_size is None or ndim == 1 else checks.block_shape(block_size, ndim)
        self.top_k, self.feature_map = top_k, feature_map
        self.global_tokens = None
        if num_global_tokens is not None:
            self.global_tokens = nn.Parameter(torch.randn(checks.positive_int("num_global_tokens",
                                                                              num_global_tokens), dim) * 0.02)
        self.gate_logit = nn.Parameter(torch.zeros(num_heads)) if combine == "gate" else None
        heads = {kind: [h for h, b in enumerate(self.head_branches) if b == kind] for kind in ("local", "global", "both")}
        self._local_heads = sorted(heads["local"] + heads["both"])
        self._global_heads = sorted(heads["global"] + heads["both"])
        # Where each head finds its result among a branch's heads (0, weighted 0, for a head the branch skips).
        self._local_at = [self._local_heads.index(h) if h in self._local_heads else 0 for h in range(num_heads)]
        self._global_at = [self._global_heads.index(h) if h in self._global_heads else 0 for h in range(num_heads)]

    # -- the branches ------------------------------------------------------------------------------

    def _local(self, q, k, v, extra_k=None, extra_v=None):
        return neighborhood_attention(q, k, v, self.kernel_size, dilation=self.dilation, is_causal=self.is_causal,
                                      scale=self.scale, additional_keys=extra_k, additional_values=extra_v,
                                      return_lse=True)

    def _tokens(self, x, q, k, v, heads):
        """The global tokens' keys and values [B, G, h, D] for the heads ``heads``."""
        if self.global_tokens is None:
            return pool_tokens(k, self.pool).flatten(1, -3), pool_tokens(v, self.pool).flatten(1, -3)
        _, gk, gv = self._qkv(self.global_tokens[None])
        return (t[:, :, heads].expand(x.shape[0], -1, -1, -1) for t in (gk, gv))

    def _compressed(self, q, k, v, exclude_window: bool):
        """Dense attention over pooled blocks, masked as :func:`compressed_keys_allowed` says; (out, lse)."""
        allowed = compressed_keys_allowed(tuple(q.shape[1:-2]), self.kernel_size, self.dilation, self.reduction,
                                          self.is_causal, exclude_window, str(q.device))
        kp, vp = pool_tokens(k, self.reduction).flatten(1, -3), pool_tokens(v, self.reduction).flatten(1, -3)
        scale = q.shape[-1] ** -0.5 if self.scale is None else self.scale
        out, lse = masked_attention(q.flatten(1, -3), kp, vp, scale, allowed)
        return out.reshape(q.shape), lse.reshape(q.shape[:-1])

    def _global(self, x, q, k, v, heads):
        """The global branch alone for heads ``heads`` (each its own softmax)."""
        if self.global_branch == "full":
            flat = attention(q.flatten(1, -3), k.flatten(1, -3), v.flatten(1, -3), is_causal=self.is_causal,
                             scale=self.scale)
            return flat.reshape(q.shape)
        if self.global_branch == "tokens":
            gk, gv = self._tokens(x, q, k, v, heads)
            return attention(q.flatten(1, -3), gk, gv, scale=self.scale).reshape(q.shape)
        if self.global_branch == "compressed":
            return self._compressed(q, k, v, exclude_window=False)[0]
        if self.global_branch == "linear":
            flat = linear_attention(q.flatten(1, -3), k.flatten(1, -3), v.flatten(1, -3),
                                    self.feature_map or "elu1", self.is_causal)
            return flat.reshape(q.shape)
        if self.ndim == 1:
            return moba_attention(q, k, v, self.block_size, top_k=self.top_k, is_causal=self.is_causal,
                                  scale=self.scale)
        return moba_attention_nd(q, k, v, self.block_size, top_k=self.top_k, scale=self.scale)

    def _merged(self, x, q, k, v, heads):
        """One softmax over the window and the global keys (overlap removed) for heads ``heads``."""
        if self.global_branch == "full":  # the window is inside the full key set: the union is all tokens
            return self._global(x, q, k, v, heads)
        if self.global_branch == "tokens":
            gk, gv = self._tokens(x, q, k, v, heads)
            return self._local(q, k, v, gk, gv)[0]
        out, lse = self._local(q, k, v)
        out_g, lse_g = self._compressed(q, k, v, exclude_window=True) if self.global_branch == "compressed" \
            else self._routed_blocks(q, k, v)
        return merge_lse([out, out_g], [lse, lse_g])[0]

    def _routed_blocks(self, q, k, v):
        """(out, lse) over the ``top_k`` best-gated key blocks (MoBA's gate q . mean(k_block), not
        differentiated) among those the query's window does not touch (and, causal, wholly before it)."""
        grid = tuple(q.shape[1:-2])
        sizes = self.block_size if self.ndim > 1 else (self.block_size,)
        shape = tuple(max(1, min(b, n)) for b, n in zip(sizes, grid))
        eligible = compressed_keys_allowed(grid, self.kernel_size, self.dilation, shape, self.is_causal, True,
                                           str(q.device))
        means = block_means(k, shape)
        gates = torch.einsum("bqhd,bnhd->bhqn", q.detach().flatten(1, -3).to(means.dtype), means)
        gates = gates.masked_fill(~eligible, -float("inf"))
        best = torch.sort(gates, dim=-1, descending=True, stable=True).indices[..., :self.top_k]  # ties: lower block
        selection = torch.zeros_like(gates, dtype=torch.bool).scatter_(-1, best, True) & eligible
        spec = BlockSparseSpec(grid, shape, gates.shape[2], self.is_causal, self.top_k, None)
        tensors = {"q": q, "k": k, "v": v, "selection": selection}
        scale = q.shape[-1] ** -0.5 if self.scale is None else self.scale
        return choose_backend(spec, tensors).run(spec, tensors, scale)

    # -- forward -----------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, cache: HybridCache | None = None) -> torch.Tensor:
        """``x -> y``; with ``cache`` (empty, from ``new_cache``; causal) what decoding reads is kept: a prefill."""
        checks.module_input(x, self.dim, self.ndim)
        if cache is not None:
            cache_kind(cache, HybridCache, "HybridAttention.forward")
            cache_prefill(cache.length, "HybridAttention.forward")
        q, k, v = self._qkv(x)
        if self.rope_theta is not None:
            rotate = rope if self.ndim == 1 else rope_grid
            positions = (torch.arange(x.shape[1], device=x.device),) if self.ndim == 1 else ()
            q, k = rotate(q, *positions, theta=self.rope_theta), rotate(k, *positions, theta=self.rope_theta)
        if cache is not None:
            cache.extend(k, v)
        if self.combine == "merge":
            # Each head runs one of three computations; run each on its heads, then put the heads back in order.
            runs = {"local": lambda q, k, v, heads: self._local(q, k, v)[0],
                    "global": lambda q, k, v, heads: self._global(x, q, k, v, heads),
                    "both": lambda q, k, v, heads: self._merged(x, q, k, v, heads)}
            order, parts = [], []
            for kind, run in runs.items():
                heads = [h for h, b in enumerate(self.head_branches) if b == kind]
                if heads:
                    order += heads
                    parts.append(self._on_heads(heads, run, q, k, v))
            out = parts[0] if len(parts) == 1 else torch.cat(parts, -2)[..., _inverse(order), :]
            return self._out(out)
        # Gate: the local branch on local + both heads, the global one on global + both, mixed per head.
        s = torch.sigmoid(self.gate_logit)
        both = torch.tensor([b == "both" for b in self.head_branches], device=s.device)
        out = 0
        if self._local_heads:
            local = self._on_heads(self._local_heads, lambda q, k, v, heads: self._local(q, k, v)[0], q, k, v)
            only = s.new_tensor([float(b == "local") for b in self.head_branches])
            out = out + torch.where(both, s, only)[:, None] * _pick(local, self._local_at)
        if self._global_heads:
            glob = self._on_heads(self._global_heads, lambda q, k, v, heads: self._global(x, q, k, v, heads), q, k, v)
            only = s.new_tensor([float(b == "global") for b in self.head_branches])
            out = out + torch.where(both, 1 - s, only)[:, None] * _pick(glob, self._global_at)
        return self._out(out)

    def _on_heads(self, heads, run, q, k, v):
        """``run(q, k, v, heads)`` on the heads ``heads`` only (no copy when that is every head)."""
        if len(heads) == self.num_heads:
            return run(q, k, v, slice(None))
        index = torch.tensor(heads, device=q.device)
        return run(*(t.index_select(-2, index) for t in (q, k, v)), index)

    # -- decoding ----------------------------------------------------------------------------------

    def new_cache(self, batch: int | None = None) -> HybridCache:
        """The decoding cache of a causal layer (see :class:`HybridCache` for what it keeps and its memory)."""
        cache_decodable(self.is_causal, "HybridAttention", f"is_causal={self.is_causal}, ndim={self.ndim}")
        parts = {"window": SlidingWindowCache(self.kernel_size[0], dilation=self.dilation[0])}
        if self.global_branch == "full":
            parts["full"] = KVCache()
        elif self.global_branch == "moba":
            parts["moba"] = MoBACache(self.block_size, top_k=self.top_k)
        elif self.global_branch == "linear":
            parts["linear"] = LinearAttentionState(self.feature_map or "elu1")
        return HybridCache(parts, self.reduction[0] if self.global_branch == "compressed" else None)

    def step(self, x_t: torch.Tensor, cache: HybridCache) -> torch.Tensor:
        """One decoding step: ``x_t [B, dim] -> y_t [B, dim]``; ``cache`` (from ``new_cache``) advances a token.

        The newest query reads the window's keys and its branch's (the rule of the forward: pooled or
        routed blocks once complete, not touched by the window under "merge"); token by token it
        equals the causal forward."""
        checks.module_input(x_t, self.dim, 0)
        cache_kind(cache, HybridCache, "HybridAttention.step")
        q, k, v = self._qkv(x_t)  # [B, H, D]
        if self.rope_theta is not None:
            position = torch.tensor([cache.length], device=x_t.device)
            q, k = (rope(t[:, None], position, self.rope_theta)[:, 0] for t in (q, k))
        cache.extend(k[:, None], v[:, None], linear=False)
        scale = self.head_dim ** -0.5 if self.scale is None else self.scale
        window = cache.parts["window"]
        local = _attend_one(q, *window.kept(), scale)
        touched = window.kept_positions().to(q.device)
        branch = self.global_branch
        if branch == "full":
            alone = _attend_one(q, *cache.parts["full"].kept(), scale)
            merged = alone
        elif branch == "tokens":
            gk, gv = self._tokens(x_t, q, k, v, slice(None))
            alone = _attend_one(q, gk, gv, scale)
            merged = merge_lse([local[0], alone[0]], [local[1], alone[1]])
        elif branch == "compressed":
            kp, vp = cache.pooled()
            alone = _attend_one(q, kp, vp, scale)
            untouched = torch.ones(kp.shape[1], dtype=torch.bool, device=q.device)
            untouched[(touched // self.reduction[0])[touched // self.reduction[0] < kp.shape[1]]] = False
            part = _attend_one(q, kp, vp, scale, untouched[None, None])
            merged = merge_lse([local[0], part[0]], [local[1], part[1]])
        elif branch == "linear":
            alone, merged = (cache.parts["linear"].step(q, k, v), None), None
        else:
            moba = cache.parts["moba"]
            alone = moba.attend(q, scale, return_lse=True)
            part = self._routed_step(q, moba, touched, scale)
            merged = merge_lse([local[0], part[0]], [local[1], part[1]])
        kinds = self.head_branches
        is_local = torch.tensor([b == "local" for b in kinds], device=q.device)[:, None]
        is_global = torch.tensor([b == "global" for b in kinds], device=q.device)[:, None]
        if self.combine == "merge":
            both = merged[0]
        else:
            s_h = torch.sigmoid(self.gate_logit)[:, None]
            both = s_h * local[0].to(s_h.dtype) + (1 - s_h) * alone[0].to(s_h.dtype)
        out = torch.where(is_local, local[0], torch.where(is_global, alone[0], both.to(local[0].dtype)))
        return self._out(out.to(x_t.dtype))

    def _routed_step(self, q, moba: MoBACache, touched, scale):
        """(out, lse) of the newest query over its ``top_k`` best-gated complete key blocks the window does not
        touch (the merge's MoBA part, as :meth:`_routed_blocks` for one query)."""
        block = self.block_size
        means = moba.block_means()  # [B, n, H, D]
        n = means.shape[1]
        eligible = (torch.arange(n, device=q.device) + 1) * block <= moba.length
        eligible[(touched // block)[touched // block < n]] = False
        gates = torch.einsum("bhd,bnhd->bhn", q.detach().to(means.dtype), means)
        gates = gates.masked_fill(~eligible, -float("inf"))
        best = torch.sort(gates, dim=-1, descending=True, stable=True).indices[..., :self.top_k]  # ties: lower
        chosen = eligible[best]  # [B, H, top_k]
        slots = (best[..., None] * block + torch.arange(block, device=q.device)).flatten(-2)  # [B, H, top_k * block]
        keys, values = moba.kept()
        heads_first = keys.permute(0, 2, 1, 3), values.permute(0, 2, 1, 3)  # [B, H, T, D]
        picked = [x.gather(2, slots.clamp(max=x.shape[2] - 1)[..., None].expand(-1, -1, -1, x.shape[-1]))
                  for x in heads_first]
        valid = chosen[..., None].expand(-1, -1, -1, block).flatten(-2)
        return _attend_one(q, *(x.transpose(1, 2) for x in picked), scale, valid)

    def extra_repr(self) -> str:
        options = {name: getattr(self, name) for name in BRANCH_OPTIONS if getattr(self, name, None) is not None}
        return (f"{super().extra_repr()}, kernel_size={self.kernel_size}, global_branch={self.global_branch!r}, "
                f"combine={self.combine!r}, " + ", ".join(f"{k}={v!r}" for k, v in options.items()))


def _inverse(order: list[int]) -> list[int]:
    """The permutation that puts heads computed in ``order`` back at their own index."""
    inverse = [0] * len(order)
    for i, h in enumerate(order):
        inverse[h] = i
    return inverse


def _pick(x: torch.Tensor, heads: list[int]) -> torch.Tensor:
    """``x[..., heads, :]``, without a copy when ``heads`` is every head in order."""
    return x if heads == list(range(x.shape[-2])) else x[..., heads, :]


def _attend_one(q, keys, values, scale, valid=None):
    """(out [B, H, D_v], lse [B, H]) of one query per head ``q [B, H, D]`` over ``keys, values [B, S, H, D]``;
    ``valid`` [B, H, S] (or broadcastable) masks keys out; no key gives out 0 and lse -inf."""
    out, lse = dense_attention(q[:, None], keys, values, scale, None if valid is None else valid[..., None, :])
    return out[:, 0], lse[:, 0]
