"""RAT attention layer. IN PROGRESS."""

from torch import nn


class RATAttention(nn.Module):
    pass
