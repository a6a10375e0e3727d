"""Exact acceleration of Hugging Face models whose attention is already windowed: ``glocal.accelerate(model)``.

Some models restrict attention to a window in their configuration and still run it as dense attention with
a mask (transformers 5.24 builds a ``[B, 1, T, T]`` mask and calls SDPA, which computes every score):

- ModernBERT's ``sliding_attention`` layers (``config.layer_types``): bidirectional, key ``j`` is seen by
  query ``i`` when ``|i - j| <= config.local_attention // 2`` (``masking_utils.sliding_window_bidirectional_overlay``
  with ``config.sliding_window = local_attention // 2``), truncated at the sequence borders;
- causal sliding-window layers of Mistral-, Qwen2-, Gemma-2/3-style decoders (every layer of a Mistral with
  ``sliding_window``; the ``sliding_attention`` entries of ``layer_types`` otherwise, which Qwen2 derives from
  ``use_sliding_window`` and ``max_window_layers``): keys ``i - sliding_window < j <= i``
  (``masking_utils.sliding_window_overlay``), i.e. the ``sliding_window`` keys ending at the query;
- Gemma-3 with ``use_bidirectional_attention``: ``|i - j| < config.sliding_window``.

:func:`accelerate` runs those layers with glocal's neighborhood ops through the attention interface. The result
equals the original to float tolerance, because every call is checked: the mask transformers passes must be
exactly the layer's window AND a padding mask whose real tokens are one contiguous run per sequence (left or right
padding; the window is translation invariant, so each sequence runs on its real tokens). Anything else runs the
original implementation for that call: a decoding step or a cached prefix (T_q != T_kv), no mask (the window covers
the input), a custom or packed-sequence mask, dropout, score modifiers (soft-capping, position biases, sinks),
``output_attentions=True``. Layers whose scores are soft-capped (Gemma-2's ``attn_logit_softcapping``) are left
original, with the reason in the report.

Windows, against glocal's neighborhood window (DESIGN.md §1):

- causal: ``glocal.na1d(kernel_size=W, is_causal=True)`` attends ``max(0, i - W + 1) .. i``: the same keys;
- bidirectional radius ``r``: ``na1d(kernel_size=2r + 1)`` is exact for the interior queries ``r <= i < L - r``;
  its window is shifted inward at the borders while the model's is truncated, so the first and last ``r``
  queries are recomputed with one small dense attention over the ``2r`` keys at each end.

Shapes:
    CausalWindow.attend / BidirectionalWindow.attend: q [B, L, H_q, D], k [B, L, H_kv, D], v [B, L, H_kv, D_v]
    (heads-last, one sequence of real tokens per row, H_q a multiple of H_kv)  ->  [B, L, H_q, D_v]

Example:
    >>> import torch
    >>> from glocal.convert.accelerate import BidirectionalWindow
    >>> from glocal.numerics import dense_attention
    >>> q, k, v = torch.randn(3, 1, 20, 2, 8).unbind(0)
    >>> i = torch.arange(20)
    >>> truncated = (i[:, None] - i[None, :]).abs() <= 3  # the model's window, cut at the borders
    >>> dense, _ = dense_attention(q, k, v, 8 ** -0.5, truncated)
    >>> torch.allclose(BidirectionalWindow(3).attend(q, k, v, 8 ** -0.5), dense, atol=1e-5)
    True
"""

from __future__ import annotations

import warnings
import weakref
from collections import Counter
from dataclasses import dataclass, field

import torch

from .. import checks
from ..integrations import transformers as hf
from ..nn.schedules import banded_attention
from ..ops import na1d

# The attention implementations whose masks glocal reads: sdpa (boolean) and eager (additive 0 / dtype minimum).
IMPLEMENTATIONS = ("sdpa", "eager")
# Arguments of transformers' attention call that do not change what is attended (the mask is the window).
NEUTRAL_ARGUMENTS = frozenset({"sliding_window", "deterministic", "position_ids", "use_cache", "cache_position",
                               "output_hidden_states", "return_dict"})


class _Window:
    """What the two window rules share: the per-call checks, the padding layout, the batch loop."""

    causal: bool

    def __init__(self):
        self.calls: Counter = Counter()  # "glocal" or the reason a call ran the original -> count

    before: int  # a query at i sees the keys i - before .. i + after
    after: int

    def allowed(self, q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor:
        return (k_idx >= q_idx - self.before) & (k_idx <= q_idx + self.after)

    def band(self, tokens: int, device) -> torch.Tensor:
        """[T, T] bool: the window over ``tokens`` positions (diagonal bands of a bool matrix: no index arithmetic
        over T x T, which at 8192 tokens costs more than the attention it checks)."""
        return torch.ones(tokens, tokens, dtype=torch.bool, device=device).tril(self.after).triu(-self.before)

    def covers(self, length: int) -> bool:
        """Whether every query of a ``length``-token sequence sees every key it could (nothing to save)."""
        raise NotImplementedError

    def attend(self, q, k, v, scale: float) -> torch.Tensor:
        raise NotImplementedError

    def run(self, query, key, value, attention_mask, scaling, dropout, extras: dict, original_rows):
        """One attention-interface call: ``[B, T, H_q, D_v]`` (heads-last, as transformers returns it), or None.

        Shapes:
            query [B, H_q, T, D], key [B, H_kv, T, D], value [B, H_kv, T, D_v] (heads-first, as they arrive);
            attention_mask [B or 1, 1, T, T] (bool, or additive float) or None; ``original_rows(b, rows)`` gives the
            original implementation's output [1, len(rows), H_q, D_v] for query ``rows`` of sequence ``b``.

        None (and the reason counted in ``self.calls``) where the call is not exactly this window over
        contiguous real tokens; the caller then runs the original implementation.

        Example:
            >>> import torch
            >>> from glocal.convert.accelerate import CausalWindow
            >>> rule = CausalWindow(4)
            >>> q = k = v = torch.randn(1, 2, 10, 8)
            >>> rule.run(q, k, v, None, None, 0.0, {}, None) is None, dict(rule.calls)
            (True, {'no mask (the original attends every key)': 1})
        """
        reason = self._refusal(query, key, attention_mask, dropout, extras)
        layout = None
        if reason is None:
            layout = _padding_layout(self, attention_mask, query.shape[0], query.shape[2])
            if isinstance(layout, str):
                reason = layout
        if reason is not None:
            self.calls[reason] += 1
            return None
        self.calls["glocal"] += 1
        scale = query.shape[-1] ** -0.5 if scaling is None else float(scaling)
        return self._attend_batch(query, key, value, scale, *layout, original_rows)

    def _refusal(self, query, key, attention_mask, dropout, extras: dict) -> str | None:
        """Why this call cannot run as the window (None: it can, pending the mask's layout)."""
        if dropout:
            return f"attention dropout {dropout} (training)"
        for name, value in extras.items():
            if name in NEUTRAL_ARGUMENTS or value is None or value is False:
                continue
            if name == "is_causal" and bool(value) == self.causal:
                continue
            return f"argument {name}={value!r} changes the attention"
        if query.shape[2] != key.shape[2]:
            return "queries and keys differ in number (a decoding step or a cached prefix)"
        if self.covers(query.shape[2]):
            return "the window covers the whole input"
        if attention_mask is None:
            return "no mask (the original attends every key)"
        if not isinstance(attention_mask, torch.Tensor):
            return f"a {type(attention_mask).__name__} mask (glocal reads boolean and additive tensors)"
        return None

    def _attend_batch(self, query, key, value, scale, starts, lengths, original_rows):
        batch, heads, tokens, _ = query.shape
        q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # heads-last views
        if bool((starts == 0).all()) and bool((lengths == tokens).all()):
            return self.attend(q, k, v, scale).contiguous()
        out = q.new_zeros(batch, tokens, heads, v.shape[-1])
        groups: dict = {}  # sequences with the same real-token run attend as one batch
        for b, (s, n) in enumerate(zip(starts.tolist(), lengths.tolist())):
            groups.setdefault((s, n), []).append(b)
        for (s, n), rows in groups.items():
            if n:
                out[rows, s:s + n] = self.attend(q[rows, s:s + n], k[rows, s:s + n], v[rows, s:s + n], scale).to(out.dtype)
        # Padded query rows see real keys (or nothing) in the original; what a row that sees nothing gets is the
        # implementation's own convention, so those rows are the original's.
        idx = torch.arange(tokens, device=query.device)
        for b, (s, n) in enumerate(zip(starts.tolist(), lengths.tolist())):
            pad = ((idx < s) | (idx >= s + n)).nonzero().flatten()
            if pad.numel():
                out[b, pad] = original_rows(b, pad)[0].to(out.dtype)
        return out


class CausalWindow(_Window):
    """The ``size`` keys ending at each query (j in i - size + 1 .. i): a causal sliding-window layer."""

    causal = True

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)
        self.before, self.after = self.size - 1, 0

    def __repr__(self) -> str:
        return f"CausalWindow({self.size})"

    def describe(self) -> str:
        return f"causal sliding window of {self.size} keys (i - {self.size - 1} <= j <= i)"

    def covers(self, length: int) -> bool:
        return length <= self.size

    def attend(self, q, k, v, scale: float) -> torch.Tensor:
        """The window over whole sequences of real tokens: q [B, L, H_q, D] -> [B, L, H_q, D_v]."""
        return na1d(q, k, v, kernel_size=min(self.size, q.shape[1]), is_causal=True, scale=scale)


class BidirectionalWindow(_Window):
    """Keys within ``radius`` of each query on both sides (|i - j| <= radius), truncated at the borders."""

    causal = False

    def __init__(self, radius: int):
        super().__init__()
        self.radius = int(radius)
        self.before = self.after = self.radius

    def __repr__(self) -> str:
        return f"BidirectionalWindow({self.radius})"

    def describe(self) -> str:
        return f"bidirectional window |i - j| <= {self.radius} ({2 * self.radius + 1} keys, truncated at the borders)"

    def covers(self, length: int) -> bool:
        return length <= self.radius + 1

    def attend(self, q, k, v, scale: float) -> torch.Tensor:
        """The window over whole sequences of real tokens: q [B, L, H_q, D] -> [B, L, H_q, D_v]."""
        return banded_attention(q, k, v, self.radius, scale)


# transformers passes one mask object to every layer of a type in a forward; its layout is read once.
_READ: dict = {}


def _padding_layout(rule, mask, batch: int, tokens: int):
    """(starts [B], lengths [B]) of each sequence's real tokens when ``mask`` is exactly the rule's window AND a
    padding mask with one contiguous run of real tokens per sequence; else the reason it is not."""
    key = (type(rule), rule.size if isinstance(rule, CausalWindow) else rule.radius, batch, tokens)
    cached = _READ.get(key)
    if cached is not None and cached[0]() is mask and cached[1] == mask._version:
        return cached[2]
    layout = _read_layout(rule, mask, batch, tokens)
    if len(_READ) > 16:
        _READ.clear()
    _READ[key] = (weakref.ref(mask), mask._version, layout)
    return layout


def _read_layout(rule, mask, batch: int, tokens: int):
    if mask.dim() != 4 or mask.shape[1] != 1 or tuple(mask.shape[2:]) != (tokens, tokens) \
            or mask.shape[0] not in (1, batch):
        return f"a mask of shape {tuple(mask.shape)} (glocal reads [B, 1, T, T])"
    if mask.dtype == torch.bool:
        allowed = mask[:, 0]
    elif mask.is_floating_point():
        allowed = mask[:, 0] == 0
        # Eager masks are 0 (attend) or the dtype's minimum (never attended); anything else is a bias.
        if not torch.equal(allowed, mask[:, 0] > torch.finfo(mask.dtype).min / 2):
            return "an additive mask with values other than 0 and the dtype's minimum (a score bias)"
    else:
        return f"a mask of dtype {mask.dtype}"
    valid = allowed.any(1)  # [B, T]: a real key is seen at least by its own query
    idx = torch.arange(tokens, device=mask.device)
    lengths = valid.sum(1)
    starts = valid.int().argmax(1)  # the first real token (0 when there is none)
    run = (idx[None, :] >= starts[:, None]) & (idx[None, :] < (starts + lengths)[:, None])
    if not torch.equal(run, valid):
        return "padding that is not one contiguous run of real tokens per sequence"
    band = rule.band(tokens, mask.device)
    for b in range(allowed.shape[0]):
        if not torch.equal(allowed[b], band if bool(valid[b].all()) else band & valid[b][None, :]):
            return "a mask that is not the layer's window and padding (a custom or packed-sequence mask)"
    return starts.expand(batch), lengths.expand(batch)


# --------------------------------------------------------------------------------------------- finding the layers


@dataclass
class LocalLayer:
    """One attention layer: its window rule (None: it stays original) and what it is or why it stays."""

    layer: int
    name: str
    rule: _Window | None
    reason: str


def layer_window(module) -> tuple[_Window | None, str]:
    """The exact window rule of one transformers attention module from its configuration, or (None, why not).

    Example:
        >>> from types import SimpleNamespace
        >>> config = SimpleNamespace(model_type="mistral", sliding_window=1024)
        >>> layer_window(SimpleNamespace(config=config, layer_idx=0, is_causal=True))
        (CausalWindow(1024), 'causal sliding window of 1024 keys (i - 1023 <= j <= i)')
    """
    config = getattr(module, "config", None)
    index = getattr(module, "layer_idx", None)
    types = getattr(config, "layer_types", None)
    kind = types[index] if types is not None and isinstance(index, int) and index < len(types) else None
    model_type = getattr(config, "model_type", "")
    if model_type == "modernbert":
        if kind != "sliding_attention":
            return None, f"full attention (layer_types[{index}] = {kind!r})"
        rule = BidirectionalWindow(config.local_attention // 2)
        return rule, rule.describe()
    window = getattr(config, "sliding_window", None)
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        return None, "full attention (no sliding_window in the configuration)"
    if kind is not None and kind != "sliding_attention":
        return None, f"{kind.replace('_', ' ')} (layer_types[{index}] = {kind!r})"
    softcap = getattr(config, "attn_logit_softcapping", None)
    if softcap is not None:
        return None, (f"attn_logit_softcapping={softcap}: tanh soft-capping of the scores cannot run through glocal's "
                      f"neighborhood ops, so the layer stays original")
    if getattr(module, "is_causal", True):
        rule = CausalWindow(window)
    elif model_type == "gemma3_text" and getattr(config, "use_bidirectional_attention", False):
        rule = BidirectionalWindow(window - 1)  # Gemma3TextModel's overlay: |i - j| < sliding_window
    else:
        return None, f"a bidirectional sliding window of a {model_type or 'model'} layout glocal does not know"
    return rule, rule.describe()


def local_layers(model) -> list[LocalLayer]:
    """Every attention layer of a Hugging Face model, with the window glocal.accelerate would run it with.

    Layers are numbered as :func:`glocal.analysis.capture` and :func:`glocal.convert` number them. Nothing is
    changed on the model.

    Shapes:
        returns [LocalLayer(layer, name, rule | None, reason)] in module order

    Example:
        >>> from glocal.convert.accelerate import local_layers
        >>> [(e.layer, e.rule) for e in local_layers(model)][:2]  # doctest: +SKIP
        [(0, None), (1, BidirectionalWindow(64))]
    """
    checks.accelerate_target(hf.is_hf_model(model), type(model).__name__)
    implementation = hf.original_implementation(model)
    found = []
    for i, (name, module) in enumerate(hf.attention_modules(model)):
        rule, reason = layer_window(module)
        if rule is not None and implementation not in IMPLEMENTATIONS:
            rule, reason = None, (f"{reason}, but attn_implementation={implementation!r}: glocal reads the masks of "
                                  f"{' and '.join(IMPLEMENTATIONS)} only; load the model with attn_implementation='sdpa'")
        found.append(LocalLayer(i, name, rule, reason))
    return found


@dataclass
class Acceleration:
    """What :func:`accelerate` did: every layer, with its window or why it stays original."""

    model: str
    implementation: str
    layers: list = field(default_factory=list)

    @property
    def accelerated(self) -> list[int]:
        """The accelerated layers."""
        return [e.layer for e in self.layers if e.rule is not None]

    @property
    def left(self) -> dict:
        """{layer: why it stays original} of the other layers."""
        return {e.layer: e.reason for e in self.layers if e.rule is None}

    def calls(self) -> dict:
        """{layer: {"glocal": n, reason: n}}: how each accelerated layer's calls ran since acceleration."""
        return {e.layer: dict(e.rule.calls) for e in self.layers if e.rule is not None}

    def summary(self) -> str:
        """One line: which layers are accelerated, and with which windows."""
        if not self.accelerated:
            kinds = sorted({e.reason for e in self.layers})
            return (f"glocal.accelerate: no local layers in {self.model} ({'; '.join(kinds) or 'no attention layers'}); "
                    f"the model is unchanged")
        windows: dict = {}
        for e in self.layers:
            if e.rule is not None:
                windows.setdefault(e.reason, []).append(e.layer)
        parts = [f"{', '.join(map(str, ls))}: {w}" for w, ls in windows.items()]
        return (f"glocal.accelerate: {len(self.accelerated)} of {len(self.layers)} layers of {self.model} accelerated "
                f"({self.implementation} elsewhere): " + "; ".join(parts))

    def __str__(self) -> str:
        lines = [self.summary()]
        for e in self.layers:
            lines.append(f"  layer {e.layer} ({e.name}): " + (f"accelerated, {e.reason}" if e.rule is not None
                                                            else f"original: {e.reason}"))
        return "\n".join(lines)


def accelerate(model) -> Acceleration:
    """Run the layers of ``model`` whose attention is windowed by its configuration with glocal's ops, exactly.

    In place; ``glocal.convert.restore(model)`` undoes it. Returns an :class:`Acceleration` report (every layer,
    accelerated or why not; ``report.calls()`` counts how the calls ran). A model with no local layer is left
    unchanged and a ``UserWarning`` says so. Layers with converted heads (``glocal.convert``) stay converted;
    converting accelerated layers afterwards is refused. While a capture or steering handler is attached,
    accelerated layers run the original implementation (exact either way).

    Shapes:
        model: a Hugging Face transformers model (sdpa or eager attention); outputs unchanged to float tolerance

    Example:
        >>> import glocal
        >>> from transformers import ModernBertConfig, ModernBertModel  # doctest: +SKIP
        >>> model = ModernBertModel(ModernBertConfig(num_hidden_layers=6)).eval()  # doctest: +SKIP
        >>> glocal.accelerate(model).accelerated  # doctest: +SKIP
        [1, 2, 4, 5]
        >>> glocal.convert.restore(model)  # doctest: +SKIP
    """
    layers = local_layers(model)
    converted = set(hf.converted_layers(model))
    for e in layers:
        if e.rule is not None and e.layer in converted:
            e.rule, e.reason = None, f"{e.reason}, but it has converted heads (glocal.convert); it stays converted"
    report = Acceleration(type(model).__name__, hf.original_implementation(model), layers)
    by_layer = {e.layer: e.rule for e in layers if e.rule is not None}
    if not by_layer:
        warnings.warn(report.summary(), UserWarning, stacklevel=2)
        return report
    hf.accelerate(model, by_layer)
    return report
