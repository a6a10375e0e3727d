"""Record attention in real models: ``with glocal.analysis.capture(model) as rec: model(**inputs)``.

Three interception points, chosen per model:

- Hugging Face transformers models (a ``config`` with ``_attn_implementation``): a glocal function is
  registered in the model's attention interface (``AttentionInterface`` / ``attn_implementation``), so every
  attention module's call, with its module identity, padding mask and scale, reaches the recorder; the
  original implementation still computes the output.
- Any other PyTorch model: ``torch.nn.functional.scaled_dot_product_attention`` is patched inside the
  context (timm ViTs, ``nn.MultiheadAttention`` fast paths, hand-written modules).
- glocal's own ops (``glocal.na1d``, ``glocal.attention``, …): backend dispatch is wrapped, so the
  neighborhood mask and extra keys of each call are known.

Probabilities are recomputed from q, k, the mask and the scale (never from the kernel's output), in
float32, per query block. ``streaming=False`` keeps each call's maps ``[B, H, T_q, T_k]`` (on the CPU) and
computes statistics at ``report()`` time; ``streaming=True, window=w`` keeps only the running sums of
:mod:`glocal.analysis.metrics`, so memory stays O(block · T) per call.

Shapes:
    maps[layer]: list of [B, H, T_q, T_k] float32 per recorded call (exact mode)

Example:
    >>> import torch, glocal
    >>> from glocal.analysis import capture
    >>> q = k = v = torch.randn(1, 32, 2, 8)
    >>> with capture(None) as rec:
    ...     _ = glocal.na1d(q, k, v, kernel_size=5)
    >>> rec.maps[0][0].shape
    torch.Size([1, 2, 32, 32])
    >>> round(float(rec.report(window=5).layers[0]["locality"][0]), 4)
    1.0
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch

from . import metrics

_state = threading.local()


@dataclass
class AttentionCall:
    """One attention call, normalised.

    q: [B, H, T_q, D]; k: [B, H, T_k, D]; v: [B, H, T_k, D_v] (kv heads already repeated for GQA);
    allowed: bool broadcastable to [B, H, T_q, T_k] or None; bias: additive float, same, or None;
    causal: apply a bottom-right aligned causal mask; q_pos/k_pos: :class:`metrics.Positions`;
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
    q_pos: metrics.Positions
    k_pos: metrics.Positions
    replaced: list | None = None

    def scores(self, start: int, stop: int) -> torch.Tensor:
        """Masked scores of queries ``start:stop``: [B, H, stop-start, T_k] float32 (float64 for float64)."""
        compute = torch.float64 if self.q.dtype == torch.float64 else torch.float32
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
        from ..backends.reference import softmax_with_lse

        stop = self.q.shape[2] if stop is None else stop
        p = softmax_with_lse(self.scores(start, stop))[0]
        for heads, fn in self.replaced or ():
            p[:, heads] = fn(start, stop).to(p.dtype)
        return p

    @staticmethod
    def _rows(mask, start, stop):
        return mask[:, :, start:stop] if mask.shape[2] > 1 else mask


def positions_from_mask(allowed, batch, tq, tk, device):
    """1-D positions of keys and queries from a mask broadcastable to [B, H, T_q, T_k].

    A key is valid when some query may see it; queries of a self-attention call share the keys'
    positions, other queries are aligned to the last keys (decoding with a cache).
    """
    if allowed is None:
        valid = torch.ones(batch, tk, dtype=torch.bool, device=device)
    else:
        valid = allowed.any(dim=2).any(dim=1).expand(batch, tk)
    k_pos = metrics.positions_1d(valid)
    q_pos = k_pos if tq == tk else k_pos.rows(tk - tq, tk)
    return q_pos, k_pos


class Recorder:
    """Collects attention maps (or streamed statistics) per layer; see :func:`capture`."""

    def __init__(self, model, streaming=False, window=None, waad_clip=None, block=None, keep_maps=True,
                 grid=None, prefix_tokens=0):
        from .. import checks

        checks.capture_args(streaming, window, block)
        self.model = model
        self.streaming = streaming
        self.window = window
        self.waad_clip = waad_clip
        self.block = block
        self.keep_maps = keep_maps
        self.grid = grid
        self.prefix_tokens = prefix_tokens
        self.maps: dict[int, list] = {}
        self.calls: dict[int, list] = {}  # exact mode: (probs, q_pos, k_pos, causal) per call
        self.stats: dict[int, metrics.LayerStats] = {}
        self.names: dict[int, str] = {}
        self._stack = None
        self._counter = 0

    # -- hook plumbing -------------------------------------------------------------------------------
    def __enter__(self):
        self._stack = contextlib.ExitStack()
        self._stack.__enter__()
        self._stack.enter_context(intercept(self.model, self._handle, on_forward=self._new_forward))
        return self

    def __exit__(self, *exc):
        stack, self._stack = self._stack, None
        return stack.__exit__(*exc)

    def _new_forward(self):
        self._counter = 0

    def _layer_index(self, call: AttentionCall) -> int:
        if call.layer >= 0:
            return call.layer
        index = self._counter
        self._counter += 1
        return index

    @torch.no_grad()  # recording observes the model; it must not keep (or pay for) an autograd graph
    def _handle(self, call: AttentionCall):
        named = call.layer >= 0 and call.name
        layer = self._layer_index(call)
        call.layer = layer
        self.names.setdefault(layer, call.name if named else f"call {layer}")
        self._fix_grid(call)
        if self.streaming:
            self._stream(call)
        else:
            probs = call.probs().float().cpu()
            self.calls.setdefault(layer, []).append((probs, call.q_pos, call.k_pos, call.causal))
            self.maps.setdefault(layer, []).append(probs)
        return None

    def _fix_grid(self, call):
        """Give calls on a ViT-like patch grid 2-D positions (prefix tokens off-grid)."""
        if self.grid is None:
            return
        n = 1
        for g in self.grid:
            n *= g
        batch, tk = call.k.shape[0], call.k.shape[2]
        if tk == n + self.prefix_tokens and call.q.shape[2] == tk:
            pos = metrics.positions_grid(batch, tuple(self.grid), prefix=self.prefix_tokens, device=call.k.device)
            call.q_pos = call.k_pos = pos

    def _new_stats(self, layer, heads, window, clip, grid):
        return metrics.LayerStats(self.names.get(layer, f"call {layer}"), heads, window, clip, grid)

    def _stream(self, call):
        window = self.window
        clip = self.waad_clip if self.waad_clip is not None else max(window // 2, 1)
        heads, tq, tk = call.q.shape[1], call.q.shape[2], call.k.shape[2]
        st = self.stats.get(call.layer)
        if st is None:
            st = self.stats[call.layer] = self._new_stats(call.layer, heads, window, clip, self.grid)
        st.add_counts(call.q_pos, call.k_pos)
        # Rows per block: about 2**20 score elements per block (4 MiB per float32 temporary).
        block = self.block or max(1, (1 << 20) // max(1, call.q.shape[0] * heads * tk))
        for start in range(0, tq, block):
            stop = min(tq, start + block)
            p = call.probs(start, stop)
            metrics.accumulate(st, p, call.q_pos.rows(start, stop), call.k_pos, call.causal, count=False)
            if self.keep_maps and start == 0 and not st.maps:
                # Keep a small corner of the first map for plots (first batch item, up to 256 x 256).
                st.maps.append(p[0, :, :256, :256].float().cpu())

    # -- results ---------------------------------------------------------------------------------------
    def report(self, window: int | None = None, waad_clip: int | None = None, **classify):
        """Per-layer, per-head metrics as a :class:`glocal.analysis.report.Report`.

        window: tokens (or patches per axis) of the locality window; streaming recorders were given
        theirs at capture time and only accept that one. waad_clip: W of the windowed average
        attention distance (default window // 2). ``classify`` keywords go to the head classifier.
        """
        from .. import checks
        from .report import Report

        window = checks.report_window(window, self.window, self.streaming)
        clip = waad_clip if waad_clip is not None else (self.waad_clip or max(window // 2, 1))
        if self.streaming:
            checks.report_clip(clip, self.waad_clip if self.waad_clip is not None else max(window // 2, 1))
            layers = [self.stats[i] for i in sorted(self.stats)]
        else:
            layers = []
            for index in sorted(self.calls):
                calls = self.calls[index]
                st = self._new_stats(index, calls[0][0].shape[1], window, clip, self.grid)
                for probs, q_pos, k_pos, causal in calls:
                    metrics.accumulate(st, probs, q_pos, k_pos, causal, count=True)
                st.maps = [calls[0][0][0]]
                layers.append(st)
        return Report.from_stats(layers, window=window, waad_clip=clip, **classify)


def capture(model=None, streaming: bool = False, window: int | None = None, waad_clip: int | None = None,
            block: int | None = None, keep_maps: bool = True, grid=None, prefix_tokens: int | None = None):
    """Context manager recording per-layer, per-head attention of ``model`` (and of glocal ops).

    Shapes:
        rec.maps[layer]: list of [B, H, T_q, T_k] per call (exact mode); rec.report(window) → Report

    Args:
        model: a Hugging Face transformers model (recorded through its attention interface, layers
            numbered in module order), any other ``nn.Module`` (recorded through torch's
            scaled_dot_product_attention, layers numbered by call order within each forward), or None
            (glocal ops and SDPA calls, numbered by call order).
        streaming: keep only running statistics, computed block by block (no T x T maps); needs window.
        window: locality window in tokens (per axis on a grid) used by streamed statistics.
        waad_clip: W of the windowed average attention distance (default window // 2).
        block: query rows per block in streaming mode (default: about 2M scores per block).
        keep_maps: keep a small corner of the first map per layer for heatmaps (streaming mode).
        grid, prefix_tokens: patch grid (rows, cols) and number of leading class/register tokens for
            vision models; read from ``model.patch_embed.grid_size`` / ``model.num_prefix_tokens`` when
            the model has them (timm ViTs).

    Example:
        >>> import torch
        >>> from glocal.analysis import capture
        >>> attn = torch.nn.MultiheadAttention(16, 2, batch_first=True).eval()
        >>> x = torch.randn(1, 10, 16)
        >>> with capture(attn) as rec:  # (under no_grad, MHA's fused C++ path bypasses SDPA)
        ...     _ = attn(x, x, x, need_weights=False)
        >>> rec.maps[0][0].shape
        torch.Size([1, 2, 10, 10])
    """
    if grid is None and model is not None:
        patch = getattr(model, "patch_embed", None)
        if patch is not None and getattr(patch, "grid_size", None) is not None:
            grid = tuple(int(g) for g in patch.grid_size)
            if prefix_tokens is None:
                prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
    return Recorder(model, streaming=streaming, window=window, waad_clip=waad_clip, block=block,
                    keep_maps=keep_maps, grid=grid, prefix_tokens=prefix_tokens or 0)


# ---------------------------------------------------------------------------------------------------
# Interception: one context manager installs the hooks a model needs and routes normalised calls to a
# handler. A handler returns None (observe) or an output [B, T_q, H, D_v] that replaces the call's result.


def is_hf_model(model) -> bool:
    config = getattr(model, "config", None)
    return config is not None and hasattr(config, "_attn_implementation")


@contextlib.contextmanager
def intercept(model, handler, on_forward=None):
    """Route every attention call of ``model`` (and of glocal ops) to ``handler(call)`` inside the block."""
    with contextlib.ExitStack() as stack:
        if model is not None and is_hf_model(model):
            from ..integrations import transformers as hf

            stack.enter_context(hf.attach_handler(model, handler))
        else:
            stack.enter_context(_patch_sdpa(handler))
        stack.enter_context(_patch_glocal(handler))
        if on_forward is not None and model is not None:
            hook = model.register_forward_pre_hook(lambda *_: on_forward())
            stack.callback(hook.remove)
        yield


def busy() -> bool:
    """True while a handler is running (nested attention calls are then not intercepted again)."""
    return getattr(_state, "busy", 0) > 0


@contextlib.contextmanager
def _busy():
    _state.busy = getattr(_state, "busy", 0) + 1
    try:
        yield
    finally:
        _state.busy -= 1


def dispatch(handlers, call):
    """Run handlers on a call; returns the last non-None output ([B, T_q, H, D_v]) or None."""
    out = None
    with _busy():
        for handler in list(handlers):
            result = handler(call)
            if result is not None:
                out = result
    return out


_sdpa_handlers: list = []
_glocal_handlers: list = []
_originals: dict = {}


@contextlib.contextmanager
def _patched(owner, attr: str, key: str, wrapper, handlers: list, handler):
    """Replace ``owner.attr`` by ``wrapper`` while any handler is registered; nested captures share one patch."""
    if not handlers:
        _originals[key] = getattr(owner, attr)
        setattr(owner, attr, wrapper)
    handlers.append(handler)
    try:
        yield
    finally:
        handlers.remove(handler)
        if not handlers:
            setattr(owner, attr, _originals.pop(key))


def _patch_sdpa(handler):
    import torch.nn.functional as F

    return _patched(F, "scaled_dot_product_attention", "sdpa", _sdpa_wrapper, _sdpa_handlers, handler)


def _sdpa_wrapper(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                  enable_gqa=False, **kwargs):
    original = _originals["sdpa"]
    if busy() or query.dim() != 4:
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, enable_gqa=enable_gqa, **kwargs)
    call = sdpa_call(query, key, value, attn_mask, is_causal, scale, layer=-1, name="")
    out = dispatch(_sdpa_handlers, call)
    if out is not None:
        return out.transpose(1, 2).to(query.dtype)
    return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                    scale=scale, enable_gqa=enable_gqa, **kwargs)


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


def _patch_glocal(handler):
    from .. import functional

    return _patched(functional, "choose_backend", "choose", _choose_wrapper, _glocal_handlers, handler)


class _ObservedBackend:
    """Wraps the chosen backend: hands each call to the handlers, then runs (or replaces) it."""

    def __init__(self, backend):
        self.backend = backend
        self.NAME = backend.NAME

    def run(self, spec, q, k, v, scale, additional_keys=None, additional_values=None):
        if busy():
            return self.backend.run(spec, q, k, v, scale, additional_keys, additional_values)
        call = glocal_call(spec, q, k, v, scale, additional_keys, additional_values)
        out = dispatch(_glocal_handlers, call)
        if out is None:
            return self.backend.run(spec, q, k, v, scale, additional_keys, additional_values)
        # A steering handler replaced the output; the lse is that of the unmodified scores.
        lse = torch.logsumexp(torch.cat([call.scores(0, call.q.shape[2])], -1), -1)
        lse = lse.permute(0, 2, 1).reshape(q.shape[:-1])
        return out.reshape(*q.shape[:-1], v.shape[-1]).to(q.dtype), lse.float() if q.dtype != torch.float64 else lse


def _choose_wrapper(spec, tensors, name=None):
    return _ObservedBackend(_originals["choose"](spec, tensors, name))


def glocal_call(spec, q, k, v, scale, additional_keys, additional_values) -> AttentionCall:
    """An :class:`AttentionCall` from a glocal backend call (heads-last tensors, spec's mask, extra keys)."""
    from ..masks import dense_mask
    from ..spec import AttentionSpec

    batch, hq, hkv = q.shape[0], q.shape[-2], k.shape[-2]
    qf = q.reshape(batch, -1, hq, q.shape[-1]).transpose(1, 2)
    kf = k.reshape(batch, -1, hkv, k.shape[-1])
    vf = v.reshape(batch, -1, hkv, v.shape[-1])
    allowed = dense_mask(spec, device=q.device)
    extra = 0
    if additional_keys is not None:
        extra = additional_keys.shape[1]
        kf = torch.cat([kf, additional_keys], 1)
        vf = torch.cat([vf, additional_values], 1)
        allowed = torch.cat([allowed, torch.ones(allowed.shape[0], extra, dtype=torch.bool, device=q.device)], 1)
    kf = kf.transpose(1, 2).repeat_interleave(hq // hkv, dim=1)
    vf = vf.transpose(1, 2).repeat_interleave(hq // hkv, dim=1)
    if isinstance(spec, AttentionSpec):
        q_pos, k_pos = positions_from_mask(None, batch, qf.shape[2], kf.shape[2], q.device)
    else:
        grid = tuple(spec.spatial)
        q_pos = metrics.positions_grid(batch, grid, device=q.device)
        k_pos = metrics.positions_grid(batch, grid, suffix=extra, device=q.device)
    return AttentionCall(-1, "", qf, kf, vf, float(scale), allowed[None, None], None, False, q_pos, k_pos)
