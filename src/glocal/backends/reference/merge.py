"""Reference of merging attention results over disjoint key sets (``glocal.merge_attentions``).

Shapes: tensors["outputs"]: list of [B, *, H, D_v]; tensors["lses"]: list of [B, *, H] -> (out, lse)

Example:
    >>> import torch
    >>> from glocal.backends.reference import merge
    >>> from glocal.spec import MergeSpec
    >>> o, l = torch.ones(1, 3, 2, 4), torch.zeros(1, 3, 2)
    >>> out, lse = merge.run(MergeSpec(), {"outputs": [o, 2 * o], "lses": [l, l]}, 1.0)
    >>> float(out[0, 0, 0, 0]), round(float(lse[0, 0, 0]), 4)
    (1.5, 0.6931)
"""

from __future__ import annotations

from ...numerics import merge_lse
from ...spec import MergeSpec

NAME = "reference"


def can_run(spec, tensors: dict) -> list[str]:
    if not isinstance(spec, MergeSpec):
        return [f"reference does not implement {type(spec).__name__} as a merge"]
    return []


def run(spec, tensors: dict, scale: float):
    """``(out, lse)``: one softmax over the parts' lses weights their outputs (``scale`` is unused)."""
    return merge_lse(tensors["outputs"], tensors["lses"])
