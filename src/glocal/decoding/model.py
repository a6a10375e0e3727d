"""A model's decoding cache: one cache per layer, saved and resumed together.

Example:
    >>> from glocal.decoding import DecoderCache, KVCache, LinearAttentionState
    >>> cache = DecoderCache([KVCache(), LinearAttentionState()])
    >>> len(cache), cache.length, cache.nbytes()
    (2, 0, 0)
"""

from __future__ import annotations

from ..checks.decoding import cache_state


class DecoderCache:
    """The caches of a model's layers, in layer order, and the stream's length.

    ``layers[i]`` is what layer i's ``step`` reads and writes (a glocal.decoding cache, or a layer's
    own cache object with the same ``reset`` / ``nbytes`` / ``state_dict`` / ``load_state_dict``).
    ``length`` counts the tokens the model has seen; ``batch`` is the number of streams (None: any);
    ``nbytes()`` sums the layers'.

    Example:
        >>> import torch, glocal
        >>> dec = glocal.nn.HybridDecoder(32, 2, depth=2, pattern="LG", settings={"L": {"window": 4}})
        >>> cache = dec.new_cache(batch=1)
        >>> y_t = dec.step(torch.randn(1, 32), cache)
        >>> y_t.shape, cache.length, [type(c).__name__ for c in cache.layers]
        (torch.Size([1, 32]), 1, ['SlidingWindowCache', 'KVCache'])
    """

    def __init__(self, layers: list, batch: int | None = None):
        self.layers = list(layers)
        self.batch = batch
        self.length = 0

    def __len__(self) -> int:
        return len(self.layers)

    def reset(self) -> None:
        self.length = 0
        for layer in self.layers:
            layer.reset()

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def state_dict(self) -> dict:
        return {"kind": "DecoderCache", "options": self._options(),
                "length": self.length, "layers": [layer.state_dict() for layer in self.layers]}

    def load_state_dict(self, state: dict) -> None:
        cache_state(state, "DecoderCache", self._options())
        for layer, saved in zip(self.layers, state["layers"]):
            layer.load_state_dict(saved)
        self.length = int(state["length"])

    def _options(self) -> dict:
        return {"layers": [type(c).__name__ for c in self.layers], "batch": self.batch}

    def __repr__(self) -> str:
        return f"DecoderCache({len(self.layers)} layers; length={self.length}, nbytes={self.nbytes()})"
