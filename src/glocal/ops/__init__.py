"""The public ops, one module per family; each runs checks -> spec -> ``choose_backend`` -> ``run``.

- :mod:`.neighborhood`: ``neighborhood_attention``, ``na1d``, ``na2d``, ``na3d``
- :mod:`.dense`: ``attention``, ``merge_attentions``
- :mod:`.linear`: ``linear_attention``, ``linear_attention_step``, ``inline_attention``,
  ``local_concentration_attention``
- :mod:`.global_tokens`: ``global_token_attention``, ``compressed_attention``, ``channel_attention``

Every op takes ``backend=`` (None: the first able backend of the family; or a name of
``glocal.available_backends()``), and ``glocal.use_backend`` scopes that choice for all of them.
Ops that combine families (global tokens, compressed and L2ViT attention) pass ``backend`` to
each part. What ``scale=None`` means is one rule per family, stated in each op's docstring and
tabulated in docs/api.md.

Example:
    >>> import torch, glocal
    >>> x = torch.randn(1, 32, 2, 16)
    >>> glocal.ops.linear.linear_attention(x, x, x, backend="reference").shape
    torch.Size([1, 32, 2, 16])
"""

from . import dense, global_tokens, linear, neighborhood
from .dense import attention, merge_attentions
from .global_tokens import (
           channel_attention,
           compressed_attention,
           global_token_attention,
)
from .linear import (
           inline_attention,
           linear_attention,
           linear_attention_step,
           local_concentration_attention,
)
from .neighborhood import na1d, na2d, na3d, neighborhood_attention

__all__ = ["attention", "channel_attention", "compressed_attention", "dense", "global_token_attention",
           "global_tokens", "inline_attention", "linear", "linear_attention", "linear_attention_step",
           "local_concentration_attention", "merge_attentions", "na1d", "na2d", "na3d", "neighborhood",
           "neighborhood_attention"]
