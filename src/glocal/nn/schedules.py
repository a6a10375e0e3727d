"""Layer schedules: encoders and decoders whose layers' attention is chosen by a pattern string.

Shapes: x [B, T, dim] (sequences) or [B, *spatial, dim] (encoders over 2-D/3-D grids) -> the same shape.

One letter per layer: L local (neighborhood / sliding window), G global, N linear, M MoBA, R RAT,
P Parallax, H a HybridAttention layer, F a per-request routed layer (decoders); a pattern shorter
than the depth repeats. Each block is pre-norm: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``.

Example:
    >>> import torch, glocal
    >>> enc = glocal.nn.HybridEncoder(dim=64, num_heads=4, depth=3, pattern="GLL", settings={"L": {"window": 9}})
    >>> enc(torch.randn(2, 40, 64)).shape
    torch.Size([2, 40, 64])
    >>> enc.pattern
    'GLL'
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import checks
from ..checks.decoding import cache_batch, cache_decodable, cache_kind, cache_prefill
from ..decoding import (
    DecoderCache,
    KVCache,
    LinearAttentionState,
    MoBACache,
    SlidingWindowCache,
)
from ..numerics import dense_attention
from ..ops import (
    attention,
    linear_attention,
    moba_attention,
    moba_attention_nd,
    na1d,
    neighborhood_attention,
)
from .hybrid import HybridAttention
from .local_linear import ParallaxAttention
from .rat import RATAttention
from .rope import rope, rope_grid
from .routed_layer import RoutedLayer, window_with_sinks

LETTERS = {"L": "local", "G": "global", "N": "linear", "M": "MoBA", "R": "RAT", "P": "Parallax",
           "H": "hybrid", "F": "routed (full or sinks + window, per sequence)"}
ENCODER_LETTERS = "LGNMPH"
GRID_LETTERS = "LGNMH"

# Every option a letter takes, with its default. A user's settings are merged over these.
DEFAULTS = {
    "L": {"window": 129, "border": "shift", "sinks": 0, "rope_theta": 10000.0},
    "G": {"rope_theta": 10000.0},
    "N": {"feature_map": "elu1", "rope_theta": None},
    "M": {"block_size": 64, "top_k": 3, "rope_theta": 10000.0},
    "R": {"chunk_size": 16, "rope_theta": 10000.0},
    "P": {"window_size": 512, "rope_theta": 10000.0},
    # H: a compressed global branch with reduction 4 unless another branch or reduction is set.
    "H": {"kernel_size": 7, "global_branch": "compressed", "combine": "merge", "reduction": None, "dilation": 1,
          "head_branches": None, "num_global_tokens": None, "pool": None, "block_size": None, "top_k": None,
          "feature_map": None, "rope_theta": None},
    "F": {"window": 1024, "sinks": 4, "pool": 16, "rope_theta": 10000.0},
}


def banded_attention(q, k, v, radius: int, scale: float | None = None):
    """Every query attends the keys with ``|i - j| <= radius``, the band cut at the sequence's ends.

    Shapes: q [B, T, H_q, D], k [B, T, H_kv, D], v [B, T, H_kv, D_v] -> [B, T, H_q, D_v].
    glocal's neighborhood window (DESIGN.md §1) shifts inward at the borders and keeps 2r + 1 keys;
    this band (ModernBERT's and Longformer's local layers) instead gives the first and last r queries
    fewer keys. The interior is one ``na1d`` call (identical there); the 2r border queries are
    attended densely over the 2r keys at each end.

    Example:
        >>> import torch
        >>> q = k = v = torch.randn(1, 20, 2, 8)
        >>> banded_attention(q, k, v, radius=3).shape
        torch.Size([1, 20, 2, 8])
    """
    length, r = q.shape[1], radius
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    idx = torch.arange(min(length, 2 * r), device=q.device)
    band = (idx[:, None] - idx[None, :]).abs() <= r
    if length < 2 * r + 1:  # every query's band is cut by a border: one small dense attention
        idx = torch.arange(length, device=q.device)
        return dense_attention(q, k, v, scale, (idx[:, None] - idx[None, :]).abs() <= r)[0]
    out = na1d(q, k, v, kernel_size=2 * r + 1, scale=scale)  # exact for queries r .. length - r - 1
    if r == 0:
        return out
    edge = 2 * r
    head = dense_attention(q[:, :r], k[:, :edge], v[:, :edge], scale, band[:r])[0]
    tail = dense_attention(q[:, length - r:], k[:, length - edge:], v[:, length - edge:], scale, band[r:])[0]
    return torch.cat([head, out[:, r:length - r], tail], 1)


class ScheduledAttention(nn.Module):
    """The attention of one L, G, M or N layer: a qkv projection, RoPE, one glocal op, an output projection.

    Shapes: x [B, T, dim] or [B, *spatial, dim] -> the same shape.

    ``kind`` "L": a neighborhood of ``window`` keys (an int, or per axis on grids; causal: the
    ``window`` keys ending at the query, and the first ``sinks`` tokens, StreamingLLM's attention
    sinks; ``border="truncate"``: the band |i - j| <= window // 2 cut at the ends, see
    :func:`banded_attention`). "G": every key (causal: every earlier key). "M": MoBA
    (``block_size``, ``top_k``; VMoBA boxes on grids). "N": linear attention with ``feature_map`` over every
    (earlier) token. RoPE with ``rope_theta`` (None: none) rotates q and k by their positions
    (sequences) or coordinates (grids, ``rope_grid``).

    Example:
        >>> import torch
        >>> from glocal.nn.schedules import ScheduledAttention
        >>> ScheduledAttention("L", 64, 4, window=9, border="truncate")(torch.randn(1, 30, 64)).shape
        torch.Size([1, 30, 64])
    """

    def __init__(self, kind, dim, num_heads, ndim=1, is_causal=False, window=None, border="shift", sinks=0,
                 block_size=None, top_k=None, feature_map="elu1", rope_theta=10000.0, bias=True):
        super().__init__()
        checks.module_dims(dim, num_heads)
        self.kind, self.ndim, self.is_causal = kind, ndim, is_causal
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        checks.rope_dims(rope_theta, self.head_dim, ndim)
        if kind == "L":
            checks.window_border(border, window, is_causal)
            checks.window_sinks(sinks, is_causal and ndim == 1)
            window = checks.per_axis("window", window, ndim, int) if ndim > 1 else checks.positive_int("window",
                                                                                                       window)
        self.window, self.border, self.block_size, self.top_k = window, border, block_size, top_k
        self.sinks = int(sinks)
        self.feature_map = feature_map
        self.rope_theta = rope_theta
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        """``x -> y``; with ``cache`` (empty, from ``new_cache``) the layer also fills it: a prefill."""
        checks.module_input(x, self.proj.in_features, self.ndim)
        if cache is not None:
            self._check_cache(cache, "forward")
            cache_prefill(cache.length, "ScheduledAttention.forward")
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(-3)
        raw_k = k
        if self.rope_theta is not None:
            if self.ndim == 1:
                positions = torch.arange(x.shape[1], device=x.device)
                q, k = rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta)
            else:
                q, k = rope_grid(q, self.rope_theta), rope_grid(k, self.rope_theta)
        if cache is not None:  # a sliding-window cache rotates its keys itself
            cache.extend(raw_k if self.kind == "L" else k, v)
        return self.proj(self._attend(q, k, v).flatten(-2))

    def new_cache(self, batch: int, positions: str = "absolute"):
        """The decoding cache of this causal layer: L a SlidingWindowCache of ``window`` keys (``positions``
        "absolute" or "cache", StreamingLLM's re-indexing), G a KVCache, N a LinearAttentionState, M a
        MoBACache. ``batch`` is checked at each step."""
        cache_decodable(self.is_causal and self.ndim == 1, "ScheduledAttention",
                        f"kind={self.kind!r}, ndim={self.ndim}, is_causal={self.is_causal}")
        if self.kind == "L":
            return SlidingWindowCache(self.window, self.sinks, positions=positions, rope_theta=self.rope_theta)
        if self.kind == "G":
            return KVCache()
        if self.kind == "N":
            return LinearAttentionState(self.feature_map)
        return MoBACache(self.block_size, top_k=self.top_k)

    def _check_cache(self, cache, where):
        kind = {"L": SlidingWindowCache, "G": KVCache, "N": LinearAttentionState, "M": MoBACache}[self.kind]
        cache_kind(cache, kind, f"ScheduledAttention.{where}")

    def step(self, x_t: torch.Tensor, cache) -> torch.Tensor:
        """One decoding step: ``x_t [B, dim] -> y_t [B, dim]``, reading and extending ``cache``.

        Token by token after ``new_cache`` (or a prefill) it equals the causal forward over the
        whole stream (an L layer with ``positions="cache"``: the dense reference over the kept
        tokens at their re-indexed positions)."""
        checks.module_input(x_t, self.proj.in_features, 0)
        self._check_cache(cache, "step")
        q, k, v = self.qkv(x_t).unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(-3)
        if self.rope_theta is not None and self.kind != "L":
            position = torch.tensor([cache.length], device=x_t.device)
            q, k = (rope(t[:, None], position, self.rope_theta)[:, 0] for t in (q, k))
        return self.proj(cache.step(q, k, v).flatten(-2))

    def _attend(self, q, k, v):
        if self.kind == "G":
            return attention(q.flatten(1, -3), k.flatten(1, -3), v.flatten(1, -3),
                             is_causal=self.is_causal).reshape(q.shape)
        if self.kind == "N":
            flat = linear_attention(q.flatten(1, -3), k.flatten(1, -3), v.flatten(1, -3), self.feature_map,
                                    self.is_causal)
            return flat.reshape(q.shape)
        if self.kind == "M":
            if self.ndim == 1:
                return moba_attention(q, k, v, self.block_size, top_k=self.top_k, is_causal=self.is_causal)
            return moba_attention_nd(q, k, v, self.block_size, top_k=self.top_k)
        if self.ndim > 1:
            return neighborhood_attention(q, k, v, self.window)
        if self.border == "truncate" and not self.is_causal:
            return banded_attention(q, k, v, self.window // 2)
        if self.sinks:
            return window_with_sinks(q, k, v, self.window, self.sinks)
        # A window longer than the sequence covers all of it, as the band of a long window would.
        return na1d(q, k, v, kernel_size=min(self.window, q.shape[1]), is_causal=self.is_causal)

    def extra_repr(self) -> str:
        what = {"L": f"window={self.window}, border={self.border!r}, sinks={self.sinks}", "G": "",
                "N": f"feature_map={self.feature_map!r}", "M": f"block_size={self.block_size}, top_k={self.top_k}"}
        what = what[self.kind]
        return f"kind={self.kind!r}, {what + ', ' if what else ''}is_causal={self.is_causal}, rope_theta={self.rope_theta}"


class GLUMLP(nn.Module):
    """A gated MLP: ``W_o(act(x W_i) * (x W_g))`` (GeGLU with GELU, ModernBERT's MLP). x [..., dim] -> [..., dim].

    Example:
        >>> import torch
        >>> GLUMLP(16, 32)(torch.randn(2, 16)).shape
        torch.Size([2, 16])
    """

    def __init__(self, dim, hidden, bias=True):
        super().__init__()
        self.Wi = nn.Linear(dim, 2 * hidden, bias=bias)
        self.Wo = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        inner, gate = self.Wi(x).chunk(2, dim=-1)
        return self.Wo(F.gelu(inner) * gate)


class HybridBlock(nn.Module):
    """A pre-norm block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``. x [B, *, dim] -> same shape.

    Example:
        >>> import torch
        >>> from glocal.nn import Attention
        >>> HybridBlock(Attention(32, 2), 32, 64)(torch.randn(1, 10, 32)).shape
        torch.Size([1, 10, 32])
    """

    def __init__(self, attn: nn.Module, dim: int, hidden: int, mlp="gelu", bias=True, attn_norm=True):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim, bias=bias) if attn_norm else nn.Identity()
        self.attn = attn
        self.mlp_norm = nn.LayerNorm(dim, bias=bias)
        self.mlp = GLUMLP(dim, hidden, bias) if mlp == "glu" else \
            nn.Sequential(nn.Linear(dim, hidden, bias=bias), nn.GELU(), nn.Linear(hidden, dim, bias=bias))

    def forward(self, x, cache=None):
        x = x + (self.attn(self.attn_norm(x)) if cache is None else self.attn(self.attn_norm(x), cache=cache))
        return x + self.mlp(self.mlp_norm(x))

    def step(self, x_t, cache):
        """One decoding step of the block: ``x_t [B, dim] -> [B, dim]`` (the attention's ``step`` with ``cache``)."""
        x_t = x_t + self.attn.step(self.attn_norm(x_t), cache)
        return x_t + self.mlp(self.mlp_norm(x_t))


def _layer_attention(letter: str, dim: int, num_heads: int, ndim: int, is_causal: bool, options: dict, bias: bool):
    """The attention module of one layer of kind ``letter`` with that letter's ``options``."""
    if letter in "LGMN":
        return ScheduledAttention(letter, dim, num_heads, ndim, is_causal, bias=bias, **options)
    if letter == "R":
        return RATAttention(dim, num_heads, options["chunk_size"], rope_theta=options["rope_theta"], qkv_bias=bias)
    if letter == "P":
        return ParallaxAttention(dim, num_heads, window_size=options["window_size"], is_causal=is_causal,
                                 qkv_bias=bias, rope_theta=options["rope_theta"])
    if letter == "H":
        if options["global_branch"] == "compressed" and options["reduction"] is None:
            options = {**options, "reduction": 4}
        return HybridAttention(dim, num_heads, ndim=ndim, is_causal=is_causal, qkv_bias=bias, **options)
    return RoutedLayer(dim, num_heads, options["window"], sinks=options["sinks"], pool=options["pool"],
                       rope_theta=options["rope_theta"], qkv_bias=bias)


class _Schedule(nn.Module):
    is_causal = False
    letters = ENCODER_LETTERS

    def __init__(self, dim, num_heads, depth, pattern, ndim=1, settings=None, mlp_ratio=4.0, mlp="gelu", bias=True):
        super().__init__()
        where = type(self).__name__
        valid = {c: LETTERS[c] for c in (self.letters if ndim == 1 else GRID_LETTERS)}
        checks.choice("ndim", ndim, (1, 2, 3) if not self.is_causal else (1,))
        checks.schedule_pattern(pattern, valid, depth, where if ndim == 1 else f"{where} on {ndim}-D grids")
        checks.choice("mlp", mlp, ("gelu", "glu"))
        self.settings = checks.schedule_settings(settings, DEFAULTS)
        self.dim, self.ndim, self.depth = dim, ndim, depth
        self.pattern = pattern
        self.kinds = "".join(pattern[i % len(pattern)] for i in range(depth))
        hidden = int(dim * mlp_ratio)
        self.layers = nn.ModuleList(
            HybridBlock(_layer_attention(kind, dim, num_heads, ndim, self.is_causal, self.settings[kind], bias),
                        dim, hidden, mlp, bias) for kind in self.kinds)
        self.norm = nn.LayerNorm(dim, bias=bias)

    def forward(self, x: torch.Tensor, cache: DecoderCache | None = None) -> torch.Tensor:
        """``x -> y``; with ``cache`` (empty, from ``new_cache``: decoders only) every layer also fills its own
        cache, a prefill after which ``step`` continues the stream."""
        checks.module_input(x, self.dim, self.ndim)
        if cache is not None:
            self._check_cache(cache, x.shape[0], "forward")
            cache_prefill(cache.length, f"{type(self).__name__}.forward")
        for i, layer in enumerate(self.layers):
            x = layer(x) if cache is None else layer(x, cache=cache.layers[i])
        if cache is not None:
            cache.length = x.shape[1]
        return self.norm(x)

    def new_cache(self, batch: int, positions: str = "absolute") -> DecoderCache:
        """A decoding cache for ``batch`` streams: each layer's own (``positions`` for sliding-window layers:
        "absolute", or "cache" for StreamingLLM's re-indexing; see glocal.decoding.SlidingWindowCache)."""
        cache_decodable(self.is_causal, type(self).__name__, "bidirectional layers")
        checks.positive_int("batch", batch)
        layers = [layer.attn.new_cache(batch, positions) if isinstance(layer.attn, ScheduledAttention)
                  else layer.attn.new_cache(batch) for layer in self.layers]
        return DecoderCache(layers, batch)

    def _check_cache(self, cache, batch: int, where: str) -> None:
        cache_kind(cache, DecoderCache, f"{type(self).__name__}.{where}")
        cache_batch(cache.batch, batch, len(cache.layers), self.depth)

    def step(self, x_t: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """One decoding step of the whole model: ``x_t [B, dim] -> y_t [B, dim]``; ``cache`` advances by one token.

        Token by token it equals the causal forward over the stream (the prefill included)."""
        checks.module_input(x_t, self.dim, 0)
        self._check_cache(cache, x_t.shape[0], "step")
        for layer, layer_cache in zip(self.layers, cache.layers):
            x_t = layer.step(x_t, layer_cache)
        cache.length += 1
        return self.norm(x_t)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, depth={self.depth}, kinds={self.kinds!r}"


class HybridEncoder(_Schedule):
    """A bidirectional encoder whose layers follow a pattern of attention kinds.

    Shapes: x [B, T, dim] (ndim=1) or [B, *spatial, dim] (ndim=2, 3) -> the same shape.

    ``pattern``: one letter per layer, repeated to ``depth`` (L local, G global, N linear, M MoBA,
    P Parallax, H HybridAttention; grids take L, G, N, M, H). ``settings``: per letter, a dict of
    options merged over ``glocal.nn.schedules.DEFAULTS`` (e.g. ``{"L": {"window": 65},
    "G": {"rope_theta": 160000.0}}``); a layer kind reads its own letter's. Blocks are pre-norm
    (LayerNorm), the MLP ``mlp_ratio * dim`` wide ("gelu" or "glu"), a final LayerNorm.
    ``kinds`` holds the resolved kind of every layer.

    Example:
        >>> import torch, glocal
        >>> enc = glocal.nn.HybridEncoder(64, 4, depth=4, pattern="LH", ndim=2, settings={"L": {"window": 5}})
        >>> enc(torch.randn(1, 12, 12, 64)).shape, enc.kinds
        (torch.Size([1, 12, 12, 64]), 'LHLH')
    """

    @classmethod
    def modernbert(cls, dim=768, num_heads=12, depth=22, local_window=128, global_every=3,
                   global_rope_theta=160000.0, local_rope_theta=10000.0, mlp_hidden=None):
        """ModernBERT's schedule: layer i global when ``i % global_every == 0``, otherwise local with the
        band ``|i - j| <= local_window // 2`` (129 keys for 128), truncated at the ends; RoPE theta
        160000 on global and 10000 on local layers; bias-free linears and LayerNorms, a GeGLU MLP and
        no attention norm in the first layer (ModernBERT normalises its embeddings instead).

        Shapes: x [B, T, dim] -> [B, T, dim] (the embeddings' output; ModernBERT's final norm included).

        Example:
            >>> import torch, glocal
            >>> enc = glocal.nn.HybridEncoder.modernbert(dim=64, num_heads=4, depth=6, local_window=8)
            >>> enc.kinds, enc(torch.randn(1, 20, 64)).shape
            ('GLLGLL', torch.Size([1, 20, 64]))
        """
        checks.positive_int("global_every", global_every)
        checks.positive_int("local_window", local_window)
        pattern = "G" + "L" * (global_every - 1)
        settings = {"L": {"window": local_window // 2 * 2 + 1, "border": "truncate", "rope_theta": local_rope_theta},
                    "G": {"rope_theta": global_rope_theta}}
        hidden = mlp_hidden if mlp_hidden is not None else int(dim * 1.5)
        model = cls(dim, num_heads, depth, pattern, settings=settings, mlp_ratio=hidden / dim, mlp="glu", bias=False)
        model.layers[0].attn_norm = nn.Identity()
        return model


class HybridDecoder(_Schedule):
    """A causal decoder over sequences whose layers follow a pattern of attention kinds.

    Shapes: x [B, T, dim] -> [B, T, dim]; every layer is causal (position t reads positions <= t).

    ``pattern`` letters: L sliding window (the ``window`` keys ending at the query), G causal
    global, N causal linear, M causal MoBA, R RAT, P causal Parallax, H causal HybridAttention,
    F per-request routed (full or sinks + window per sequence, glocal.nn.RoutedLayer). Settings as
    in :class:`HybridEncoder` (L also takes ``sinks``: StreamingLLM's attention sinks).

    Decoding: ``cache = dec.new_cache(batch)`` (a glocal.decoding.DecoderCache, one cache per layer;
    ``positions="cache"`` re-indexes the sliding-window layers as StreamingLLM does), ``dec(x,
    cache=cache)`` prefills it, ``y_t = dec.step(x_t, cache)`` decodes one token ``[B, dim] -> [B, dim]``;
    token by token it equals the causal forward (docs/decoding.md).

    Example:
        >>> import torch, glocal
        >>> dec = glocal.nn.HybridDecoder(64, 4, depth=4, pattern="LLRG", settings={"L": {"window": 16}})
        >>> x = torch.randn(1, 40, 64)
        >>> y = dec(x)
        >>> torch.allclose(dec(x[:, :25]), y[:, :25], atol=1e-5)  # causal: a prefix gives the same prefix
        True
    """

    is_causal = True
    letters = "LGNMRPHF"
