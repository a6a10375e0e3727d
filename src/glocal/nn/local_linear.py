"""Parallax attention layer. IN PROGRESS."""

from torch import nn


class ParallaxAttention(nn.Module):
    pass
