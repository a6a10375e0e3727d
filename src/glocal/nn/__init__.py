"""Attention layers on channels-last inputs ``[B, *spatial, dim]``."""

from .attention import Attention, NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D

__all__ = ["Attention", "NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D"]
