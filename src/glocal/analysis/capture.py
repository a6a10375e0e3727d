"""Record attention in real models: ``with glocal.analysis.capture(model) as rec: model(**inputs)``.

Three interception points, chosen per model:

- Hugging Face transformers models (a ``config`` with ``_attn_implementation``): a glocal function is
  registered in the model's attention interface (``AttentionInterface`` / ``attn_implementation``), so every
  attention module's call, with its module identity, padding mask and scale, reaches the recorder; the
  original implementation still computes the output.
- Any other PyTorch model: ``torch.nn.functional.scaled_dot_product_attention`` is patched inside the
  context (timm ViTs, ``nn.MultiheadAttention`` fast paths, hand-written modules).
- glocal's own ops (``glocal.na1d``, ``glocal.attention``, …, every family whose key sets its spec
  describes): ``choose_backend`` hands each call to the observers of :mod:`glocal.hooks`, so the
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
import sys
import types

import torch

from .. import checks, hooks
from ..hooks import AttentionCall, op_call, positions_from_mask, sdpa_call  # noqa: F401  (documented names)
from ..integrations import transformers as hf
from . import metrics
from .report import Report


class Recorder:
    """Collects attention maps (or streamed statistics) per layer; see :func:`capture`."""

    def __init__(self, model, streaming=False, window=None, waad_clip=None, block=None, keep_maps=True,
                 grid=None, prefix_tokens=0):
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
# Interception: one context manager installs the observers a model needs (glocal.hooks) and routes
# normalised calls to a handler. A handler returns None (observe) or an output [B, T_q, H, D_v] that
# replaces the call's result.


def is_hf_model(model) -> bool:
    return hf.is_hf_model(model)


@contextlib.contextmanager
def intercept(model, handler, on_forward=None):
    """Route every attention call of ``model`` (and of glocal ops) to ``handler(call)`` inside the block."""
    with contextlib.ExitStack() as stack:
        if model is not None and hf.is_hf_model(model):
            stack.enter_context(hf.attach_handler(model, handler))
        else:
            stack.enter_context(hooks.observe_sdpa(handler))
        stack.enter_context(hooks.observe_ops(handler))
        if on_forward is not None and model is not None:
            hook = model.register_forward_pre_hook(lambda *_: on_forward())
            stack.callback(hook.remove)
        yield


class _CaptureModule(types.ModuleType):
    """``glocal.analysis.capture`` is this module and, called, :func:`capture`."""

    def __call__(self, *args, **kwargs):
        return capture(*args, **kwargs)


sys.modules[__name__].__class__ = _CaptureModule
