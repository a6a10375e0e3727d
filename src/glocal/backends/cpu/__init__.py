"""CPU backend: fast paths per family. Neighborhood attention and MoBA decoding have compiled C++
kernels (``kernels/``, built by ``build``, each with a pure-PyTorch fallback); the other families
are plain PyTorch (linear-time formulas, chunked scans, gathered blocks) and run on any device.

Example:
    >>> import torch, glocal
    >>> x = torch.randn(1, 64, 2, 16)
    >>> glocal.linear_attention(x, x, x, is_causal=True, backend="cpu").shape
    torch.Size([1, 64, 2, 16])
"""

from . import neighborhood

NAME = "cpu"


def describe() -> str:
    return neighborhood.describe() + ("; MoBA decoding compiled too; linear, InLine, channel, MoBA, RAT and Parallax/LLA "
                                      "paths in plain PyTorch (any device)")
