"""glocal: attention across the locality spectrum, one API from local to global.

See the README for a tour; every public function's docstring has a shape
legend and an example.
"""

from . import analysis, config, convert, decoding, hooks, nn, ops
from .backends import available as available_backends
from .backends import use_backend
from .convert import accelerate, plan_from_report
from .masks import dense_mask, neighborhood_mask_mod
from .ops import (
    attention,
    channel_attention,
    compressed_attention,
    global_token_attention,
    inline_attention,
    linear_attention,
    linear_attention_step,
    local_concentration_attention,
    local_linear_attention,
    merge_attentions,
    moba_attention,
    moba_attention_nd,
    moba_selection,
    na1d,
    na2d,
    na3d,
    neighborhood_attention,
    parallax_attention,
    rat_attention,
)
from .spec import AttentionSpec, NeighborhoodSpec, make_neighborhood_spec

__version__ = "0.1.0"

__all__ = [
    "AttentionSpec",
    "accelerate",
    "analysis",
    "NeighborhoodSpec",
    "attention",
    "channel_attention",
    "compressed_attention",
    "config",
    "decoding",
    "convert",
    "global_token_attention",
    "hooks",
    "inline_attention",
    "linear_attention",
    "linear_attention_step",
    "local_concentration_attention",
    "local_linear_attention",
    "available_backends",
    "dense_mask",
    "make_neighborhood_spec",
    "merge_attentions",
    "moba_attention",
    "moba_attention_nd",
    "moba_selection",
    "na1d",
    "na2d",
    "na3d",
    "neighborhood_attention",
    "neighborhood_mask_mod",
    "nn",
    "ops",
    "parallax_attention",
    "plan_from_report",
    "rat_attention",
    "use_backend",
]
