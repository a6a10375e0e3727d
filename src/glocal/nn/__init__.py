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
from .hybrid import HybridAttention, HybridCache
from .local_linear import ParallaxAttention
from .moh import MoHAttention
from .rat import RATAttention
from .routed_layer import RoutedCache, RoutedLayer
from .schedules import HybridDecoder, HybridEncoder

__all__ = [
    "Attention",
    "ChannelAttention",
    "CompressedAttention",
    "GlobalTokenAttention",
    "HybridAttention",
    "HybridCache",
    "HybridDecoder",
    "HybridEncoder",
    "InLineAttention",
    "LinearAttention",
    "LocalConcentrationAttention",
    "MoHAttention",
    "NeighborhoodAttention1D",
    "NeighborhoodAttention2D",
    "NeighborhoodAttention3D",
    "ParallaxAttention",
    "RATAttention",
    "RoutedCache",
    "RoutedLayer",
]
