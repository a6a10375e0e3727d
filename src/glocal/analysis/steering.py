"""Steer attention without training: modify scores or probabilities of chosen heads while a model runs.

``with glocal.analysis.steer(model, rule, ...): model(...)`` recomputes the attention of every layer that a
rule touches from q, k, v (dense, float32) with the modification applied, and leaves other layers to the
model's own kernel. Rules act per (layer, head) and on sets of key positions (ranks among real tokens;
negative positions count from the last real token):

- :class:`ScoreMod`: any function on the masked scores before the softmax (the general hook).
- :class:`ScaleKeys`: multiply the attention to a key set by a factor, then renormalise.
- :class:`RedistributeSinks`: take a fraction of the attention that goes to sink tokens and give it to the
  other keys in proportion to their attention (visual attention redistribution, VAR: Kang et al., "See What
  You Are Told: Visual Attention Sink in Large Multimodal Models", ICLR 2025).
- :class:`BoostRecent`: multiply the attention to the most recent tokens before each query and renormalise
  (a recency boost in the spirit of LocoRE-style local re-weighting).
- :class:`ReinforceHeads`: scale the chosen heads' attention (and thus their output) by a factor without
  renormalising (head reinforcement as in VHR: He et al., "Cracking the Code of Hallucination in LVLMs with
  Vision-aware Head Divergence", 2024, which amplifies the outputs of vision-aware heads).

Shapes:
    scores/probs seen by rules: [B, h, T_q, T_k] for the h selected heads of one layer

Example:
    >>> import torch, glocal
    >>> from glocal.analysis import steer, ScaleKeys
    >>> q = k = v = torch.randn(1, 16, 2, 8)
    >>> with steer(None, ScaleKeys(keys=[0], factor=0.0)):  # hide the first token from every query
    ...     out = glocal.attention(q, k, v)
    >>> torch.allclose(out, glocal.attention(q, k[:, 1:], v[:, 1:]), atol=1e-5)
    True
"""

from __future__ import annotations

import contextlib

import torch

from .. import checks
from ..numerics import masked_softmax
from .capture import intercept


def _heads_of(heads, layer: int, count: int) -> list[int]:
    if heads is None:
        return list(range(count))
    return sorted({h for (l, h) in heads if l == layer and h < count})


def key_set(keys, call) -> torch.Tensor:
    """Boolean [B, T_k] of the keys named by ``keys`` (positions among real keys; negatives from the end)."""
    rank, length = call.k_pos.rank, call.k_pos.length.to(call.k.device)[:, None]
    chosen = torch.zeros_like(rank, dtype=torch.bool)
    for p in keys:
        target = torch.full_like(length, p) if p >= 0 else length + p
        chosen |= rank == target
    return chosen & (rank >= 0)


class Rule:
    """Base: ``heads`` is None (every head of every layer) or an iterable of (layer, head)."""

    stage = "probs"

    def __init__(self, heads=None):
        self.heads = None if heads is None else [tuple(h) for h in heads]

    def apply(self, x: torch.Tensor, call) -> torch.Tensor:
        raise NotImplementedError


class ScoreMod(Rule):
    """``fn(scores [B, h, T_q, T_k], call) -> scores`` applied before the softmax (e.g. add a bias)."""

    stage = "scores"

    def __init__(self, fn, heads=None):
        super().__init__(heads)
        self.fn = fn

    def apply(self, scores, call):
        return self.fn(scores, call)


class ScaleKeys(Rule):
    """Multiply the attention to ``keys`` by ``factor`` and renormalise each row."""

    def __init__(self, keys, factor: float, heads=None):
        super().__init__(heads)
        checks.steering_factor("factor", factor)
        self.keys, self.factor = list(keys), float(factor)

    def apply(self, probs, call):
        chosen = key_set(self.keys, call)[:, None, None, :]
        scaled = torch.where(chosen, probs * self.factor, probs)
        return scaled / scaled.sum(-1, keepdim=True).clamp_min(1e-30)


class RedistributeSinks(Rule):
    """Move ``fraction`` of each row's attention on ``sinks`` to the other keys, proportionally (VAR)."""

    def __init__(self, sinks=(0,), fraction: float = 0.5, heads=None, to=None):
        super().__init__(heads)
        checks.steering_factor("fraction", fraction, 0.0, 1.0)
        self.sinks, self.fraction, self.to = list(sinks), float(fraction), None if to is None else list(to)

    def apply(self, probs, call):
        sink = key_set(self.sinks, call)[:, None, None, :]
        target = ~sink if self.to is None else key_set(self.to, call)[:, None, None, :] & ~sink
        target = target & (call.k_pos.rank >= 0)[:, None, None, :]
        taken = (probs * sink).sum(-1, keepdim=True) * self.fraction
        receivers = (probs * target).sum(-1, keepdim=True)
        share = torch.where(receivers > 0, taken / receivers.clamp_min(1e-30), torch.zeros_like(taken))
        moved = torch.where(sink, probs * (1 - self.fraction), torch.where(target, probs * (1 + share), probs))
        # Rows with no receiving mass keep their attention (nothing to redistribute to).
        return torch.where(receivers > 0, moved, probs)


class BoostRecent(Rule):
    """Multiply the attention to the ``recent`` tokens ending at each query (itself included) by ``factor``."""

    def __init__(self, recent: int = 8, factor: float = 2.0, heads=None):
        super().__init__(heads)
        checks.steering_factor("factor", factor)
        if not isinstance(recent, int) or recent < 1:
            raise ValueError(f"recent must be a positive int (tokens); got recent={recent!r}. Use e.g. recent=8.")
        self.recent, self.factor = recent, float(factor)

    def apply(self, probs, call):
        q = call.q_pos.rank[:, None, :, None]
        k = call.k_pos.rank[:, None, None, :]
        window = (k <= q) & (k > q - self.recent) & (k >= 0)
        scaled = torch.where(window, probs * self.factor, probs)
        return scaled / scaled.sum(-1, keepdim=True).clamp_min(1e-30)


class ReinforceHeads(Rule):
    """Scale the chosen heads' attention, hence their outputs, by ``factor`` (no renormalisation; VHR)."""

    def __init__(self, heads, factor: float = 1.5):
        super().__init__(heads)
        checks.steering_factor("factor", factor)
        self.factor = float(factor)

    def apply(self, probs, call):
        return probs * self.factor


class Steerer:
    def __init__(self, rules):
        self.rules = list(rules)
        self.counter = 0

    def new_forward(self):
        self.counter = 0

    def __call__(self, call):
        if call.layer < 0:
            call.layer = self.counter
            self.counter += 1
        heads = call.q.shape[1]
        active = [(r, _heads_of(r.heads, call.layer, heads)) for r in self.rules]
        active = [(r, hs) for r, hs in active if hs]
        if not active:
            return None
        scores = call.scores(0, call.q.shape[2])
        for rule, hs in active:
            if rule.stage == "scores":
                scores[:, hs] = rule.apply(scores[:, hs], call)
        probs = masked_softmax(scores)[0]
        for rule, hs in active:
            if rule.stage == "probs":
                probs[:, hs] = rule.apply(probs[:, hs], call)
        out = torch.einsum("bhqk,bhkd->bqhd", probs, call.v.to(probs.dtype))
        return out


@contextlib.contextmanager
def steer(model=None, *rules):
    """Apply steering rules to ``model``'s attention (and to glocal ops) inside the block.

    Shapes:
        rules see [B, h, T_q, T_k] scores (ScoreMod) or probabilities (the others) of their heads

    Layers are numbered as in :func:`glocal.analysis.capture`. Example:
        >>> import torch, glocal
        >>> from glocal.analysis import steer, ReinforceHeads
        >>> q = k = v = torch.randn(1, 16, 2, 8)
        >>> with steer(None, ReinforceHeads(heads=[(0, 1)], factor=2.0)):
        ...     out = glocal.attention(q, k, v)
        >>> torch.allclose(out[:, :, 1], 2 * glocal.attention(q, k, v)[:, :, 1], atol=1e-5)
        True
    """
    for rule in rules:
        if not isinstance(rule, Rule):
            raise TypeError(
                f"steer() takes rules from glocal.analysis (ScaleKeys, RedistributeSinks, BoostRecent, "
                f"ReinforceHeads, ScoreMod); got {type(rule).__name__}. Wrap a score function as ScoreMod(fn)."
            )
    steerer = Steerer(rules)
    with intercept(model, steerer, on_forward=steerer.new_forward):
        yield steerer
