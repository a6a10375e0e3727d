"""Conversion rules and the attention a converted head runs (heads-last, DESIGN.md §2).

- ``Local(window, sinks)``: the head attends the ``window`` tokens around each query (neighborhood
  attention: the window is centred and shifted inward at the borders, so it always holds ``window``
  tokens; causal models take the ``window`` tokens ending at the query) plus the ``sinks``, token
  positions every query also attends (negative positions count from the last real token, so
  ``sinks=(0, -1)`` are the first and last real tokens, e.g. [CLS] and [SEP]).
- ``Hybrid(window, sinks, global_branch)``: the same plus a global branch, mean-pooled keys/values of
  blocks of ``global_branch`` tokens (each pooled score carries + log(block length), so a block of equal
  keys weighs as its members would); blocks whose centre lies in a query's window are left out for that
  query. The branches are merged exactly with their log-sum-exps.

The adapters (``glocal.integrations``) call the rule objects' methods (:meth:`Local.attend`,
:meth:`Local.attend_heads`, :meth:`Local.probs`, :meth:`Local.mask`), so they never import this package.
:func:`fused_attention` (``attend_heads``) runs all of a layer's Local/Hybrid heads together: one
neighborhood call per window, the sinks and pooled blocks as biased extra keys in the same softmax.

Shapes (:func:`converted_attention`):
    q: [B, T, H, D]   k: [B, T, H, D]   v: [B, T, H, D_v]   valid: [B, T] bool   →   out [B, T, H, D_v]

Example:
    >>> import torch, glocal
    >>> from glocal.convert import Local, converted_attention
    >>> q = k = v = torch.randn(1, 40, 2, 8)
    >>> out = converted_attention(q, k, v, Local(65, sinks=(0, -1)), scale=8 ** -0.5)
    >>> torch.allclose(out, glocal.attention(q, k, v), atol=1e-5)  # a window covering the input is full attention
    True
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch

from ..masks import in_window, pool_tokens
from ..numerics import compute_dtype, dense_attention, masked_softmax, merge_lse
from ..ops import na1d


@dataclass(frozen=True)
class Local:
    """Attend the ``window`` tokens around each query plus the ``sinks`` positions."""

    window: int
    sinks: tuple = field(default=())

    def __post_init__(self):
        object.__setattr__(self, "sinks", tuple(self.sinks))

    def attend(self, q, k, v, scale: float, causal: bool = False, valid=None):
        """This rule's attention over whole sequences: :func:`converted_attention`."""
        return converted_attention(q, k, v, self, scale, causal, valid)

    def probs(self, q, k, q_pos, k_pos, scale: float, causal: bool):
        """This rule's attention map over a call's keys: :func:`converted_probs`."""
        return converted_probs(q, k, q_pos, k_pos, self, scale, causal)

    def mask(self, q_pos, k_pos, causal: bool):
        """The keys this rule lets each query see when queries and keys differ (a decoding step): :func:`local_mask`."""
        return local_mask(q_pos, k_pos, self, causal)

    @staticmethod
    def attend_heads(q, k, v, rules, scale: float, causal: bool = False, valid=None):
        """Many heads, each with its own Local/Hybrid rule (None = not this call's), fused: :func:`fused_attention`."""
        return fused_attention(q, k, v, rules, scale, causal, valid)


@dataclass(frozen=True)
class Hybrid(Local):
    """Local(window, sinks) plus a pooled global branch with blocks of ``global_branch`` tokens."""

    global_branch: int = 16

    def mask(self, q_pos, k_pos, causal: bool):
        raise ValueError(
            f"Hybrid heads run on whole sequences; got a call with {q_pos.rank.shape[1]} queries and "
            f"{k_pos.rank.shape[1]} keys (a decoding step with a cache). Use Local rules for decoders that "
            f"generate with a cache."
        )


def _sink_positions(sinks, length: int) -> list[int]:
    out = []
    for s in sinks:
        p = s if s >= 0 else length + s
        if 0 <= p < length and p not in out:
            out.append(p)
    return sorted(out)


def _block_layout(lengths: torch.Tensor, g: int, device):
    """Blocks of ``g`` real tokens: counts [B, n] (0 past a sequence's end), first position [n]."""
    n_blocks = max(1, math.ceil(int(lengths.max()) / g)) if lengths.numel() else 1
    first = torch.arange(n_blocks, device=device) * g
    counts = (lengths.to(device)[:, None] - first[None, :]).clamp(0, g)
    return counts, first


def _packed(q, k, v, rule, scale: float, causal: bool):
    """A rule's attention over sequences of real tokens only. q, k, v: [n, L, h, D] → [n, L, h, D_v]."""
    length = q.shape[1]
    window = min(rule.window, length)
    out, lse = na1d(q, k, v, kernel_size=window, is_causal=causal, scale=scale, return_lse=True)
    outs, lses = [out], [lse]
    pos = torch.arange(length, device=q.device, dtype=torch.float64)
    extent = torch.tensor([[float(length)]], dtype=torch.float64, device=q.device)
    sinks = _sink_positions(rule.sinks, length)
    if sinks:
        s_pos = torch.tensor(sinks, dtype=torch.float64, device=q.device)
        allowed = ~in_window(pos[None, :, None], s_pos[None, :, None], extent, window, causal)[0]
        if causal:
            allowed &= s_pos[None, :] <= pos[:, None]
        # A sink inside the query's window is already attended there: leaving it out here keeps every key once.
        o, l = dense_attention(q, k[:, sinks], v[:, sinks], scale, allowed)
        outs.append(o)
        lses.append(l)
    if isinstance(rule, Hybrid) and length > window:
        counts, first = _block_layout(torch.tensor([length]), rule.global_branch, q.device)
        counts = counts[0].double()
        kp, vp = pool_tokens(k, rule.global_branch), pool_tokens(v, rule.global_branch)
        centre = first + (counts - 1) / 2
        allowed = ~in_window(pos[None, :, None], centre.round()[None, :, None], extent, window, causal)[0]
        if causal:
            allowed &= (first + counts - 1)[None, :] <= pos[:, None]
        o, l = dense_attention(q, kp, vp, scale, allowed, bias=torch.log(counts))
        outs.append(o)
        lses.append(l)
    if len(outs) == 1:
        return out
    return merge_lse(outs, lses)[0]


def converted_attention(q, k, v, rule, scale: float, causal: bool = False, valid=None):
    """Apply one Local/Hybrid rule to heads-last tensors, over the real tokens of each sequence.

    Shapes:
        q: [B, T, H, D]   k: [B, T, H, D]   v: [B, T, H, D_v]   valid: [B, T] bool (None = all real)
        returns [B, T, H, D_v]; rows of padded queries are 0.

    Positions (window placement, sinks) count real tokens only, so padding on either side changes
    nothing for the real tokens. Sequences with the same padding pattern run as one batch.

    Example:
        >>> import torch
        >>> from glocal.convert import Local, converted_attention
        >>> q = k = v = torch.randn(2, 30, 4, 16)
        >>> converted_attention(q, k, v, Local(9, sinks=(0,)), scale=0.25).shape
        torch.Size([2, 30, 4, 16])
    """
    batch, tokens = q.shape[0], q.shape[1]
    out = q.new_zeros(batch, tokens, q.shape[2], v.shape[-1])
    if valid is None:
        valid = torch.ones(batch, tokens, dtype=torch.bool, device=q.device)
    for rows, cols in padding_groups(valid):
        take = lambda x: x[rows[:, None], cols[None, :]]  # noqa: E731  [n, L, H, D]
        o = _packed(take(q), take(k), take(v), rule, scale, causal)
        out[rows[:, None], cols[None, :]] = o.to(out.dtype)
    return out


def padding_groups(valid: torch.Tensor):
    """(rows, cols) per padding pattern of ``valid`` [B, T]: the sequences sharing it and their real tokens
    (patterns without a real token are skipped)."""
    patterns, which = torch.unique(valid, dim=0, return_inverse=True)
    for i in range(patterns.shape[0]):
        cols = patterns[i].nonzero().flatten()
        if cols.numel():
            yield (which == i).nonzero().flatten(), cols


def local_mask(q_pos, k_pos, rule, causal: bool) -> torch.Tensor:
    """Boolean [B, T_q, T_k] of the keys a Local rule lets each query see (window ∪ sinks, real keys only).

    Used where the fast path does not apply (a decoding step with T_q != T_k).
    """
    inside = in_window(q_pos.coord, k_pos.coord, k_pos.extent, min(rule.window, 1 << 30), causal)
    length = k_pos.length[:, None]
    sink = torch.zeros_like(k_pos.rank, dtype=torch.bool)
    for s in rule.sinks:
        target = torch.full_like(length, s) if s >= 0 else length + s
        sink |= k_pos.rank == target
    allowed = inside | sink[:, None, :]
    if causal:
        allowed &= k_pos.rank[:, None, :] <= q_pos.rank[:, :, None]
    return allowed & (k_pos.rank >= 0)[:, None, :]


def converted_probs(q, k, q_pos, k_pos, rule, scale: float, causal: bool) -> torch.Tensor:
    """The attention probabilities a Local/Hybrid head runs, as a map over the call's keys.

    Shapes:
        q: [B, T_q, H, D]   k: [B, T_k, H, D]   q_pos, k_pos: :class:`glocal.hooks.Positions`   →   [B, H, T_q, T_k]

    Local: softmax over the window and sinks (:func:`local_mask`). Hybrid: the window, the sinks and the
    pooled blocks share one softmax; a block's probability is spread evenly over its tokens, so that
    ``probs @ v`` is the head's output (a block's value is its tokens' mean). Rows of padded queries are
    those of the mask (sinks only, or all zero).

    Example:
        >>> import torch
        >>> from glocal.hooks import positions_1d
        >>> from glocal.convert import Hybrid, converted_attention, converted_probs
        >>> q, k, v = torch.randn(3, 1, 20, 2, 8).unbind(0)
        >>> pos = positions_1d(torch.ones(1, 20, dtype=torch.bool))
        >>> p = converted_probs(q, k, pos, pos, Hybrid(5, (0,), 4), 0.3, False)
        >>> out = converted_attention(q, k, v, Hybrid(5, (0,), 4), 0.3)
        >>> torch.allclose(p @ v.transpose(1, 2), out.transpose(1, 2), atol=1e-5)
        True
    """
    compute = compute_dtype(q)
    q, k = q.to(compute), k.to(compute)
    tk = k.shape[1]
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    s = s.masked_fill(~local_mask(q_pos, k_pos, rule, causal)[:, None], -float("inf"))
    if not isinstance(rule, Hybrid):
        return masked_softmax(s)[0]
    # Blocks of `global_branch` real tokens (by rank), as in the conversion's pooled branch.
    g = rule.global_branch
    valid = k_pos.rank >= 0
    counts, first = _block_layout(valid.sum(1), g, k.device)
    counts = counts.to(compute)
    k_pool = torch.zeros(k.shape[0], counts.shape[1], *k.shape[2:], dtype=compute, device=k.device)
    for b in range(k.shape[0]):
        real = valid[b].nonzero().flatten()  # real keys in rank order
        if real.numel():
            pooled = pool_tokens(k[b:b + 1, real], g)[0]
            k_pool[b, :pooled.shape[0]] = pooled
    block = torch.where(valid, k_pos.rank // g, torch.zeros_like(k_pos.rank))  # [B, T_k]
    first = first.double()
    centre = (first + (counts.double() - 1) / 2).round()
    centre = torch.where(counts > 0, centre, torch.full_like(centre, float("nan")))
    blocks_ok = ~in_window(q_pos.coord, centre[..., None], k_pos.extent, rule.window, causal)
    blocks_ok &= (counts > 0)[:, None, :] & (q_pos.rank >= 0)[:, :, None]
    if causal:
        blocks_ok &= (first + counts.double() - 1)[:, None, :] <= q_pos.rank[:, :, None]
    sp = torch.einsum("bqhd,bnhd->bhqn", q, k_pool) * scale + torch.log(counts.clamp_min(1))[:, None, None, :]
    sp = sp.masked_fill(~blocks_ok[:, None], -float("inf"))
    p = masked_softmax(torch.cat([s, sp], -1))[0]
    p_keys, p_blocks = p[..., :tk], p[..., tk:] / counts.clamp_min(1)[:, None, None, :]
    spread = p_blocks.gather(-1, block[:, None, None, :].expand(*p_keys.shape))
    return p_keys + spread * valid[:, None, None, :]


# --------------------------------------------------------------------------------------------------- many heads
# A converted layer mixes rules (Local(17), Local(65) with sinks, Hybrid(65), ...). Running each rule group
# through converted_attention costs a neighborhood call, a masked sink branch and a masked block branch
# per group, which at 512 tokens is more than the dense attention it replaces. fused_attention runs all
# heads of a layer that have a Local/Hybrid rule together:
#
# - one neighborhood call per distinct window (sinks and Hybrid blocks do not split a call). Heads with
#   different windows cannot share a call: running the largest window for all would change the smaller
#   windows' key sets;
# - the sinks and pooled blocks of all heads are extra keys of one score matrix per kind (sinks only;
#   sinks and blocks), with a per-head, per-query bias: ln(block length) for a Hybrid head's block and 0
#   for a sink, kept where the query's window leaves the sink or the block's centre out (exactly
#   converted_attention's rule: no key counted twice), dropped elsewhere; merged into the neighborhood
#   result in the same softmax through its lse;
# - sequences up to DENSE_MAX_TOKENS real tokens run all heads as one dense SDPA call instead (the window
#   and the sinks as a per-head mask, the pooled blocks appended as keys).
#
# The exponentials never see -inf: this CPU's exp is ~20x slower on -inf (and on arguments whose result
# underflows) than on ordinary values, so dropped entries are multiplied by 0 around a finite exp.
# Masks and biases depend only on the length, the windows and the rules, so they are built once and cached.

# Measured (benchmarks/convert_speed.py, docs/analysis.md): below this many real tokens one dense call for
# all converted heads beats a neighborhood call per window.
DENSE_MAX_TOKENS = 128
# Above it and up to BANDED_MAX_TOKENS, heads whose windows are at most BAND_BLOCK + 1 run as one flash
# call per rule over blocks of BAND_BLOCK queries, each block against the slab of keys the rule's window
# covers (block + window - 1) plus its extra keys (sinks, pooled blocks) with one bias shared by the
# heads: up to twice the window's work, at the flash kernel's rate, and no merges. A call per rule
# beats one call for all heads (slab of the widest window, per-head bias read from memory at every
# layer). Measured on the Xeon (heads of 32, 512 tokens, best of 100 interleaved): 10 x Local(65,
# sinks) 1.14 ms against 1.53 with one call for all heads and 2.35 for SDPA over all 12; windows of 129
# and the pooled blocks of Hybrid heads past 1024 tokens are faster through the neighborhood calls.
BANDED_MAX_TOKENS = 1024
BAND_BLOCK = 64


def _head_key(rule, length: int) -> tuple:
    """What a head adds to its window at this length: (sink positions, Hybrid block length or 0)."""
    blocks = rule.global_branch if isinstance(rule, Hybrid) and rule.window < length else 0
    return tuple(_sink_positions(rule.sinks, length)), blocks


def _kind(key: tuple) -> int:
    """0: window only; 1: window and sinks; 2: window, sinks and pooled blocks."""
    return 2 if key[1] else int(bool(key[0]))


def _window_ok(length: int, window: int, k_pos: torch.Tensor, causal: bool) -> torch.Tensor:
    """[L, S] bool: key positions ``k_pos`` (float64 [S]) inside each query's window (:func:`in_window`)."""
    pos = torch.arange(length, dtype=torch.float64, device=k_pos.device)
    extent = torch.tensor([[float(length)]], dtype=torch.float64, device=k_pos.device)
    return in_window(pos[None, :, None], k_pos[None, :, None], extent, window, causal)[0]


def _sinks_ok(length: int, window: int, sinks: list, causal: bool, device) -> torch.Tensor:
    """[L, S] bool: the sinks a query attends besides its window (left out where the window holds them)."""
    s_pos = torch.tensor(sinks, dtype=torch.float64, device=device)
    ok = ~_window_ok(length, window, s_pos, causal)
    if causal:
        ok &= s_pos[None, :] <= torch.arange(length, device=device)[:, None]
    return ok


def _blocks_ok(length: int, window: int, g: int, causal: bool, device):
    """([L, n] bool, ln(count) [n]): the blocks of ``g`` tokens a query attends, and their score offsets."""
    counts, first = _block_layout(torch.tensor([length]), g, device)
    counts = counts[0].double()
    centre = first + (counts - 1) / 2
    ok = ~_window_ok(length, window, centre.round(), causal)
    if causal:
        ok &= (first + counts - 1)[None, :] <= torch.arange(length, device=device)[:, None]
    return ok, torch.log(counts)


@functools.lru_cache(maxsize=256)
def _extra_keys(length: int, windows: tuple, keys: tuple, causal: bool, device: str, dtype: torch.dtype):
    """The extra keys of some heads: (sink index [S_1] or None, block lengths, offset, keep, drop), each [L, h, S].

    Columns: the sinks of any of the heads, then the blocks of each block length. ``keep`` is 1 where the
    head attends the column for that query, else 0 (``drop`` is then 0, else -inf); ``offset`` is the
    column's score offset (ln count) where kept.
    """
    with torch.inference_mode(False), torch.no_grad():  # cached, so usable inside and outside inference mode
        sinks = sorted({p for head_sinks, _ in keys for p in head_sinks})
        block_lengths = sorted({g for _, g in keys if g})
        oks, offsets = [], []
        for window, (head_sinks, head_blocks) in zip(windows, keys):
            ok, offset = [], []
            if sinks:
                has = torch.tensor([p in head_sinks for p in sinks], device=device)
                ok.append(_sinks_ok(length, window, sinks, causal, device) & has)
                offset.append(torch.zeros(len(sinks), dtype=torch.float64, device=device))
            for g in block_lengths:
                blocks, log_counts = _blocks_ok(length, window, g, causal, device)
                ok.append(blocks & (head_blocks == g))
                offset.append(log_counts)
            oks.append(torch.cat(ok, -1))
            offsets.append(torch.cat(offset))
        keep = torch.stack(oks, 1)  # [L, h, S]
        offset = torch.stack(offsets)[None].expand_as(keep)
        index = torch.tensor(sinks, device=device) if sinks else None
        drop = torch.where(keep, 0.0, -math.inf)
        return index, block_lengths, (offset * keep).to(dtype).contiguous(), keep.to(dtype), drop.to(dtype)


def _merge_extra_keys(q, k, v, out, lse, extras, scale: float):
    """One softmax over each query's window (``out``, ``lse`` from the neighborhood call) and its extra keys.

    q, k, v: [n, L, h, D] real tokens of the heads; out: [n, L, h, D_v]; lse: [n, L, h] → [n, L, h, D_v].
    """
    index, block_lengths, offset, keep, drop = extras
    compute = compute_dtype(q)
    extra_k = ([k.index_select(1, index)] if index is not None else []) + [pool_tokens(k, g) for g in block_lengths]
    extra_v = ([v.index_select(1, index)] if index is not None else []) + [pool_tokens(v, g) for g in block_lengths]
    extra_k = torch.cat(extra_k, 1).to(compute) if len(extra_k) > 1 else extra_k[0].to(compute)
    extra_v = torch.cat(extra_v, 1).to(compute) if len(extra_v) > 1 else extra_v[0].to(compute)
    scores = torch.add(offset, torch.einsum("nlhd,nshd->nlhs", q.to(compute), extra_k), alpha=scale)
    # The shift (the largest attended score, the window's lse included) cancels out of the result, so it
    # carries no gradient; the window always holds a key, so it is finite. Dropped columns are -inf only
    # where compared; they enter the exp as 0 and leave it multiplied by 0.
    shift = torch.maximum(lse, (scores + drop).amax(-1)).detach()
    weights = torch.exp((scores - shift[..., None]) * keep) * keep
    window_weight = torch.exp(lse - shift)
    merged = torch.addcmul(torch.einsum("nlhs,nshd->nlhd", weights, extra_v), out.to(compute), window_weight[..., None])
    return (merged / (window_weight + weights.sum(-1))[..., None]).to(q.dtype)


@functools.lru_cache(maxsize=64)
def _dense_bias(length: int, windows: tuple, keys: tuple, causal: bool, device: str, dtype: torch.dtype):
    """(block lengths, bias [h, L, L + blocks]) of heads run as one dense call: window ∪ sinks over the tokens
    (a boolean union, so a sink inside the window is one key), then the pooled blocks with ln(count)."""
    with torch.inference_mode(False), torch.no_grad():
        pos = torch.arange(length, dtype=torch.float64, device=device)
        block_lengths = sorted({g for _, g in keys if g})
        biases = []
        for window, (sinks, head_blocks) in zip(windows, keys):
            ok = _window_ok(length, window, pos, causal)
            if sinks:
                sink = torch.zeros(length, length, dtype=torch.bool, device=device)
                sink[:, list(sinks)] = True
                if causal:
                    sink &= pos[None, :] <= pos[:, None]
                ok |= sink
            columns = [torch.where(ok, 0.0, -math.inf).double()]
            for g in block_lengths:
                blocks, log_counts = _blocks_ok(length, window, g, causal, device)
                columns.append(torch.where(blocks & (head_blocks == g), log_counts, -math.inf))
            biases.append(torch.cat(columns, -1))
        return block_lengths, torch.stack(biases).to(dtype).contiguous()


def _dense_heads(q, k, v, dense: tuple, scale: float) -> torch.Tensor:
    """Heads as one SDPA call with a per-head mask (window ∪ sinks) and the pooled blocks as extra keys."""
    block_lengths, bias = dense
    compute = compute_dtype(q)
    keys = torch.cat([k] + [pool_tokens(k, g) for g in block_lengths], 1).to(compute)
    values = torch.cat([v] + [pool_tokens(v, g) for g in block_lengths], 1).to(compute)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.to(compute).transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2), attn_mask=bias, scale=scale)
    return out.transpose(1, 2).to(q.dtype)


def _head_keys_ok(length: int, window: int, sinks: tuple, causal: bool, pos: torch.Tensor) -> torch.Tensor:
    """[L, L] bool: the tokens a head attends (its window ∪ its sinks, causal-limited), as in :func:`_dense_bias`."""
    ok = _window_ok(length, window, pos, causal)
    if sinks:
        sink = torch.zeros_like(ok)
        sink[:, list(sinks)] = True
        if causal:
            sink &= pos[None, :] <= pos[:, None]
        ok |= sink
    return ok


@functools.lru_cache(maxsize=64)
def _banded(length: int, heads: tuple, total: int, window: int, key: tuple, causal: bool, device: str,
            dtype: torch.dtype) -> dict:
    """How ``heads`` (of ``total``), which share one rule, run as one flash call over blocks of BAND_BLOCK queries.

    Block b's keys are a slab, the run of S tokens its queries' windows cover, then the rule's sinks, then its
    pooled blocks. Returns the rows of a ``[L * total, D]`` view of a heads-last tensor that make the call's
    operands in one gather each: ``query_rows`` [nb, h, BAND_BLOCK] (the last block's rows past the end
    repeat the last token) and ``key_rows`` [nb, h, S + E]; ``out_rows`` and ``kept``: where the call's real
    output rows go and which they are (``kept`` None when L is a multiple of the block); the block length of
    the pooled keys (0: none), the head index, and the bias [nb, 1, BAND_BLOCK, S + E + blocks], shared by
    the heads (:func:`_dense_bias` on those columns, a sink column dropped where the slab already holds that
    token, so it is one key).
    """
    with torch.inference_mode(False), torch.no_grad():  # cached, so usable inside and outside inference mode
        pos = torch.arange(length, dtype=torch.float64, device=device)
        blocks = -(-length // BAND_BLOCK)
        padded_rows = torch.arange(blocks * BAND_BLOCK, device=device).view(blocks, BAND_BLOCK)
        rows = padded_rows.clamp(max=length - 1)
        cover = _window_ok(length, window, pos, causal)[rows].any(1)  # [nb, L]
        first = cover.int().argmax(1)
        last = length - 1 - cover.flip(1).int().argmax(1)
        span = int((last - first + 1).max())
        slab = first.clamp(max=length - span)[:, None] + torch.arange(span, device=device)
        sinks, block_length = key
        ok = _head_keys_ok(length, window, sinks, causal, pos)[rows]  # [nb, BAND_BLOCK, L]
        columns, tokens = [ok.gather(2, slab[:, None, :].expand(-1, BAND_BLOCK, -1))], slab
        if sinks:
            sink_index = torch.tensor(sinks, dtype=torch.long, device=device)
            in_slab = (sink_index[None, :] >= slab[:, :1]) & (sink_index[None, :] <= slab[:, -1:])
            columns.append(ok[:, :, sink_index] & ~in_slab[:, None, :])
            tokens = torch.cat([slab, sink_index.expand(blocks, -1)], 1)
        bias = [torch.where(torch.cat(columns, -1), 0.0, -math.inf).double()]
        if block_length:
            block_ok, log_counts = _blocks_ok(length, window, block_length, causal, device)
            bias.append(torch.where(block_ok[rows], log_counts, -math.inf))
        head = torch.tensor(heads, dtype=torch.long, device=device)[None, :, None]
        query_rows = (rows[:, None, :] * total + head).reshape(-1)
        kept = None
        if blocks * BAND_BLOCK > length:
            kept = (padded_rows < length)[:, None, :].expand(-1, len(heads), -1).reshape(-1).nonzero().squeeze(1)
        return dict(query_rows=query_rows, key_rows=(tokens[:, None, :] * total + head).reshape(-1),
                    out_rows=query_rows if kept is None else query_rows[kept], kept=kept,
                    shape=(blocks, len(heads), tokens.shape[1]), block_length=block_length, heads=head.view(-1),
                    bias=torch.cat(bias, -1)[:, None].to(dtype).contiguous())


def _banded_heads(q, k, v, banded: dict, scale: float, out: torch.Tensor) -> None:
    """Write the heads of :func:`_banded` into ``out``, one flash call over blocks of queries; q, k, v, out:
    [n, L, H, D] (out contiguous)."""
    n, length, total, _ = q.shape
    blocks, heads, width = banded["shape"]
    compute = compute_dtype(q)

    def rows_of(index, size):  # rows of one sequence in a flat tensor of `size` rows per sequence -> all n
        return index if n == 1 else (index[None] + torch.arange(n, device=q.device)[:, None] * size).reshape(-1)

    def gathered(x, index, count):  # x[n, L, H, D] -> [n * nb, h, count, D], one gather
        return x.reshape(-1, x.shape[-1]).index_select(0, rows_of(index, length * total)) \
            .view(n * blocks, heads, count, -1)

    def keys_of(x):
        keys = gathered(x, banded["key_rows"], width)
        if banded["block_length"]:
            pooled = pool_tokens(x.index_select(2, banded["heads"]), banded["block_length"]).transpose(1, 2)
            pooled = pooled[:, None].expand(n, blocks, *pooled.shape[1:]).flatten(0, 1)  # [n * nb, h, blocks, D]
            keys = torch.cat([keys, pooled], 2)
        return keys.to(compute)

    queries = gathered(q, banded["query_rows"], BAND_BLOCK).to(compute)
    bias = banded["bias"] if n == 1 else banded["bias"].repeat(n, 1, 1, 1)
    o = torch.nn.functional.scaled_dot_product_attention(queries, keys_of(k), keys_of(v), attn_mask=bias,
                                                         scale=scale).reshape(-1, v.shape[-1])
    if banded["kept"] is not None:  # the last block's rows past the end
        o = o.index_select(0, rows_of(banded["kept"], blocks * heads * BAND_BLOCK))
    out.view(-1, out.shape[-1]).index_copy_(0, rows_of(banded["out_rows"], length * total), o.to(out.dtype))


def _heads_at(heads: list[int], device: str):
    """Heads as an index: a slice when they are a run, else an index tensor."""
    if heads == list(range(heads[0], heads[0] + len(heads))):
        return slice(heads[0], heads[0] + len(heads))
    # Cached in _layout: an index made inside inference mode could not be saved for a later backward.
    with torch.inference_mode(False):
        return torch.tensor(heads, device=device)


def _take(x: torch.Tensor, at) -> torch.Tensor:
    """x[:, :, at] (heads axis): a view for a slice, else a copy."""
    return x[:, :, at] if isinstance(at, slice) else x.index_select(2, at)


def _put(out: torch.Tensor, at, x: torch.Tensor) -> None:
    if isinstance(at, slice):
        out[:, :, at] = x
    else:
        out.index_copy_(2, at, x.to(out.dtype))


@dataclass(frozen=True)
class _Layout:
    """How a layer's converted heads run at one length: which heads, in which calls (built once, cached).

    ``order`` takes the converted heads out of q in run order (heads of one window together, each kind
    together inside a window); ``runs`` are (start, stop, window) of the neighborhood calls over that
    order; ``parts`` are (positions in the order, heads of the output, extra keys or None); ``dense`` is
    set when all heads run as one dense call ((block lengths, bias), ``order`` then holds them all);
    ``banded`` when they run as flash calls over blocks of queries, one per rule (the arguments of :func:`_banded`,
    whose larger result has a cache of its own).
    """

    order: object
    runs: tuple = ()
    parts: tuple = ()
    dense: tuple | None = None
    banded: tuple | None = None


@functools.lru_cache(maxsize=256)
def _layout(length: int, rules: tuple, causal: bool, device: str, dtype: torch.dtype, dense_max: int,
            banded_max: int) -> _Layout:
    heads = [h for h, r in enumerate(rules) if r is not None]
    window = {h: min(rules[h].window, length) for h in heads}
    key = {h: _head_key(rules[h], length) for h in heads}
    windows, keys = tuple(window[h] for h in heads), tuple(key[h] for h in heads)
    if len(set(window.values())) > 1 and length <= dense_max:
        return _Layout(_heads_at(heads, device), dense=_dense_bias(length, windows, keys, causal, device, dtype))
    if dense_max < length <= banded_max and max(windows) <= BAND_BLOCK + 1:
        groups: dict = {}
        for h in heads:
            groups.setdefault((window[h], key[h]), []).append(h)
        return _Layout(None, banded=tuple((length, tuple(hs), len(rules), w, kk, causal, device, dtype)
                                          for (w, kk), hs in groups.items()))
    heads.sort(key=lambda h: (window[h], _kind(key[h])))
    runs, start = [], 0
    while start < len(heads):
        stop = start
        while stop < len(heads) and window[heads[stop]] == window[heads[start]]:
            stop += 1
        runs.append((start, stop, window[heads[start]]))
        start = stop
    parts = []
    for kind in (0, 1, 2):
        at = [i for i, h in enumerate(heads) if _kind(key[h]) == kind]
        if at:
            extras = _extra_keys(length, tuple(window[heads[i]] for i in at), tuple(key[heads[i]] for i in at),
                                 causal, device, dtype) if kind else None
            parts.append((_heads_at(at, device), _heads_at([heads[i] for i in at], device), extras))
    return _Layout(_heads_at(heads, device), tuple(runs), tuple(parts))


def _fused_packed(q, k, v, rules: list, scale: float, causal: bool, out: torch.Tensor) -> None:
    """Write the heads that have a rule into ``out``; q, k, v, out: [n, L, H, D] of real tokens only."""
    length = q.shape[1]
    layout = _layout(length, tuple(rules), causal, str(q.device), compute_dtype(q), DENSE_MAX_TOKENS,
                     BANDED_MAX_TOKENS)
    # The converted heads are gathered once in run order; each neighborhood call takes a run of them, and the
    # sinks and blocks of each kind are merged in one score matrix (fewer, larger calls beat fewer copies).
    if layout.banded is not None:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # the groups' gathers read flat rows
        for group in layout.banded:
            _banded_heads(q, k, v, _banded(*group), scale, out)
        return
    qc, kc, vc = _take(q, layout.order), _take(k, layout.order), _take(v, layout.order)
    if layout.dense is not None:
        _put(out, layout.order, _dense_heads(qc, kc, vc, layout.dense, scale))
        return
    outs, lses = [], []
    for start, stop, window in layout.runs:
        o, lse = na1d(qc[:, :, start:stop], kc[:, :, start:stop], vc[:, :, start:stop], kernel_size=window,
                      is_causal=causal, scale=scale, return_lse=True)
        outs.append(o)
        lses.append(lse)
    oc = torch.cat(outs, 2) if len(outs) > 1 else outs[0]
    lc = torch.cat(lses, 2) if len(lses) > 1 else lses[0]
    for at, heads, extras in layout.parts:
        o = _take(oc, at)
        if extras is not None:
            o = _merge_extra_keys(_take(qc, at), _take(kc, at), _take(vc, at), o, _take(lc, at), extras, scale)
        _put(out, heads, o)


def _fused_padded(q, k, v, rules: list, scale: float, causal: bool, valid, out) -> None:
    """:func:`_fused_packed` over the real tokens of each padding pattern (sequences sharing one run together)."""
    for rows, cols in padding_groups(valid):
        take = lambda x: x[rows[:, None], cols[None, :]]  # noqa: E731  [n, L, H, D]
        packed = q.new_zeros(rows.numel(), cols.numel(), q.shape[2], v.shape[-1])
        _fused_packed(take(q), take(k), take(v), rules, scale, causal, packed)
        out[rows[:, None], cols[None, :]] = packed  # heads without a rule stay 0


def fused_attention(q, k, v, rules, scale: float, causal: bool = False, valid=None):
    """Every head that has a Local/Hybrid rule, in as few calls as possible; per head equal to
    :func:`converted_attention`.

    Shapes:
        q: [B, T, H, D]   k: [B, T, H, D]   v: [B, T, H, D_v]   valid: [B, T] bool (None = all real)
        rules: H entries, a Local/Hybrid rule or None per head; returns [B, T, H, D_v]; heads without a rule
        and rows of padded queries are 0.

    Heads that share a window run as one neighborhood call; every head's sinks and pooled blocks are extra
    keys of one score matrix with a per-query bias, merged in the same softmax. Sequences of up to
    ``DENSE_MAX_TOKENS`` real tokens run all heads as one dense call with a per-head mask; up to
    ``BANDED_MAX_TOKENS``, heads with windows of at most ``BAND_BLOCK + 1`` run as one flash call per rule
    over blocks of queries. Rules of other types (subclasses too) run through their own ``attend``.

    Example:
        >>> import torch
        >>> from glocal.convert.rules import Hybrid, Local, converted_attention, fused_attention
        >>> q, k, v = torch.randn(3, 2, 300, 4, 16).unbind(0)
        >>> rules = [Local(17, (0, -1)), None, Hybrid(65, (0, -1), 16), Local(65)]
        >>> out = fused_attention(q, k, v, rules, scale=0.25)
        >>> one = converted_attention(q[:, :, 2:3], k[:, :, 2:3], v[:, :, 2:3], rules[2], scale=0.25)
        >>> torch.allclose(out[:, :, 2:3], one, atol=1e-5), bool(out[:, :, 1].eq(0).all())
        (True, True)
    """
    rules = list(rules)
    out = q.new_zeros(*q.shape[:3], v.shape[-1])
    others: dict = {}
    for h, r in enumerate(rules):
        if r is not None and type(r) not in (Local, Hybrid):
            others.setdefault(r, []).append(h)
            rules[h] = None
    if any(r is not None for r in rules):
        if valid is None or bool(valid.all()):
            _fused_packed(q, k, v, rules, scale, causal, out)
        else:
            _fused_padded(q, k, v, rules, scale, causal, valid, out)
    for rule, hs in others.items():
        out[:, :, hs] = rule.attend(q[:, :, hs], k[:, :, hs], v[:, :, hs], scale, causal, valid).to(out.dtype)
    return out
