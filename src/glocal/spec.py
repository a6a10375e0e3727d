"""Frozen problem specs, one per op family, and argument normalisation.

A spec holds everything about a problem except the tensors and the softmax scale: for
neighborhood attention the grid shape and the per-axis kernel size, stride, dilation and causal
flag (DESIGN.md §1). Each spec class names its ``family``: the key of
``glocal.backends.PRIORITY`` and the module name of each backend's implementation
(``glocal/backends/<backend>/<family>.py``). Backends receive a spec, never raw user arguments;
specs are hashable, so backends cache plans and masks by them.

Example:
    >>> from glocal.spec import LinearSpec
    >>> LinearSpec(feature_map="elu1", is_causal=True).family
    'linear'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from . import checks


@dataclass(frozen=True)
class NeighborhoodSpec:
    """Neighborhood attention on a grid of shape ``spatial`` (one entry per axis).

    Every field is a tuple with one entry per axis, already validated.

    Example:
        >>> spec = make_neighborhood_spec((8, 8), kernel_size=3, stride=1, dilation=1, is_causal=False)
        >>> spec.kernel_size
        (3, 3)
    """

    family: ClassVar[str] = "neighborhood"

    spatial: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    is_causal: tuple[bool, ...]

    @property
    def ndim(self) -> int:
        return len(self.spatial)

    @property
    def num_tokens(self) -> int:
        n = 1
        for length in self.spatial:
            n *= length
        return n

    def axis(self, i: int) -> tuple[int, int, int, int, bool]:
        """``(L, K, s, d, causal)`` of axis ``i``."""
        return (self.spatial[i], self.kernel_size[i], self.stride[i], self.dilation[i], self.is_causal[i])

    @property
    def keys_per_query(self) -> int:
        """Upper bound on the keys a query attends (exact when no axis is causal)."""
        n = 1
        for k in self.kernel_size:
            n *= k
        return n


@dataclass(frozen=True)
class AttentionSpec:
    """Full (dense) attention over sequences: ``T_q`` queries, ``T_kv`` keys.

    Causal cross attention is aligned to the bottom-right corner: query ``i``
    sees key ``j`` iff ``j <= i + (T_kv - T_q)``.
    """

    family: ClassVar[str] = "dense"

    q_len: int
    kv_len: int
    is_causal: bool


@dataclass(frozen=True)
class MergeSpec:
    """Exact merge of attention results over disjoint key sets by their log-sum-exps (no options)."""

    family: ClassVar[str] = "merge"


@dataclass(frozen=True)
class LinearSpec:
    """Kernelised linear attention (glocal.linear_attention and its decoding step).

    ``feature_map`` is a name of ``FEATURE_MAPS`` or a callable; ``denominator_min`` None divides
    exactly (0 where the denominator is 0), a number clamps the denominator from below (L2ViT).
    """

    family: ClassVar[str] = "linear"

    feature_map: Any = "elu1"
    is_causal: bool = False
    normalize: bool = True
    chunk_size: int = 64
    denominator_min: float | None = None


@dataclass(frozen=True)
class InlineSpec:
    """InLine (injective linear) attention over flattened grids, non-causal."""

    family: ClassVar[str] = "inline"

    feature_map: Any = "identity"


@dataclass(frozen=True)
class ChannelSpec:
    """Channel ("transposed") attention: a D x D softmax per head over the channels (no options)."""

    family: ClassVar[str] = "channel"


@dataclass(frozen=True)
class BlockSparseSpec:
    """Content-routed block attention (MoBA for sequences, VMoBA for grids).

    Keys live on ``grid`` (``(T_kv,)`` for sequences, the spatial shape for N-D) and are cut into
    boxes of ``block_shape`` (edge boxes partial). The routing itself is data: the op computes it
    (``glocal.masks.block_selection``) and hands it to the backend as ``tensors["selection"]``, a
    bool ``[B, H_q, T_q, n_blocks]``. Queries are the last ``q_len`` positions of the sequence
    (bottom-right, as glocal.attention); ``is_causal`` applies to sequences only.
    """

    family: ClassVar[str] = "block_sparse"

    grid: tuple[int, ...]
    block_shape: tuple[int, ...]
    q_len: int
    is_causal: bool = True
    top_k: int | None = None
    threshold: float | None = None

    @property
    def blocks_per_axis(self) -> tuple[int, ...]:
        return tuple(-(-length // b) for length, b in zip(self.grid, self.block_shape))

    @property
    def n_blocks(self) -> int:
        n = 1
        for count in self.blocks_per_axis:
            n *= count
        return n


@dataclass(frozen=True)
class RATSpec:
    """RAT: a gated running average of keys and values inside chunks of ``chunk_size`` positions,
    softmax attention over the final states of earlier chunks and the own running state."""

    family: ClassVar[str] = "rat"

    chunk_size: int


@dataclass(frozen=True)
class LocalLinearSpec:
    """Parallax (``ridge=None``: the probe r is an input) or Local Linear Attention (``ridge`` a number:
    r is solved per query) over a window of ``window_size`` keys (None: all keys)."""

    family: ClassVar[str] = "local_linear"

    window_size: int | None
    is_causal: bool = True
    ridge: float | None = None


def make_neighborhood_spec(spatial, kernel_size, stride=1, dilation=1, is_causal=False) -> NeighborhoodSpec:
    """Normalise int-or-tuple arguments to per-axis tuples and validate them (DESIGN.md §1)."""
    spatial = tuple(int(x) for x in spatial)
    n = len(spatial)
    kernel_size = checks.per_axis("kernel_size", kernel_size, n, int)
    stride = checks.per_axis("stride", stride, n, int)
    dilation = checks.per_axis("dilation", dilation, n, int)
    is_causal = checks.per_axis("is_causal", is_causal, n, bool)
    checks.neighborhood_args(spatial, kernel_size, stride, dilation)
    return NeighborhoodSpec(spatial, kernel_size, stride, dilation, is_causal)


def axis_window(x, length: int, kernel_size: int, stride: int, dilation: int, is_causal: bool):
    """Window of queries ``x`` along one axis, in dilation-group coordinates.

    ``x`` is an int or an integer tensor of query coordinates. Returns
    ``(group, lo, hi)``: the query's dilation group and the half-open range
    ``[lo, hi)`` of in-group key coordinates it attends. A key coordinate
    ``y`` is attended iff ``y % dilation == group`` and ``lo <= y // dilation < hi``.
    Written with ``//``, ``%``, min and max only, so it works on Python ints,
    tensors, and inside FlexAttention's ``mask_mod``.
    """
    d, s, k = dilation, stride, kernel_size
    group = x % d
    xg = x // d
    group_len = (length - group + d - 1) // d
    if is_causal:
        lead = _minimum((xg // s) * s + s - 1, group_len - 1)
        lo = _maximum(lead - k + 1, 0)
        hi = xg + 1
    else:
        left = k // 2
        right = k - 1 - left
        lead = _minimum((xg // s) * s + s // 2, group_len - 1)
        ctr = _minimum(_maximum(lead, left), group_len - 1 - right)
        lo = ctr - left
        hi = ctr + right + 1
    return group, lo, hi


def _minimum(a, b):
    if isinstance(a, torch.Tensor):
        return a.clamp(max=b)
    if isinstance(b, torch.Tensor):
        return b.clamp(max=a)
    return min(a, b)


def _maximum(a, b):
    if isinstance(a, torch.Tensor):
        return a.clamp(min=b)
    if isinstance(b, torch.Tensor):
        return b.clamp(min=a)
    return max(a, b)
