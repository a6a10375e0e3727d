"""glocal: attention across the locality spectrum, one API from local to global.

See the README for a tour; every public function's docstring has a shape
legend and an example.
"""

from . import analysis, nn
from .backends import available as available_backends
from .backends import use_backend
from .convert import convert, plan_from_report
from .functional import attention, merge_attentions, na1d, na2d, na3d, neighborhood_attention
from .global_attention import channel_attention, compressed_attention, global_token_attention
from .linear import inline_attention, linear_attention, linear_attention_step, local_concentration_attention
from .masks import dense_mask, neighborhood_mask_mod
from .spec import AttentionSpec, NeighborhoodSpec, make_neighborhood_spec

__version__ = "0.1.0"

__all__ = [
    "AttentionSpec",
    "NeighborhoodSpec",
    "attention",
    "channel_attention",
    "compressed_attention",
    "convert",
    "global_token_attention",
    "inline_attention",
    "linear_attention",
    "linear_attention_step",
    "local_concentration_attention",
    "available_backends",
    "dense_mask",
    "make_neighborhood_spec",
    "merge_attentions",
    "na1d",
    "na2d",
    "na3d",
    "neighborhood_attention",
    "neighborhood_mask_mod",
    "plan_from_report",
    "use_backend",
]
