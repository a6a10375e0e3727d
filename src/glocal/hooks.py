"""The attention-call protocol: how glocal ops and torch's SDPA hand their calls to observers.

An observer is a function ``handler(call: AttentionCall) -> None | out``: it sees one attention
call, normalised (heads-first q, k, v, the mask, the scale, token positions), and either observes
it (returns None) or replaces its output (returns ``out [B, T_q, H, D_v]``). Two places call
observers:

- ``glocal.backends.choose_backend`` consults :func:`op_observers` on every glocal op, of every
  family, whose attention is a softmax over a key set it can describe (its spec has a mask), so
  a new op is observed as soon as it dispatches through ``choose_backend``;
- torch's ``scaled_dot_product_attention``, replaced by a recording wrapper while an
  :func:`observe_sdpa` scope is open (models that are not Hugging Face models: timm ViTs,
  hand-written modules).

``glocal.analysis.capture`` (recording) and ``glocal.analysis.steer`` (rewriting) are observers;
the Hugging Face adapter hands its calls to them the same way. This module is a leaf: it imports
only :mod:`glocal.numerics`.

Shapes:
    AttentionCall.q [B, H, T_q, D], .k [B, H, T_k, D], .v [B, H, T_k, D_v] (kv heads repeated for GQA)
    Positions.rank [B, T], .coord [B, T, n], .extent [B, n], .length [B]

Example:
    >>> import torch, glocal
    >>> from glocal import hooks
    >>> seen = []
    >>> with hooks.observe_ops(lambda call: seen.append(call.q.shape)):
    ...     _ = glocal.na1d(*[torch.randn(1, 12, 2, 8)] * 3, kernel_size=5)
    >>> seen
    [torch.Size([1, 2, 12, 8])]
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch

from .numerics import compute_dtype, masked_softmax

# --------------------------------------------------------------------------------------------- positions


@dataclass
class Positions:
    """Where the tokens of one call sit. ``rank``: [B, T] (-1 = padding); ``coord``: [B, T, n] (NaN = off-grid);
    ``extent``: [B, n] (grid/valid length per axis); ``length``: [B] number of valid tokens."""

    rank: torch.Tensor
    coord: torch.Tensor
    extent: torch.Tensor
    length: torch.Tensor

    def rows(self, start: int, stop: int) -> "Positions":
        return Positions(self.rank[:, start:stop], self.coord[:, start:stop], self.extent, self.length)


def positions_1d(valid: torch.Tensor) -> Positions:
    """Positions of a text batch from its validity mask ``valid: [B, T]`` (True = real token).

    The rank counts real tokens only, so left- and right-padded batches give the same positions.
    """
    valid = valid.bool()
    rank = torch.cumsum(valid.long(), dim=1) - 1
    rank = torch.where(valid, rank, torch.full_like(rank, -1))
    coord = torch.where(valid, rank, torch.zeros_like(rank)).double()
    coord = torch.where(valid, coord, torch.full_like(coord, float("nan")))[..., None]
    length = valid.sum(1)
    return Positions(rank, coord, length[:, None].double(), length)


def positions_grid(batch: int, grid: tuple, prefix: int = 0, suffix: int = 0, device=None) -> Positions:
    """Positions of ``prefix`` off-grid tokens, then a row-major ``grid``, then ``suffix`` off-grid tokens."""
    n = 1
    for g in grid:
        n *= g
    idx = torch.arange(n, device=device)
    coords = []
    for axis in range(len(grid)):
        stride = 1
        for g in grid[axis + 1:]:
            stride *= g
        coords.append((idx // stride) % grid[axis])
    on_grid = torch.stack(coords, -1).double()
    off = torch.full((prefix, len(grid)), float("nan"), dtype=torch.float64, device=device)
    after = torch.full((suffix, len(grid)), float("nan"), dtype=torch.float64, device=device)
    coord = torch.cat([off, on_grid, after], 0)[None].expand(batch, -1, -1)
    total = prefix + n + suffix
    rank = torch.arange(total, device=device)[None].expand(batch, -1)
    extent = torch.tensor(grid, dtype=torch.float64, device=device)[None].expand(batch, -1)
    return Positions(rank, coord, extent, torch.full((batch,), total, device=device))


def positions_from_mask(allowed, batch, tq, tk, device):
    """1-D positions of keys and queries from a mask broadcastable to [B, H, T_q, T_k].

    A key is valid when some query may see it; queries of a self-attention call share the keys'
    positions, other queries are aligned to the last keys (decoding with a cache).
    """
    if allowed is None:
        valid = torch.ones(batch, tk, dtype=torch.bool, device=device)
    else:
        valid = allowed.any(dim=2).any(dim=1).expand(batch, tk)
    k_pos = positions_1d(valid)
    q_pos = k_pos if tq == tk else k_pos.rows(tk - tq, tk)
    return q_pos, k_pos


# --------------------------------------------------------------------------------------------- the call


@dataclass
class AttentionCall:
    """One attention call, normalised.

    q: [B, H, T_q, D]; k: [B, H, T_k, D]; v: [B, H, T_k, D_v] (kv heads already repeated for GQA);
    allowed: bool broadcastable to [B, H, T_q, T_k] or None; bias: additive float, same, or None;
    causal: apply a bottom-right aligned causal mask; q_pos/k_pos: :class:`Positions`;
    replaced: heads whose attention the model replaces (a converted model, :mod:`glocal.convert`), as
    ``(heads, fn)`` pairs with ``fn(start, stop)`` giving those heads' probabilities
    [B, len(heads), stop-start, T_k], so that recordings see the attention the model runs.
    """

    layer: int
    name: str
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float
    allowed: torch.Tensor | None
    bias: torch.Tensor | None
    causal: bool
    q_pos: Positions
    k_pos: Positions
    replaced: list | None = None

    def scores(self, start: int, stop: int) -> torch.Tensor:
        """Masked scores of queries ``start:stop``: [B, H, stop-start, T_k] float32 (float64 for float64)."""
        compute = compute_dtype(self.q)
        s = torch.einsum("bhqd,bhkd->bhqk", self.q[:, :, start:stop].to(compute), self.k.to(compute)) * self.scale
        if self.bias is not None:
            s = s + self._rows(self.bias, start, stop).to(compute)
        if self.allowed is not None:
            s = s.masked_fill(~self._rows(self.allowed, start, stop), -float("inf"))
        if self.causal:
            tq, tk = self.q.shape[2], self.k.shape[2]
            qi = torch.arange(start, stop, device=s.device)[:, None] + (tk - tq)
            s = s.masked_fill(torch.arange(tk, device=s.device)[None, :] > qi, -float("inf"))
        return s

    def probs(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Attention probabilities of queries ``start:stop`` ([B, H, stop-start, T_k]), replaced heads included."""
        stop = self.q.shape[2] if stop is None else stop
        p = masked_softmax(self.scores(start, stop))[0]
        for heads, fn in self.replaced or ():
            p[:, heads] = fn(start, stop).to(p.dtype)
        return p

    @staticmethod
    def _rows(mask, start, stop):
        return mask[:, :, start:stop] if mask.shape[2] > 1 else mask


def sdpa_call(query, key, value, attn_mask, is_causal, scale, layer, name) -> AttentionCall:
    """An :class:`AttentionCall` from SDPA-style arguments (q/k/v: [B, H, T, D], mask bool or additive)."""
    batch, heads, tq, d = query.shape
    groups = heads // key.shape[1]
    k = key.repeat_interleave(groups, dim=1) if groups > 1 else key
    v = value.repeat_interleave(groups, dim=1) if groups > 1 else value
    allowed = bias = None
    if attn_mask is not None:
        mask = attn_mask
        while mask.dim() < 4:
            mask = mask[None]
        if mask.dtype == torch.bool:
            allowed = mask
        else:
            bias = mask
            allowed = mask > torch.finfo(mask.dtype).min / 2
    scale = d ** -0.5 if scale is None else float(scale)
    q_pos, k_pos = positions_from_mask(allowed, batch, tq, k.shape[2], query.device)
    return AttentionCall(layer, name, query, k, v, scale, allowed, bias, bool(is_causal), q_pos, k_pos)


def op_call(q, k, v, scale: float, allowed, grid, extra_k=None, extra_v=None) -> AttentionCall:
    """An :class:`AttentionCall` from a glocal op: heads-last tensors, its [N_q, N_kv] key mask, extra tokens.

    ``grid`` is the spatial shape of the queries (and of the keys, when they share it), or None for
    sequences whose positions are 1-D; extra keys/values are appended after the grid's keys and
    attended by every query (the mask is extended with True columns).
    """
    batch, hq, hkv = q.shape[0], q.shape[-2], k.shape[-2]
    qf = q.reshape(batch, -1, hq, q.shape[-1]).transpose(1, 2)
    kf = k.reshape(batch, -1, hkv, k.shape[-1])
    vf = v.reshape(batch, -1, hkv, v.shape[-1])
    extra = 0
    if extra_k is not None:
        extra = extra_k.shape[1]
        kf = torch.cat([kf, extra_k], 1)
        vf = torch.cat([vf, extra_v], 1)
        allowed = torch.cat([allowed, torch.ones(*allowed.shape[:-1], extra, dtype=torch.bool,
                                                 device=allowed.device)], -1)
    kf = kf.transpose(1, 2).repeat_interleave(hq // hkv, dim=1)
    vf = vf.transpose(1, 2).repeat_interleave(hq // hkv, dim=1)
    if grid is None or qf.shape[2] != kf.shape[2] - extra:
        q_pos, k_pos = positions_from_mask(None, batch, qf.shape[2], kf.shape[2], q.device)
    else:
        q_pos = positions_grid(batch, tuple(grid), device=q.device)
        k_pos = positions_grid(batch, tuple(grid), suffix=extra, device=q.device)
    while allowed.dim() < 4:
        allowed = allowed[None]
    return AttentionCall(-1, "", qf, kf, vf, float(scale), allowed, None, False, q_pos, k_pos)


# --------------------------------------------------------------------------------------------- observers

_state = threading.local()
_op_observers: list = []
_sdpa_observers: list = []
_sdpa_original: dict = {}


def busy() -> bool:
    """True while an observer is running (the attention calls it makes are not observed again)."""
    return getattr(_state, "busy", 0) > 0


@contextlib.contextmanager
def handling():
    """Mark the block as an observer's own work: attention calls inside it are not observed."""
    _state.busy = getattr(_state, "busy", 0) + 1
    try:
        yield
    finally:
        _state.busy -= 1


def dispatch(handlers, call: AttentionCall):
    """Run ``handlers`` on ``call``; returns the last non-None output ([B, T_q, H, D_v]) or None."""
    out = None
    with handling():
        for handler in list(handlers):
            result = handler(call)
            if result is not None:
                out = result
    return out


def op_observers() -> list:
    """The observers of glocal ops now registered (empty when none, or inside an observer)."""
    return [] if busy() else list(_op_observers)


def sdpa_observers() -> list:
    """The observers of torch's scaled_dot_product_attention now registered (empty inside an observer)."""
    return [] if busy() else list(_sdpa_observers)


@contextlib.contextmanager
def observe_ops(handler):
    """Hand every glocal op call to ``handler`` inside the block (through ``choose_backend``)."""
    _op_observers.append(handler)
    try:
        yield
    finally:
        _op_observers.remove(handler)


@contextlib.contextmanager
def observe_sdpa(handler):
    """Hand every call of ``torch.nn.functional.scaled_dot_product_attention`` to ``handler`` inside the block.

    torch's function is replaced by a wrapper while any handler is registered (nested scopes share
    one wrapper) and put back when the last one leaves.
    """
    import torch.nn.functional as F

    if not _sdpa_observers:
        _sdpa_original["fn"] = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = _sdpa_wrapper
    _sdpa_observers.append(handler)
    try:
        yield
    finally:
        _sdpa_observers.remove(handler)
        if not _sdpa_observers:
            F.scaled_dot_product_attention = _sdpa_original.pop("fn")


def _sdpa_wrapper(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                  enable_gqa=False, **kwargs):
    original = _sdpa_original["fn"]
    handlers = sdpa_observers()
    if not handlers or query.dim() != 4:
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, enable_gqa=enable_gqa, **kwargs)
    call = sdpa_call(query, key, value, attn_mask, is_causal, scale, layer=-1, name="")
    out = dispatch(handlers, call)
    if out is not None:
        return out.transpose(1, 2).to(query.dtype)
    return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                    scale=scale, enable_gqa=enable_gqa, **kwargs)
