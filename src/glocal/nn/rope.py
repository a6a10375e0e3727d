"""Rotary position embedding (RoPE) on heads-last tensors, for sequences and grids.

``rope(x, positions, theta)`` rotates each pair of channels ``(x[..., i], x[..., i + D/2])`` of every
head by the angle ``position * theta ** (-2i / D)`` (the "rotate half" layout of GPT-NeoX and
Llama). A query and a key rotated by their positions have a dot product that depends only on
the difference of the positions. On a grid, ``rope_grid`` splits the head dim into one equal part
per axis and rotates each part by that axis's coordinate.

Shapes:
    x: [B, T, H, D] (D even)   positions: [T] or [B, T] (ints or floats)   ->  [B, T, H, D]
    rope_grid: x [B, *spatial, H, D] with D divisible by 2 * ndim  ->  same shape

Example:
    >>> import torch
    >>> from glocal.nn.rope import rope
    >>> q = torch.randn(1, 5, 2, 8); k = torch.randn(1, 5, 2, 8)
    >>> p = torch.arange(5)
    >>> a = (rope(q, p) * rope(k, p)).sum(-1)           # scores at positions p
    >>> b = (rope(q, p + 7) * rope(k, p + 7)).sum(-1)   # everything shifted by 7
    >>> torch.allclose(a, b, atol=1e-5)
    True
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=64)
def _inverse_frequencies(dim: int, theta: float, device: torch.device) -> torch.Tensor:
    # Built once per (dim, theta, device): decoding rotates a token at a time, where rebuilding it would
    # cost as much as the rotation. Never written to.
    return theta ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float64) / dim)


def _angles(positions: torch.Tensor, dim: int, theta: float, device, dtype) -> torch.Tensor:
    inv_freq = _inverse_frequencies(dim, float(theta), torch.device(device))
    return positions.to(device=device, dtype=torch.float64)[..., None] * inv_freq  # [..., D/2]


def rope(x: torch.Tensor, positions, theta: float = 10000.0) -> torch.Tensor:
    """``x`` [B, T, H, D] rotated by ``positions`` ([T] or [B, T]); computed in float32 (float64 stays)."""
    positions = torch.as_tensor(positions)
    dim = x.shape[-1]
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    angles = _angles(positions, dim, theta, x.device, compute)
    if angles.dim() == 2:  # [T, D/2] -> broadcast over the batch
        angles = angles[None]
    cos, sin = angles.cos().to(compute)[:, :, None, :], angles.sin().to(compute)[:, :, None, :]
    x1, x2 = x.to(compute).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class RopeAt:
    """RoPE at one position for every row of ``x [..., D]``: ``RopeAt(theta)(x, position)`` equals ``rope`` at that
    position (the same numbers), with the angles of 1024 consecutive positions kept in a table, since decoding
    rotates by a position that grows by one per token.

    Example:
        >>> import torch
        >>> x = torch.randn(1, 1, 2, 8)
        >>> torch.equal(RopeAt(10000.0)(x, 7), rope(x, torch.tensor([7])))
        True
    """

    SPAN = 1024

    def __init__(self, theta: float):
        self.theta, self.start, self.table, self.key = float(theta), None, None, None

    def _cos_sin(self, x: torch.Tensor, position: int, compute: torch.dtype):
        """cos and sin rows of width D (each half's angles twice: the rotate-half layout) at ``position``."""
        key = (x.shape[-1], compute, x.device)
        if self.table is None or self.key != key or not self.start <= position < self.start + self.SPAN:
            self.start, self.key = position, key
            angles = _angles(torch.arange(position, position + self.SPAN), x.shape[-1], self.theta, x.device, compute)
            angles = torch.cat([angles, angles], -1)
            self.table = angles.cos().to(compute), angles.sin().to(compute)
        return self.table[0][position - self.start], self.table[1][position - self.start]

    def __call__(self, x: torch.Tensor, position: int) -> torch.Tensor:
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        cos, sin = self._cos_sin(x, position, compute)
        half = x.shape[-1] // 2
        x1, x2 = x.to(compute).chunk(2, dim=-1)
        return torch.cat([x1 * cos[:half] - x2 * sin[:half], x2 * cos[half:] + x1 * sin[half:]], dim=-1).to(x.dtype)

    def into(self, out: torch.Tensor, x: torch.Tensor, x_half: torch.Tensor, position: int) -> None:
        """Write ``x`` rotated by ``position`` into ``out`` (same shape and dtype; float32 or float64), in place;
        ``x_half`` is ``cat(-x2, x1)``, kept by a caller that turns the same x at every token: two operations."""
        cos, sin = self._cos_sin(x, position, x.dtype)
        torch.mul(x, cos, out=out).addcmul_(x_half, sin)


def rope_grid(x: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """``x`` [B, *spatial, H, D] with each of D's ``ndim`` equal parts rotated by one axis's coordinate."""
    spatial = x.shape[1:-2]
    ndim = len(spatial)
    part = x.shape[-1] // ndim
    flat = x.flatten(1, -3)  # [B, N, H, D]
    coords = torch.stack(torch.meshgrid(*[torch.arange(n, device=x.device) for n in spatial], indexing="ij"),
                         -1).reshape(-1, ndim)
    pieces = [rope(flat[..., a * part:(a + 1) * part], coords[:, a], theta) for a in range(ndim)]
    return torch.cat(pieces + [flat[..., ndim * part:]], dim=-1).reshape(x.shape)
