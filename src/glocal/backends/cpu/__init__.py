"""CPU backend: fast paths per family. Neighborhood attention has compiled C++ kernels (``kernels/``,
with a pure-PyTorch fallback); the other families are plain PyTorch (linear-time formulas, chunked
scans) and run on any device.

Example:
    >>> import torch, glocal
    >>> x = torch.randn(1, 64, 2, 16)
    >>> glocal.linear_attention(x, x, x, is_causal=True, backend="cpu").shape
    torch.Size([1, 64, 2, 16])
"""

from . import neighborhood

NAME = "cpu"


def describe() -> str:
    return neighborhood.describe() + "; linear, InLine and channel attention in plain PyTorch (any device)"
