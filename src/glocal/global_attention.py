"""Old import path of global-token, compressed and channel attention (``glocal.global_attention``); the ops live in
``glocal.ops.global_tokens`` and their oracles in ``glocal.backends.reference``.

Example:
    >>> import glocal.global_attention as ga
    >>> ga.compressed_attention is __import__("glocal").compressed_attention
    True
"""

from .backends.reference.channel import channel_attention_reference  # noqa: F401
from .backends.reference.global_tokens import (  # noqa: F401
    compressed_attention_reference,
    global_token_attention_reference,
)
from .backends.reference.global_tokens import pool_reference as _pool_reference  # noqa: F401
from .masks import pool_tokens  # noqa: F401
from .ops.global_tokens import (  # noqa: F401
    CHANNEL_PATTERNS,
    COMPRESSED_PATTERNS,
    GLOBAL_TOKEN_PATTERNS,
    channel_attention,
    compressed_attention,
    global_token_attention,
)
