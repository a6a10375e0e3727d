"""Checks of local_linear attention (in progress)."""
