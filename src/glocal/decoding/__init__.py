"""Decoding with bounded memory: one cache interface for every causal mechanism.

Shapes (heads-last, one token per call): q_t [B, H_q, D], k_t [B, H_kv, D], v_t [B, H_kv, D_v]
-> out_t [B, H_q, D_v]; chunks (``extend``, a prefill) [B, T, H, D].

Every cache has ``step`` (add the newest token, then read it with its query), ``reset()``,
``nbytes()`` (memory held), ``length`` (tokens seen) and ``state_dict()`` / ``load_state_dict()``
to save and resume a stream; the key/value caches also ``append(k_t, v_t)`` and ``attend(q_t)``.
A token of the wrong shape, dtype or device is refused before the cache changes.

=======================  ===================================  =============================
cache                    what it keeps                        memory
=======================  ===================================  =============================
KVCache                  every key and value (dense)          O(T)
SlidingWindowCache       the last ``window`` + ``sinks``      O(window + sinks)
LinearAttentionState     kv and ksum sums                     O(1)
RATCache                 one state per chunk + the running    O(T / chunk_size)
MoBACache                keys, values and block means         O(T), compute O(top_k * block + T / block)
DecoderCache             one of the above per model layer     the sum
=======================  ===================================  =============================

Example:
    >>> import torch, glocal
    >>> from glocal.decoding import SlidingWindowCache
    >>> cache = SlidingWindowCache(window=1024, sinks=4)
    >>> for t in range(3):
    ...     out_t = cache.step(torch.randn(1, 4, 64), torch.randn(1, 4, 64), torch.randn(1, 4, 64))
    >>> out_t.shape, cache.nbytes()
    (torch.Size([1, 4, 64]), 2105344)
"""

from .base import DecodingCache, GrowingBuffer, KeyValueCache  # noqa: F401
from .kv import KVCache  # noqa: F401
from .linear import LinearAttentionState  # noqa: F401
from .moba import MoBACache  # noqa: F401
from .model import DecoderCache  # noqa: F401
from .rat import RATCache  # noqa: F401
from .window import SlidingWindowCache  # noqa: F401
