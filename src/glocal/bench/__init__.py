"""Benchmarks behind ``glocal bench``: timing helpers, the neighborhood suite, and other families.

Example:
    >>> from glocal.bench.neighborhood import parse_config
    >>> parse_config("1d:1024,k31,causal=1")["is_causal"]
    (True,)
"""
