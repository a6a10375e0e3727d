"""timm vision transformer adapter: convert heads to 2-D neighborhood attention over the patch grid.

Written against the structure of timm's ``VisionTransformer`` (timm 1.0): ``model.blocks[i].attn`` is an
``Attention`` with ``qkv`` (one Linear giving q, k, v), ``num_heads``, ``head_dim``, ``scale``,
``q_norm``/``k_norm``, ``attn_drop``, ``norm``, ``proj``, ``proj_drop`` (and optionally ``gate``), whose
forward calls ``F.scaled_dot_product_attention`` on ``[B, H, N, D]``; ``model.patch_embed.grid_size`` is the
patch grid and ``model.num_prefix_tokens`` counts the class and register tokens that precede the patches.
Nothing here imports timm: any module of that structure is handled, which is also how it is tested.

A converted block's attention module gets an instance ``forward`` (removed by ``restore``): converted
heads run ``glocal.na2d`` over the patch grid with ``kernel_size=window`` per axis and the prefix tokens as
``additional_keys``/``additional_values`` (attended by every patch, never twice since they are not on the
grid); the prefix tokens' own queries keep full attention. Other heads run SDPA as before.

Shapes:
    x: [B, N, C] with N = prefix + rows * cols; q/k/v: [B, H, N, D]

Example:
    >>> from glocal.integrations import timm as vit
    >>> import torch
    >>> vit.is_vit(torch.nn.Linear(2, 2))
    False
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F

from .. import checks, hooks
from ..masks import dense_mask
from ..numerics import masked_softmax
from ..ops import na2d
from ..spec import make_neighborhood_spec


def _blocks(model):
    blocks = getattr(model, "blocks", None)
    return list(blocks) if blocks is not None else []


def is_vit(model) -> bool:
    blocks = _blocks(model)
    patch = getattr(model, "patch_embed", None)
    return (bool(blocks) and patch is not None and getattr(patch, "grid_size", None) is not None
            and all(hasattr(getattr(b, "attn", None), "qkv") and hasattr(b.attn, "num_heads") for b in blocks))


def heads_per_layer(model) -> list[int]:
    return [int(b.attn.num_heads) for b in _blocks(model)]


def convert(model, by_layer: dict) -> None:
    grid = tuple(int(g) for g in model.patch_embed.grid_size)
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    for layer, rules in by_layer.items():
        for head, rule in rules.items():
            if getattr(rule, "global_branch", None) is not None or rule.sinks:
                raise ValueError(
                    f"vision transformers convert to Local(window) with no sinks: the class/register tokens are "
                    f"already attended by every patch; got {rule} for (layer, head) = {(layer, head)}. "
                    f"Use glocal.convert.Local({rule.window})."
                )
        attn = _blocks(model)[layer].attn
        plan = dict(getattr(attn, "_glocal_plan", {}))
        plan.update(rules)
        attn._glocal_plan = plan
        attn._glocal_layout = (grid, prefix)
        attn.forward = types.MethodType(_forward, attn)


def restore(model) -> None:
    for block in _blocks(model):
        attn = block.attn
        if "_glocal_plan" in attn.__dict__:
            del attn._glocal_plan
            del attn._glocal_layout
            del attn.forward  # the instance attribute; the class's forward is back


def _forward(self, x, attn_mask=None, is_causal=False):
    """timm Attention.forward with some heads converted (same output layout and projections)."""
    batch, tokens, _ = x.shape
    grid, prefix = self._glocal_layout
    if tokens != prefix + grid[0] * grid[1] or attn_mask is not None or is_causal:
        raise ValueError(
            f"converted ViT attention expects {prefix} prefix tokens plus a {grid[0]}x{grid[1]} patch grid "
            f"({prefix + grid[0] * grid[1]} tokens) without attention masks; got {tokens} tokens, "
            f"attn_mask={'given' if attn_mask is not None else None}, is_causal={is_causal}. Restore the model "
            f"(glocal.convert.restore) for other input sizes."
        )
    gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    groups: dict = {}
    for head, rule in self._glocal_plan.items():
        groups.setdefault(rule.window, []).append(head)
    with _recorded(q, k, v, self.scale, grid, prefix, groups):
        out = _converted(self, q, k, v, grid, prefix, groups)
    x = out.transpose(1, 2).reshape(batch, tokens, -1)
    x = self.norm(x)
    if gate is not None:
        x = x * gate
    x = self.proj(x)
    return self.proj_drop(x)


def _allowed(grid, prefix: int, window: int, device) -> torch.Tensor:
    """[N, N] bool: the keys a converted head lets each token see (prefix rows keep full attention)."""
    n = prefix + grid[0] * grid[1]
    allowed = torch.ones(n, n, dtype=torch.bool, device=device)
    kernel = (min(window, grid[0]), min(window, grid[1]))
    allowed[prefix:, prefix:] = dense_mask(make_neighborhood_spec(tuple(grid), kernel)).to(device)
    return allowed


def _recorded(q, k, v, scale, grid, prefix: int, groups: dict):
    """Inside a capture: hand the layer to the recorders as one call whose converted heads carry their
    neighborhood probabilities, and keep the SDPA and glocal calls that compute it out of the recording."""
    handlers = hooks.sdpa_observers()
    if not handlers:
        return contextlib.nullcontext()
    call = hooks.sdpa_call(q, k, v, None, False, scale, layer=-1, name="")

    def probs_of(hs, allowed):
        return lambda start, stop: masked_softmax(call.scores(start, stop)[:, hs], allowed[start:stop])[0]

    call.replaced = [(hs, probs_of(hs, _allowed(grid, prefix, window, q.device))) for window, hs in groups.items()]
    checks.steering_converted_layer(hooks.dispatch(handlers, call) is not None, call.layer,
                                    sorted(h for hs in groups.values() for h in hs))
    return hooks.handling()


def _converted(self, q, k, v, grid, prefix: int, groups: dict) -> torch.Tensor:
    """All heads' outputs [B, H, N, D]: SDPA, then the converted heads' neighborhood attention over them."""
    batch = q.shape[0]
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
    out = out.clone()
    for window, hs in groups.items():
        # Patch queries: neighborhood attention on the grid, prefix tokens as extra keys/values.
        to_grid = lambda t: t[:, hs, prefix:].transpose(1, 2).reshape(batch, grid[0], grid[1], len(hs), -1)  # noqa: E731
        extra_k = k[:, hs, :prefix].transpose(1, 2) if prefix else None
        extra_v = v[:, hs, :prefix].transpose(1, 2) if prefix else None
        kernel = (min(window, grid[0]), min(window, grid[1]))
        o = na2d(to_grid(q), to_grid(k), to_grid(v), kernel_size=kernel, scale=self.scale,
                            additional_keys=extra_k, additional_values=extra_v)
        out[:, hs, prefix:] = o.reshape(batch, grid[0] * grid[1], len(hs), -1).transpose(1, 2).to(out.dtype)
    return out
