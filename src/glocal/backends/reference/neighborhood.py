"""Reference of neighborhood attention: the dense mask of DESIGN.md §1 and one softmax (``dense.run``).

Shapes:
    q: [B, *spatial, H_q, D]  k: [B, *spatial, H_kv, D]  v: [B, *spatial, H_kv, D_v]
    additional_keys / additional_values: [B, S, H_kv, D] / [B, S, H_kv, D_v]
    returns (out [B, *spatial, H_q, D_v], lse [B, *spatial, H_q])

Example:
    >>> import torch
    >>> from glocal.backends.reference import neighborhood
    >>> from glocal.spec import make_neighborhood_spec
    >>> q = k = v = torch.randn(1, 6, 6, 2, 8)
    >>> out, lse = neighborhood.run(make_neighborhood_spec((6, 6), 3), {"q": q, "k": k, "v": v}, 0.3)
    >>> out.shape
    torch.Size([1, 6, 6, 2, 8])
"""

from __future__ import annotations

from ...spec import NeighborhoodSpec
from .dense import run  # noqa: F401  (dense_mask(spec) is the neighborhood's mask)

NAME = "reference"


def can_run(spec, tensors: dict) -> list[str]:
    if not isinstance(spec, NeighborhoodSpec):
        return [f"reference does not implement {type(spec).__name__} as neighborhood attention"]
    return []
