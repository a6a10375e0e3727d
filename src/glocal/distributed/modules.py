"""``wrap``: glocal's attention modules (and models holding them) run on sharded inputs.

A wrapped attention module shares the original's parameters (under the same names, so state
dicts load either way) and calls the context-parallel op in place of the single-device one:
neighborhood layers the halo exchange, full attention the ring, linear attention the state
prefix. Token-wise modules (projections, norms, MLPs) need no change and are kept as they are.

Example (inside an initialised process group):
    >>> import torch, glocal.nn, glocal.distributed as gd                 # doctest: +SKIP
    >>> layer = gd.wrap(glocal.nn.NeighborhoodAttention2D(dim=64, num_heads=4, kernel_size=7))  # doctest: +SKIP
    >>> y = layer(gd.shard(torch.randn(1, 64, 64, 64), dim=1))             # doctest: +SKIP
"""

from __future__ import annotations

import copy

from torch import nn

from .. import checks
from ..checks import distributed as dist_checks
from ..checks.base import int_at_least
from ..nn import (
    Attention,
    LinearAttention,
    NeighborhoodAttention1D,
    NeighborhoodAttention2D,
    NeighborhoodAttention3D,
)
from . import comm
from .halo import neighborhood_attention
from .linear import linear_attention
from .ring import ring_attention

SUPPORTED = (NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D, Attention, LinearAttention)


class ShardedAttention(nn.Module):
    """A glocal attention module run on this rank's shard of its input; same parameters, same names.

    Shapes: x [B, *local, dim] -> [B, *local, dim]: neighborhood layers a slab along spatial axis
    ``shard_dim``; full and linear attention a piece of the sequence (``layout`` as
    :func:`glocal.distributed.shard` made it).
    """

    def __init__(self, layer: nn.Module, group=None, shard_dim: int = 0, layout: str = "contiguous"):
        super().__init__()
        object.__setattr__(self, "layer", layer)  # not a child: its parameters are registered below, by name
        for name, child in layer.named_children():
            self.add_module(name, child)
        for name, param in layer.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buf in layer.named_buffers(recurse=False):
            self.register_buffer(name, buf)
        self.group, self.shard_dim, self.layout = group, shard_dim, layout

    def forward(self, x):
        layer = self.layer
        ndim = getattr(layer, "ndim", 1)
        # Checked on every rank together: one rank's bad input stops all of them.
        _, error = comm.capture(lambda: checks.module_input(x, layer.dim, ndim))
        comm.agree(comm.Group(self.group), None, error)
        q, k, v = layer._qkv(x)
        if isinstance(layer, Attention):
            out = ring_attention(q, k, v, layer.is_causal, layer.scale, group=self.group, layout=self.layout)
        elif isinstance(layer, LinearAttention):
            out = linear_attention(q, k, v, layer.feature_map, layer.is_causal, chunk_size=layer.chunk_size,
                                   group=self.group)
        else:
            out = neighborhood_attention(q, k, v, layer.kernel_size, layer.stride, layer.dilation, layer.is_causal,
                                         scale=layer.scale, group=self.group, shard_dim=self.shard_dim)
        return layer._out(out)

    def extra_repr(self) -> str:
        return f"{type(self.layer).__name__}: {self.layer.extra_repr()}, shard_dim={self.shard_dim}, " \
               f"layout={self.layout!r}"


def _is_glocal(module) -> bool:
    return type(module).__module__.split(".")[0] == "glocal"


def _wrap(module, group, shard_dim, layout, found: list):
    if isinstance(module, SUPPORTED):
        if not isinstance(module, (Attention, LinearAttention)):
            dist_checks.wrap_layout(module, layout)
        found.append(module)
        return ShardedAttention(module, group, shard_dim, layout)
    if _is_glocal(module) and not isinstance(module, ShardedAttention):
        dist_checks.wrap_module(module, SUPPORTED)
    children = {name: _wrap(child, group, shard_dim, layout, found) for name, child in module.named_children()}
    if all(children[name] is child for name, child in module.named_children()):
        return module
    new = copy.copy(module)  # the caller's model is left as it was; parameters are shared
    new._modules = dict(children)
    return new


def wrap(module: nn.Module, group=None, shard_dim: int = 0, layout: str = "contiguous") -> nn.Module:
    """``module`` with every glocal attention module in it run context-parallel; the caller's module is unchanged.

    Shapes: the wrapped model takes this rank's shard of the input ([B, *local, dim]) and returns its
    shard of the output. Supported: NeighborhoodAttention1D/2D/3D (halo exchange along spatial axis
    ``shard_dim``), Attention (ring attention), LinearAttention (state prefix); any other glocal
    module is refused (it would see only the local shard), and other modules must act token by token.
    Parameters are shared with the original (a wrapped module trains the original's weights).

    Args:
        group: the process group (None: the default group).
        shard_dim: the sharded spatial axis of neighborhood layers.
        layout: "contiguous" (every layer) or "zigzag" (causal full attention load-balanced; no
            neighborhood layers), matching :func:`glocal.distributed.shard`.

    Example (run under torchrun or torch.multiprocessing with an initialised group):
        >>> model = gd.wrap(torch.nn.Sequential(glocal.nn.Attention(64, 4, is_causal=True)), layout="zigzag")  # doctest: +SKIP
        >>> y = model(gd.shard(x, 1, layout="zigzag"))                     # doctest: +SKIP
    """
    dist_checks.layout(layout)
    int_at_least("shard_dim", shard_dim, 0, "the sharded spatial axis", 0)
    found = []
    wrapped = _wrap(module, group, shard_dim, layout, found)
    if not found:
        dist_checks.wrap_module(module, SUPPORTED)
    return wrapped
