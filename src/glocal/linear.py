"""Old import path of linear, InLine and L2ViT attention (``glocal.linear``); the ops live in ``glocal.ops.linear``,
the fast paths in ``glocal.backends.cpu.linear`` and the references in ``glocal.backends.reference``.

Example:
    >>> import glocal.linear as la
    >>> la.linear_attention is __import__("glocal").linear_attention
    True
"""

from .backends.cpu.linear import BLOCK_TOKENS  # noqa: F401
from .backends.reference.inline import inline_attention_reference  # noqa: F401
from .backends.reference.linear import linear_attention_reference  # noqa: F401
from .backends.reference.local_concentration import (
    local_concentration_attention_reference,  # noqa: F401
)
from .numerics import FEATURE_MAPS  # noqa: F401
from .ops.linear import (  # noqa: F401
    INLINE_PATTERNS,
    LOCAL_CONCENTRATION_PATTERNS,
    inline_attention,
    linear_attention,
    linear_attention_step,
    local_concentration_attention,
)
