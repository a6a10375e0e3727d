"""Checks of block_sparse attention (in progress)."""
