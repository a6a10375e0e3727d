"""Checks of Mixture-of-Head attention (glocal.nn.MoHAttention).

Every message states the rule, the values that broke it and the fix (see glocal.checks).

Example:
    >>> from glocal.checks.moh import moh_args
    >>> moh_args(num_heads=12, shared_heads=4, routed_top_k=2, router="learned")
"""

from __future__ import annotations

import numbers

MOH_ROUTERS = ("learned", "query_norm")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def moh_args(num_heads: int, shared_heads, routed_top_k, router) -> None:
    """``0 <= shared_heads < num_heads``; ``1 <= routed_top_k <= num_heads - shared_heads``; a known router."""
    if not _is_int(shared_heads):
        raise TypeError(
            f"shared_heads must be an int; got shared_heads={shared_heads!r} of type {type(shared_heads).__name__}. "
            f"Pass an int, e.g. shared_heads={num_heads // 3}."
        )
    if not 0 <= shared_heads < num_heads:
        raise ValueError(
            f"shared_heads must lie in 0..num_heads - 1 (at least one head must be left to route); got "
            f"shared_heads={shared_heads}, num_heads={num_heads}. Pass a smaller shared_heads, e.g. "
            f"shared_heads={num_heads // 3}, or use glocal.nn.Attention to run every head for every token."
        )
    if not _is_int(routed_top_k):
        raise TypeError(
            f"routed_top_k must be an int; got routed_top_k={routed_top_k!r} of type "
            f"{type(routed_top_k).__name__}. Pass an int, e.g. routed_top_k=1."
        )
    routed = num_heads - shared_heads
    if not 1 <= routed_top_k <= routed:
        raise ValueError(
            f"routed_top_k must lie in 1..E, E = num_heads - shared_heads routed heads (each token picks "
            f"routed_top_k of them); got routed_top_k={routed_top_k}, num_heads={num_heads}, "
            f"shared_heads={shared_heads}, E={routed}. Pass routed_top_k between 1 and {routed}."
        )
    if router not in MOH_ROUTERS or isinstance(router, bool):
        raise ValueError(
            f"router must be one of {list(MOH_ROUTERS)} (a learned linear router with MoH's gates, or "
            f"MoH-LLaMA3's parameter-free top-k of the query norms); got router={router!r}. Pass one of them."
        )
