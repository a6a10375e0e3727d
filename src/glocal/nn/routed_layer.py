"""Per-sequence layer routing: one learned choice per sequence between full causal attention and sinks + window.

Shapes: x [B, T, dim] -> [B, T, dim]; step: x_t [B, dim] -> y_t [B, dim] (a RoutedCache advances).

Example:
    >>> import torch
    >>> from glocal.nn.routed_layer import RoutedLayer
    >>> layer = RoutedLayer(dim=64, num_heads=4, window=16).eval()
    >>> layer(torch.randn(3, 40, 64)).shape, layer.last_choice.shape
    (torch.Size([3, 40, 64]), torch.Size([3]))
"""

from __future__ import annotations

import torch
from torch import nn

from .. import checks
from ..checks.routed_layer import (
    routed_cache,
    routed_force,
    routed_layer_args,
    routed_sequence,
    sparsity_target,
)
from ..decoding import KVCache
from ..numerics import compute_dtype, dense_attention, merge_lse
from ..ops import attention, na1d
from .attention import _QKVModule
from .rope import rope


def window_with_sinks(q, k, v, window: int, sinks: int, scale: float | None = None) -> torch.Tensor:
    """Causal attention of each query over the ``window`` keys ending at it and the first ``sinks`` keys.

    Shapes: q [B, T, H_q, D], k [B, T, H_kv, D], v [B, T, H_kv, D_v] -> [B, T, H_q, D_v]. Key j is
    attended by query i iff i - window < j <= i or j < min(sinks, i + 1), each key once
    (StreamingLLM's sliding window with attention sinks). The window by na1d, the sinks left of it
    densely, merged by lse.

    Example:
        >>> import torch
        >>> x = torch.randn(1, 20, 2, 8)
        >>> window_with_sinks(x, x, x, window=4, sinks=2).shape
        torch.Size([1, 20, 2, 8])
    """
    length = q.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    # A causal kernel of K >= T keys is causal attention, and na1d needs K <= T.
    out, lse = na1d(q, k, v, kernel_size=min(window, length), is_causal=True, scale=scale, return_lse=True)
    sinks = min(sinks, length)
    if sinks == 0 or length <= window:  # no query has a sink left of its window
        return out
    i = torch.arange(length, device=q.device)[:, None]
    j = torch.arange(sinks, device=q.device)[None, :]
    # Only the sinks left of the window: those inside it are already in na1d's softmax.
    out_sinks, lse_sinks = dense_attention(q, k[:, :sinks], v[:, :sinks], scale, j <= i - window)
    return merge_lse([out, out_sinks], [lse, lse_sinks])[0]


class RoutedCache(KVCache):
    """What RoutedLayer.step needs of the past: every key and value so far, and the prefill's choice.

    Shapes: keys, values [B, T, H, head_dim] (keys rotated by their stream positions when the layer
    has RoPE; ``kept()`` returns them); ``choice``: bool [B], True = full attention, None until the
    prefill. The cache keeps every token, also for sparse sequences, which attend only the sinks
    and the last ``window`` of it: memory grows with T (a batch may mix both kinds). ``batch`` is
    the number of sequences it was built for.
    """

    TENSORS = ("choice",)

    def __init__(self, batch: int):
        super().__init__()
        self.batch = int(batch)
        self.options = {"batch": self.batch}


class RoutedLayer(_QKVModule):
    """Causal self-attention whose whole layer is routed per sequence: full attention, or sinks + window.

    Shapes: x: [B, T, dim] -> [B, T, dim];  router feature [B, 2 * head_dim], logit [B];
    step: x_t: [B, dim] -> y_t [B, dim] (the RoutedCache advances by one token).

    Branches: "full" is causal attention (query i attends keys 0..i); "sparse" attends the
    ``window`` most recent keys ending at itself and the first ``sinks`` tokens (each key once:
    key j is attended iff i - window < j <= i or j < min(sinks, i + 1)).

    Router: q after the projection and before RoPE (so the feature is content, not position),
    averaged over the first ``pool`` tokens and the heads, and over the last ``pool`` tokens and
    the heads, concatenated to [B, 2 * head_dim] (the two pools overlap when T < 2 * pool);
    ``router`` (a Linear) maps it to one logit per sequence, p = sigmoid(logit) the probability of
    full attention. Training: Gumbel-sigmoid, soft = sigmoid((logit + L) / temperature) with L
    logistic noise, hard = (logit + L > 0); the forward uses the hard 0/1 choice g, the gradient
    flows through soft (straight-through), and out = g * full + (1 - g) * sparse, both branches
    computed. Eval: full where p > threshold, and only the chosen branch runs for each sequence.
    ``force`` ("full" or "sparse") overrides the router for the whole batch, in training too (then
    only that branch runs and the router gets no gradient from the output).

    After each forward: ``last_choice`` (bool [B], True = full, detached) and ``last_probability``
    (p, [B], with its graph) for ``sparsity_loss``. RoPE (``rope_theta``, None for none) rotates q
    and k by their positions 0..T-1, in decoding by the absolute stream position.

    Example:
        >>> import torch
        >>> from glocal.nn.routed_layer import RoutedLayer
        >>> layer = RoutedLayer(dim=32, num_heads=2, window=8, sinks=2, pool=4).eval()
        >>> x = torch.randn(2, 20, 32)
        >>> cache = layer.new_cache(2)
        >>> y = layer(x, cache=cache)                  # the prefill routes each sequence and fills the cache
        >>> y_t = layer.step(torch.randn(2, 32), cache)
        >>> y_t.shape, cache.length, bool(torch.equal(cache.choice, layer.last_choice))
        (torch.Size([2, 32]), 21, True)
    """

    def __init__(self, dim, num_heads, window, sinks=4, pool=16, rope_theta=10000.0, temperature=1.0,
                 threshold=0.5, qkv_bias=True, proj_drop=0.0):
        super().__init__(dim, num_heads, qkv_bias, proj_drop)
        routed_layer_args(window, sinks, pool, temperature, threshold)
        checks.rat_module_args(self.head_dim, rope_theta)  # the shared RoPE rules: a base > 0, an even head dim
        self.window, self.sinks, self.pool = int(window), int(sinks), int(pool)
        self.rope_theta = None if rope_theta is None else float(rope_theta)
        self.temperature, self.threshold = float(temperature), float(threshold)
        self.router = nn.Linear(2 * self.head_dim, 1)
        self.last_choice: torch.Tensor | None = None
        self.last_probability: torch.Tensor | None = None

    def _rotate(self, x, positions):
        return x if self.rope_theta is None else rope(x, positions, self.rope_theta)

    def _logit(self, q):
        """q [B, T, H, head_dim] (before RoPE) -> one logit per sequence [B]."""
        feature = torch.cat([q[:, :self.pool].mean((1, 2)), q[:, -self.pool:].mean((1, 2))], -1)
        return self.router(feature)[:, 0]

    def _full(self, q, k, v):
        return attention(q, k, v, is_causal=True)

    def _sparse(self, q, k, v):
        return window_with_sinks(q, k, v, self.window, self.sinks)

    def _by_choice(self, q, k, v, choice):
        """Eval: each sequence runs only its chosen branch (the batch is split into the two groups)."""
        out = torch.empty_like(q)
        for branch, rows in ((self._full, choice), (self._sparse, ~choice)):
            index = rows.nonzero()[:, 0]
            if len(index) == len(rows):
                return branch(q, k, v)
            if len(index):
                out[index] = branch(q[index], k[index], v[index])
        return out

    def forward(self, x, cache=None, force=None):
        """``x [B, T, dim] -> y [B, T, dim]``; with ``cache`` (empty, from ``new_cache``) it is also filled: a prefill."""
        checks.module_input(x, self.dim, 1)
        routed_sequence(x)
        routed_force(force)
        if cache is not None:
            routed_cache(cache, RoutedCache, x.shape[0], prefill=True)
        q, k, v = self._qkv(x)
        logit = self._logit(q)
        self.last_probability = torch.sigmoid(logit.to(compute_dtype(logit)))
        positions = torch.arange(x.shape[1], device=x.device)
        q, k = self._rotate(q, positions), self._rotate(k, positions)
        if force is not None:
            choice = torch.full((x.shape[0],), force == "full", dtype=torch.bool, device=x.device)
            out = self._full(q, k, v) if force == "full" else self._sparse(q, k, v)
        elif self.training:
            u = torch.rand_like(logit).clamp(torch.finfo(logit.dtype).tiny, 1.0)
            noisy = logit + torch.log(u) - torch.log1p(-u)  # + logistic noise: P(noisy > 0) = sigmoid(logit)
            soft = torch.sigmoid(noisy / self.temperature)
            hard = (noisy > 0).to(soft.dtype)
            gate = (hard + (soft - soft.detach()))[:, None, None, None]  # value: exactly hard; gradient: soft's
            choice = hard.bool()
            out = gate * self._full(q, k, v) + (1 - gate) * self._sparse(q, k, v)
        else:
            choice = self.last_probability > self.threshold
            out = self._by_choice(q, k, v, choice)
        self.last_choice = choice.detach()
        y = self._out(out)
        if cache is not None:
            cache.extend(k, v)
            cache.choice = self.last_choice
        return y

    def new_cache(self, batch: int) -> RoutedCache:
        """An empty cache for ``batch`` sequences; the prefill (``layer(x, cache=cache)``) fills it."""
        return RoutedCache(batch)

    def step(self, x_t, cache: RoutedCache):
        """One decoding step after a prefill: ``x_t [B, dim] -> y_t [B, dim]``; never re-routes.

        Full sequences attend every cached key and the new one; sparse ones the first ``sinks``
        and the last ``window`` (the new one included), gathered, each key once. Fed token by
        token it equals the forward over the whole sequence with the prefill's choice.
        """
        checks.module_input(x_t, self.dim, 0)
        routed_cache(cache, RoutedCache, x_t.shape[0], prefill=False)
        position = torch.tensor([cache.length], device=x_t.device)
        q, k, v = self._qkv(x_t[:, None])  # [B, 1, H, head_dim]
        q, k = self._rotate(q, position), self._rotate(k, position)
        cache.extend(k, v)
        keys, values = cache.kept()
        n = keys.shape[1]
        sinks = min(self.sinks, n)
        recent = torch.arange(max(n - self.window, sinks), n, device=keys.device)
        kept = torch.cat([torch.arange(sinks, device=keys.device), recent])  # disjoint: each key once
        q = q.to(keys)
        out = torch.empty_like(q)
        for rows, index in ((cache.choice, None), (~cache.choice, kept)):
            batch = rows.nonzero()[:, 0]
            if len(batch):
                k_b, v_b = keys[batch], values[batch]
                if index is not None:
                    k_b, v_b = k_b[:, index], v_b[:, index]
                out[batch] = attention(q[batch], k_b, v_b)
        return self._out(out[:, 0].to(x_t.dtype))

    def sparsity_loss(self, target):
        """``(mean_b p_b - (1 - target)) ** 2`` over the last forward's batch, p = sigmoid(logit).

        ``target`` is the desired fraction of sequences routed to the sparse branch. p is the
        probability that the Gumbel sample picks full attention, so mean p is the expected
        fraction of full sequences; the loss is 0 when it is 1 - target. Differentiable in the
        router's parameters (and q's), through ``last_probability``.
        """
        sparsity_target(target, self.last_probability)
        return (self.last_probability.mean() - (1.0 - target)) ** 2

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, window={self.window}, sinks={self.sinks}, pool={self.pool}, "
                f"rope_theta={self.rope_theta}, temperature={self.temperature}, threshold={self.threshold}")
