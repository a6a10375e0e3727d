"""Mixture-of-Head attention (MoH, Jin et al. 2024): shared heads for every token, routed heads for their choosers.

Shapes: x [B, T, dim] -> [B, T, dim]; dim is split into H = num_heads heads of D = dim // H channels,
the first S = shared_heads shared, the other E = H - S routed; each token picks K = routed_top_k of
them. Gates: [B, T, H]. See docs/moh.md for the formulas.

Example:
    >>> import torch
    >>> from glocal.nn.moh import MoHAttention
    >>> layer = MoHAttention(dim=64, num_heads=8, shared_heads=2, routed_top_k=2)
    >>> layer(torch.randn(2, 30, 64)).shape, layer.aux_loss.shape
    (torch.Size([2, 30, 64]), torch.Size([]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..checks.decoding import cache_decodable, cache_kind
from ..checks.moh import moh_args
from ..decoding import KVCache
from ..numerics import compute_dtype, resolve_scale
from .attention import _QKVModule

# Causal routed heads run their gathered queries in chunks of this many rows: the boolean mask of a
# chunk is [B, 1, rows, keys] (bounded memory), and a chunk only needs the keys up to its last
# query's position, which recovers most of the causal saving that dense SDPA gets from is_causal.
QUERY_CHUNK = 128


def _top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean [..., E]: the k highest scores of each row; ties go to the lower index (a stable sort keeps order)."""
    chosen = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.zeros_like(scores, dtype=torch.bool).scatter(-1, chosen, True)


def _sdpa(q, k, v, scale, is_causal=False, attn_mask=None):
    """F.scaled_dot_product_attention on [B, H, T, D] tensors (SDPA's own layout, no copy to heads-last)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)


class MoHAttention(_QKVModule):
    """Mixture-of-Head self-attention layer over sequences (MoH, Jin et al. 2024), causal optional.

    Shapes: x: [B, T, dim] -> [B, T, dim]; gates(x): [B, T, num_heads]; aux_loss: [] (a scalar tensor).

    The first ``shared_heads`` heads run for every token; a per-token router picks
    ``routed_top_k`` of the other E = num_heads - shared_heads heads, and those run only for the
    tokens that picked them (their queries are gathered; keys and values are every token's).
    out = proj(concat_h gate_h * head_h), gate 0 for a routed head a token did not pick.

    router="learned" (MoH): routed gates = softmax of W_r x over the E routed heads, kept on the
    selected ones, renormalised and times routed_top_k (they sum to routed_top_k); shared gates =
    softmax of W_s x over the shared heads times shared_heads (they sum to shared_heads; one
    shared head has gate 1 and no W_s); [a_s, a_r] = 2 * softmax(W_h x) multiplies the shared and
    the routed gates (no W_h when shared_heads = 0). A uniform router gives every head it runs
    gate 1. router="query_norm" (MoH-LLaMA3): the routed heads with the largest L2 norm of the
    token's query, gates 1 (shared and selected) or 0, no parameters. Ties go to the lower head
    index. The selection is not differentiated; the gates are.

    ``aux_loss``, set by every forward (None before the first): the load-balance loss
    E * sum_i f_i * P_i over the routed heads, f_i the fraction of tokens (batch and time) that
    picked head i and P_i the mean routed softmax probability of head i; 0 for query_norm.
    ``forward_dense`` computes the same output running every head for every token.

    Example:
        >>> import torch
        >>> from glocal.nn.moh import MoHAttention
        >>> layer = MoHAttention(dim=64, num_heads=8, shared_heads=2, routed_top_k=2, is_causal=True)
        >>> x = torch.randn(2, 50, 64)
        >>> y = layer(x)
        >>> loss = y.square().mean() + 0.01 * layer.aux_loss
        >>> torch.allclose(y, layer.forward_dense(x), atol=1e-5)
        True
        >>> (layer.gates(x) != 0).sum(-1).unique()  # 2 shared + 2 routed heads per token
        tensor([4])
    """

    def __init__(self, dim, num_heads, shared_heads, routed_top_k, router="learned", is_causal=False, qkv_bias=True,
                 qk_scale=None, proj_drop=0.0):
        super().__init__(dim, num_heads, qkv_bias, proj_drop)
        moh_args(num_heads, shared_heads, routed_top_k, router)
        checks.causal_flag(is_causal)
        checks.scale(qk_scale)
        self.shared_heads, self.routed_top_k, self.router = int(shared_heads), int(routed_top_k), router
        self.routed_heads = num_heads - self.shared_heads
        self.is_causal, self.scale = is_causal, qk_scale
        # MoH's router has no biases; a gate that is constant (one shared head, or no shared group
        # to mix with) gets no weight at all rather than one that never learns.
        learned = router == "learned"
        self.routed_gate = nn.Linear(dim, self.routed_heads, bias=False) if learned else None
        self.shared_gate = nn.Linear(dim, self.shared_heads, bias=False) if learned and self.shared_heads > 1 else None
        self.mix_gate = nn.Linear(dim, 2, bias=False) if learned and self.shared_heads > 0 else None
        self.aux_loss = None

    def _route(self, x, q):
        """(gates [B, T, H] in x's dtype, selected [B, T, E] bool, aux_loss []) for x [B, T, dim], q [B, T, H, D]."""
        shared_heads, k = self.shared_heads, self.routed_top_k
        compute = compute_dtype(x)
        if self.router == "query_norm":
            selected = _top_k_mask(q[:, :, shared_heads:].detach().to(compute).norm(dim=-1), k)
            shared = x.new_ones(*x.shape[:-1], shared_heads)
            gates = torch.cat([shared, selected.to(x.dtype)], -1)
            return gates, selected, x.new_zeros(())
        logits = self.routed_gate(x).to(compute)
        probs = logits.softmax(-1)
        selected = _top_k_mask(logits.detach(), k)
        kept = probs * selected
        # The argmax is always selected and its probability is at least 1 / E, so the sum is never 0.
        routed = kept / kept.sum(-1, keepdim=True) * k
        if self.shared_gate is not None:
            shared = self.shared_gate(x).to(compute).softmax(-1) * shared_heads
        else:
            shared = torch.ones_like(logits[..., :shared_heads])
        if self.mix_gate is not None:
            # Times 2 so that an even mix (0.5, 0.5) leaves every gate of a uniform router at 1.
            mix = self.mix_gate(x).to(compute).softmax(-1) * 2
            shared, routed = shared * mix[..., :1], routed * mix[..., 1:]
        fraction = selected.to(compute).mean((0, 1))  # f_i: counts, not differentiable
        mean_prob = probs.mean((0, 1))  # P_i: carries the gradient to the router
        aux = self.routed_heads * (fraction * mean_prob).sum()
        return torch.cat([shared, routed], -1).to(x.dtype), selected, aux

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """The per-token head gates ``[B, T, num_heads]`` for x ``[B, T, dim]`` (0 for a routed head not picked)."""
        checks.module_input(x, self.dim, 1)
        q = self._qkv(x)[0] if self.router == "query_norm" else None
        return self._route(x, q)[0]

    def _routed_head(self, q, k, v, gate, chosen, scale):
        """One routed head, run for its choosers only: q, k, v [B, T, D], gate [B, T], chosen [B, T] bool -> [B, T, D].

        Each batch row's choosers are gathered into rows 0..count-1 (time order); every batch row
        is padded to the largest count with positions it did not choose, whose gate is 0, so one
        SDPA call serves the whole batch and the padding adds nothing to the output.
        """
        batch, length, head_dim = q.shape
        count = chosen.sum(1)
        n = int(count.max())
        if n == 0:
            return torch.zeros_like(q)
        rows = torch.sort(chosen.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :n]  # [B, n]
        index = rows[..., None].expand(-1, -1, head_dim)
        queries = torch.gather(q, 1, index)[:, None]  # [B, 1, n, D]
        keys, values = k[:, None], v[:, None]  # [B, 1, T, D]: every token is a key
        if not self.is_causal:
            out = _sdpa(queries, keys, values, scale)
        else:
            # A padding row is placed at position 0 for its mask: it then attends one key (cheap, finite).
            positions = torch.where(torch.arange(n, device=q.device) < count[:, None], rows, 0)
            pieces = []
            for start in range(0, n, QUERY_CHUNK):
                pos = positions[:, start:start + QUERY_CHUNK]
                seen = int(pos.max()) + 1  # no query of the chunk sees a key after its own position
                mask = pos[:, None, :, None] >= torch.arange(seen, device=q.device)
                pieces.append(_sdpa(queries[:, :, start:start + QUERY_CHUNK], keys[:, :, :seen], values[:, :, :seen],
                                    scale, attn_mask=mask))
            out = torch.cat(pieces, 2)
        out = out[:, 0] * torch.gather(gate, 1, rows)[..., None]
        return torch.zeros_like(q).scatter(1, index, out)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """``x -> y``; with ``cache`` (empty, from ``new_cache``; causal) the keys and values are kept: a prefill."""
        checks.module_input(x, self.dim, 1)
        if cache is not None:
            self._check_prefill(cache)
        q, k, v = self._qkv(x)  # [B, T, H, D]
        if cache is not None:
            cache.extend(k, v)
        gates, selected, self.aux_loss = self._route(x, q)
        scale = resolve_scale(self.scale, self.head_dim ** -0.5)
        shared_heads = self.shared_heads
        heads = []
        if shared_heads > 0:
            q_s, k_s, v_s = (t[:, :, :shared_heads].transpose(1, 2) for t in (q, k, v))
            shared = _sdpa(q_s, k_s, v_s, scale, is_causal=self.is_causal).transpose(1, 2)
            heads.append(shared * gates[..., :shared_heads, None])
        for e in range(self.routed_heads):
            h = shared_heads + e
            heads.append(self._routed_head(q[:, :, h], k[:, :, h], v[:, :, h], gates[..., h], selected[..., e],
                                           scale)[:, :, None])
        return self._out(torch.cat(heads, 2))

    cache_type = KVCache

    def new_cache(self, batch: int | None = None) -> KVCache:
        """The decoding cache of a causal layer: every head's keys and values (glocal.decoding.KVCache)."""
        cache_decodable(self.is_causal, "MoHAttention", "is_causal=False")
        return KVCache()

    def step(self, x_t: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One decoding step: ``x_t [B, dim] -> y_t [B, dim]``; the token is routed as in the forward.

        Every head's key and value is cached (a later token may pick any head). The one query is
        attended on every head and multiplied by its gates (0 for a routed head it did not pick): a
        head's work for one query is a read of the cache, so gathering the picked heads first would
        copy as much as it saves. Token by token it equals the causal forward. ``aux_loss`` is the
        token's own."""
        checks.module_input(x_t, self.dim, 0)
        cache_kind(cache, KVCache, "MoHAttention.step")
        q, k, v = self._qkv(x_t)  # [B, H, D]
        gates, _, self.aux_loss = self._route(x_t[:, None], q[:, None])
        out = cache.step(q, k, v, resolve_scale(self.scale, self.head_dim ** -0.5))
        return self._out(out * gates[:, 0, :, None])

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """The same output computed densely: every head for every token (one SDPA call), times the gates.

        The dense masked reference of the routed forward (a routed head a token did not pick is
        computed and multiplied by its gate 0), and the cost of a plain attention layer with the
        same heads, for benchmarks. Sets ``aux_loss`` as forward does.
        """
        checks.module_input(x, self.dim, 1)
        q, k, v = self._qkv(x)
        gates, _, self.aux_loss = self._route(x, q)
        scale = resolve_scale(self.scale, self.head_dim ** -0.5)
        out = _sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale, is_causal=self.is_causal)
        return self._out(out.transpose(1, 2) * gates[..., None])

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, shared_heads={self.shared_heads}, routed_top_k={self.routed_top_k}, "
                f"router={self.router!r}, is_causal={self.is_causal}")
