"""Reference backend: one exact, readable oracle per op family, on any device and dtype.

Every fast backend is tested against these. They materialise the full score (or weight) matrix
of every query against every key, O(N_q · N_kv) memory per batch and head (a 64x64 grid with 4
heads: 4 · 4096² · 4 bytes = 268 MB), compute in float32 (float64 for float64 inputs) and are
differentiable through ordinary autograd. None shares code with a fast path beyond the
:mod:`glocal.numerics` primitives (softmax with lse, the lse merge, dense masked attention).

Modules: ``dense`` and ``neighborhood`` (softmax over a dense mask), ``merge``, ``linear``,
``inline``, ``channel``; and the oracles of the composite ops, which are not dispatched but used
by the tests: ``global_tokens`` (global-token and compressed attention), ``local_concentration``.

Example:
    >>> import torch, glocal
    >>> q = k = v = torch.randn(1, 6, 6, 2, 8)
    >>> glocal.na2d(q, k, v, kernel_size=3, backend="reference").shape
    torch.Size([1, 6, 6, 2, 8])
"""

NAME = "reference"


def describe() -> str:
    return "reference: dense masks and score matrices in PyTorch, every family (the oracle; O(N²) memory)"
