"""Checks of rat attention (in progress)."""
