"""Content-routed block attention: MoBA (sequences, causal) and VMoBA (grids, non-causal). IN PROGRESS."""

from __future__ import annotations


def moba_selection(q, k, block_size, top_k=None, is_causal=True, threshold=None, block_means=None):
    raise NotImplementedError("moba_selection is being built")


def moba_attention(q, k, v, block_size, top_k=None, is_causal=True, threshold=None, scale=None, return_lse=False,
                   backend=None, block_means=None):
    raise NotImplementedError("moba_attention is being built")


def moba_attention_nd(q, k, v, block_shape, top_k=None, threshold=None, scale=None, return_lse=False, backend=None):
    raise NotImplementedError("moba_attention_nd is being built")
