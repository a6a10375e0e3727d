"""What every decoding cache shares: the layout fixed at the first token, saving and resuming, a growable buffer.

Shapes (heads-last, one token per call): k_t [B, H_kv, D], v_t [B, H_kv, D_v], q_t [B, H_q, D];
buffers [B, capacity, H_kv, D].

Example:
    >>> import torch
    >>> from glocal.decoding.base import GrowingBuffer
    >>> buf = GrowingBuffer()
    >>> buf.extend(torch.ones(1, 3, 2, 4)); buf.extend(torch.zeros(1, 2, 2, 4))
    >>> buf.view().shape, buf.length
    (torch.Size([1, 5, 2, 4]), 5)
"""

from __future__ import annotations

import torch

from ..checks.decoding import _layout_of, cache_query, cache_state, cache_tokens

GROWTH = 1.5  # capacity grows geometrically: amortised O(1) copies per token, at most 1.5x the memory needed
MIN_CAPACITY = 64


class GrowingBuffer:
    """Rows along axis 1 of a preallocated tensor ``[B, capacity, *rest]``, grown by ``GROWTH`` when full."""

    def __init__(self):
        self.data: torch.Tensor | None = None
        self.length = 0

    def extend(self, rows: torch.Tensor) -> None:
        """Append ``rows [B, n, *rest]`` (the first call fixes B, rest, dtype and device)."""
        need = self.length + rows.shape[1]
        if self.data is None or need > self.data.shape[1]:
            capacity = max(MIN_CAPACITY, need, int(GROWTH * (0 if self.data is None else self.data.shape[1])))
            grown = rows.new_empty((rows.shape[0], capacity, *rows.shape[2:]))
            if self.length:
                grown[:, :self.length] = self.data[:, :self.length]
            self.data = grown
        self.data[:, self.length:need] = rows
        self.length = need

    def view(self) -> torch.Tensor:
        """The rows held, ``[B, length, *rest]`` (a view: no copy)."""
        return self.data[:, :self.length]

    def nbytes(self) -> int:
        return 0 if self.data is None else self.data.nbytes

    def state(self):
        return None if self.data is None else self.view().clone()

    def load(self, rows) -> None:
        self.data, self.length = None, 0
        if rows is not None:
            self.extend(rows)


class DecodingCache:
    """The shared shell: ``length`` (tokens seen), the layout of the first token, ``reset``, ``nbytes``,
    ``state_dict`` / ``load_state_dict``. A subclass names its ``options``, the attributes that hold
    growable rows (``BUFFERS``, each a GrowingBuffer) and those that hold one tensor or None (``TENSORS``)."""

    BUFFERS: tuple = ()
    TENSORS: tuple = ()
    options: dict

    def __init__(self):
        self.length = 0
        self.layout: dict | None = None
        self._clear()

    def _clear(self) -> None:
        """Drop every held tensor (buffers become empty)."""
        for name in self.BUFFERS:
            setattr(self, name, GrowingBuffer())
        for name in self.TENSORS:
            setattr(self, name, None)

    def reset(self) -> None:
        """Forget the stream: the cache is as new (its options kept)."""
        self.length, self.layout = 0, None
        self._clear()

    def nbytes(self) -> int:
        """Bytes of tensor memory the cache holds now (allocated, not only used)."""
        return sum(_nbytes(getattr(self, name)) for name in self.BUFFERS + self.TENSORS)

    def state_dict(self) -> dict:
        """Everything needed to resume the stream: options, length, layout and tensors (copies)."""
        tensors = {}
        for name in self.BUFFERS + self.TENSORS:
            held = getattr(self, name)
            tensors[name] = held.state() if isinstance(held, GrowingBuffer) else None if held is None else held.clone()
        return {"kind": type(self).__name__, "options": dict(self.options), "length": self.length,
                "layout": None if self.layout is None else dict(self.layout), "tensors": tensors}

    def load_state_dict(self, state: dict) -> None:
        """Resume a stream saved by ``state_dict`` (from a cache built with the same options)."""
        cache_state(state, type(self).__name__, dict(self.options))
        self.reset()
        self.length, self.layout = int(state["length"]), None if state["layout"] is None else dict(state["layout"])
        for name in self.BUFFERS + self.TENSORS:
            saved = state["tensors"][name]
            held = getattr(self, name)
            if isinstance(held, GrowingBuffer):
                held.load(saved)
            else:
                setattr(self, name, None if saved is None else saved.clone())

    def _check_step(self, q_t, k_t, v_t, rope: bool = False) -> None:
        """Check a whole step before any of it changes the cache."""
        cache_tokens(self.layout, k_t, v_t, rope)
        cache_query(self.layout or _layout_of(k_t, v_t), q_t, self.length + 1)

    def _fix_layout(self, k: torch.Tensor, v: torch.Tensor) -> None:
        if self.layout is None:
            self.layout = _layout_of(k, v)

    def __repr__(self) -> str:
        options = ", ".join(f"{name}={value!r}" for name, value in self.options.items())
        return f"{type(self).__name__}({options}; length={self.length}, nbytes={self.nbytes()})"


class KeyValueCache(DecodingCache):
    """A cache of keys and values: ``append`` one token, ``extend`` by a chunk, ``attend`` the newest query,
    ``step`` = append then attend. A subclass writes with ``_add(k [B, T, H, D], v)`` and reads in ``attend``."""

    def _rotates(self) -> bool:
        """Whether the cache applies RoPE itself (then its keys need an even head dim)."""
        return getattr(self, "rope_theta", None) is not None

    def append(self, k_t: torch.Tensor, v_t: torch.Tensor) -> None:
        """Add one token's key ``[B, H_kv, D]`` and value ``[B, H_kv, D_v]``."""
        cache_tokens(self.layout, k_t, v_t, self._rotates())
        self._fix_layout(k_t, v_t)
        self._add(*((k_t[:, None], v_t[:, None]) if k_t.dim() == 3 else (k_t, v_t)))

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add a chunk of tokens, ``[B, T, H_kv, D]`` and ``[B, T, H_kv, D_v]`` (a prefill)."""
        self.append(k, v)

    def step(self, q_t, k_t, v_t, scale: float | None = None):
        """``append(k_t, v_t)`` then ``attend(q_t)``; the whole step is validated before the cache changes."""
        self._check_step(q_t, k_t, v_t, self._rotates())
        self.append(k_t, v_t)
        return self.attend(q_t, scale)

    def _add(self, k: torch.Tensor, v: torch.Tensor) -> None:
        raise NotImplementedError

    def attend(self, q_t: torch.Tensor, scale: float | None = None, return_lse: bool = False):
        raise NotImplementedError


def _nbytes(held) -> int:
    if held is None:
        return 0
    return held.nbytes() if isinstance(held, GrowingBuffer) else held.nbytes
