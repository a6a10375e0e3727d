"""Parallax and Local Linear Attention. IN PROGRESS."""

from __future__ import annotations


def parallax_attention(q, r, k, v, window_size=None, is_causal=True, scale=None, return_lse=False, backend=None):
    raise NotImplementedError("parallax_attention is being built")


def local_linear_attention(q, k, v, window_size=None, is_causal=True, ridge=1e-2, scale=None, return_lse=False,
                           backend=None):
    raise NotImplementedError("local_linear_attention is being built")
