"""Attention layers on channels-last inputs ``[B, *spatial, dim]``."""

from .attention import (
    Attention,
    NeighborhoodAttention1D,
    NeighborhoodAttention2D,
    NeighborhoodAttention3D,
)
from .global_modules import (
    ChannelAttention,
    CompressedAttention,
    GlobalTokenAttention,
    InLineAttention,
    LinearAttention,
    LocalConcentrationAttention,
)
from .local_linear import ParallaxAttention
from .rat import RATAttention

__all__ = [
    "Attention",
    "ChannelAttention",
    "CompressedAttention",
    "GlobalTokenAttention",
    "InLineAttention",
    "LinearAttention",
    "LocalConcentrationAttention",
    "NeighborhoodAttention1D",
    "NeighborhoodAttention2D",
    "NeighborhoodAttention3D",
    "ParallaxAttention",
    "RATAttention",
]
