"""The public ops, one module per family; each runs checks -> spec -> ``choose_backend`` -> ``run``.

- :mod:`.neighborhood`: ``neighborhood_attention``, ``na1d``, ``na2d``, ``na3d``
- :mod:`.dense`: ``attention``, ``merge_attentions``
- :mod:`.linear`: ``linear_attention``, ``linear_attention_step``, ``inline_attention``,
  ``local_concentration_attention``
- :mod:`.global_tokens`: ``global_token_attention``, ``compressed_attention``, ``channel_attention``
- :mod:`.block_sparse`: ``moba_attention``, ``moba_attention_nd``, ``moba_selection`` (MoBA, VMoBA)
- :mod:`.rat`: ``rat_attention``
- :mod:`.local_linear`: ``parallax_attention``, ``local_linear_attention``

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

from . import (
           block_sparse,
           dense,
           global_tokens,
           linear,
           local_linear,
           neighborhood,
           rat,
)
from .block_sparse import moba_attention, moba_attention_nd, moba_selection
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
from .local_linear import local_linear_attention, parallax_attention
from .neighborhood import na1d, na2d, na3d, neighborhood_attention
from .rat import rat_attention

__all__ = ["attention", "block_sparse", "channel_attention", "compressed_attention", "dense", "global_token_attention",
           "global_tokens", "inline_attention", "linear", "linear_attention", "linear_attention_step",
           "local_concentration_attention", "local_linear", "local_linear_attention", "merge_attentions",
           "moba_attention", "moba_attention_nd", "moba_selection", "na1d", "na2d", "na3d", "neighborhood",
           "neighborhood_attention", "parallax_attention", "rat", "rat_attention"]
