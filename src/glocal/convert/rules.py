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
:meth:`Local.probs`, :meth:`Local.mask`), so they never import this package.

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
    patterns, which = torch.unique(valid, dim=0, return_inverse=True)
    for i in range(patterns.shape[0]):
        rows = (which == i).nonzero().flatten()
        cols = patterns[i].nonzero().flatten()
        if cols.numel() == 0:
            continue
        take = lambda x: x[rows][:, cols]  # noqa: E731  [n, L, H, D]
        o = _packed(take(q), take(k), take(v), rule, scale, causal)
        out[rows[:, None], cols[None, :]] = o.to(out.dtype)
    return out


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
