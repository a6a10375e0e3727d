"""Backends per op family, in priority order, and the one place that chooses among them.

A backend implements a family in a module ``glocal/backends/<backend>/<family>.py`` (or, for a
small backend, one module ``<backend>.py`` that lists the families it implements in
``FAMILIES``). Each such module has

- ``can_run(spec, tensors) -> list[str]``: empty when it can run the problem, else the reasons;
- ``run(spec, tensors, scale) -> tuple``: the family's results (every softmax family returns
  ``(out, lse)``; see the op modules in ``glocal.ops`` for the others).

``spec`` is the family's frozen spec (:mod:`glocal.spec`, whose ``family`` names the family),
``tensors`` the op's named tensor inputs (``q``, ``k``, ``v``, ... or None), ``scale`` the resolved
softmax/feature scale. Modules that need optional packages import them inside their functions,
so listing a backend here never imports Triton.

``choose_backend`` also hands the call to the observers of :mod:`glocal.hooks` (capture,
steering) when the family's key sets are describable (:func:`glocal.masks.has_mask`), so every op
that dispatches here is observed, whatever its family.

Example:
    >>> import torch
    >>> from glocal.backends import choose_backend
    >>> from glocal.spec import make_neighborhood_spec
    >>> q = torch.randn(1, 8, 2, 16)
    >>> choose_backend(make_neighborhood_spec((8,), 3), {"q": q, "k": q, "v": q}).NAME
    'cpu'
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math

import torch

from .. import checks, config, hooks
from ..masks import dense_mask, has_mask
from ..spec import NeighborhoodSpec

# Every backend, and per family and device type the order in which backend=None tries them: the
# first that can run a problem runs it. On the CPU, FlexAttention (inference only, minutes of
# compilation) and the Triton interpreter (for tests) run only when named. The cpu modules of
# the families other than neighborhood are plain PyTorch and run on any device: on CUDA they
# are what runs until a family has a Triton kernel.
BACKENDS = ("cpu", "triton", "flex", "reference")
PRIORITY = {
    "neighborhood": {"cpu": ("cpu", "reference"), "cuda": ("triton", "flex", "reference")},
    "dense": {"cpu": ("cpu", "reference"), "cuda": ("flex", "reference")},
    "merge": {"cpu": ("reference",), "cuda": ("reference",)},
    "linear": {"cpu": ("cpu", "reference"), "cuda": ("cpu", "reference")},
    "inline": {"cpu": ("cpu", "reference"), "cuda": ("cpu", "reference")},
    "channel": {"cpu": ("cpu", "reference"), "cuda": ("cpu", "reference")},
    "block_sparse": {"cpu": ("cpu", "reference"), "cuda": ("triton", "cpu", "reference")},
    "rat": {"cpu": ("cpu", "reference"), "cuda": ("cpu", "reference")},
    "local_linear": {"cpu": ("cpu", "reference"), "cuda": ("cpu", "reference")},
}


@functools.lru_cache(maxsize=None)  # dispatch runs on every call, decoding steps too: import once
def _import(name: str):
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if (err.name or "").startswith(f"{__name__}.{name}"):
            return None
        raise


def load(name: str, family: str | None = None):
    """The module of backend ``name`` for ``family`` (its package with ``family=None``); None if absent."""
    package = _import(name)
    if package is None or family is None:
        return package
    if hasattr(package, "__path__"):
        return _import(f"{name}.{family}")
    return package if family in getattr(package, "FAMILIES", ()) else None


def available() -> list[str]:
    """Names of the backends present in this build, in priority order."""
    return [name for name in BACKENDS if load(name) is not None]


@contextlib.contextmanager
def use_backend(name: str | None):
    """Scope a preferred backend for every op: ``with glocal.use_backend("reference"): ...``.

    Inside the block, calls that pass ``backend=None`` use ``name`` (and raise
    its reasons if it cannot run). The default comes from ``GLOCAL_BACKEND``.
    """
    checks.backend_name(name, available())
    with config.backend(name):
        yield


def _reasons(name: str, spec, tensors: dict) -> list[str]:
    family = getattr(spec, "family", None)
    module = load(name, family) if family is not None else None
    if module is None:
        return [f"{name} does not implement {type(spec).__name__}"]
    return module.can_run(spec, tensors)


def choose_backend(spec, tensors: dict, name: str | None = None):
    """The backend module that runs ``spec`` on ``tensors``.

    ``name`` (or the scoped preference) forces one backend and raises its
    reasons when it cannot run; otherwise the first able backend of the spec's
    family in priority order is taken, and if none is able every backend's
    reasons are raised. While observers are registered (:mod:`glocal.hooks`)
    the module is wrapped so that they see the call.
    """
    name = name if name is not None else config.preferred_backend()
    names = available()
    checks.backend_name(name, names)
    family = getattr(spec, "family", None)
    if name is not None:
        reasons = _reasons(name, spec, tensors)
        if reasons:
            raise RuntimeError(f"backend {name!r} cannot run this problem: " + "; ".join(reasons))
        return _observed(load(name, family), spec)
    refusals = []
    device_type = _device_type(tensors)
    order = PRIORITY.get(family, {}).get(device_type, ("reference",)) if family is not None else BACKENDS
    for candidate in [n for n in order if n in names]:
        reasons = _reasons(candidate, spec, tensors)
        if not reasons:
            return _observed(load(candidate, family), spec)
        refusals.append(f"{candidate}: " + "; ".join(reasons))
    raise RuntimeError("no backend can run this problem:\n  " + "\n  ".join(refusals))


def _device_type(tensors: dict) -> str:
    """The device type of the first tensor among the inputs (lists of tensors count by their first)."""
    for t in tensors.values():
        if isinstance(t, (list, tuple)) and t:
            t = t[0]
        if isinstance(t, torch.Tensor):
            return t.device.type
    return "cpu"


def _observed(module, spec):
    if hooks.op_observers() and has_mask(spec):
        return _ObservedBackend(module)
    return module


class _ObservedBackend:
    """A backend module whose ``run`` first hands the call to the op observers (capture, steering)."""

    def __init__(self, module):
        self.module = module
        self.NAME = module.NAME

    def run(self, spec, tensors, scale):
        handlers = hooks.op_observers()
        if not handlers:
            return self.module.run(spec, tensors, scale)
        q, k, v = tensors["q"], tensors["k"], tensors["v"]
        n_q, n_kv = math.prod(q.shape[1:-2]), math.prod(k.shape[1:-2])
        allowed = dense_mask(spec, shape=(n_q, n_kv), device=q.device)
        grid = tuple(spec.spatial) if isinstance(spec, NeighborhoodSpec) else None
        call = hooks.op_call(q, k, v, scale, allowed, grid, tensors.get("additional_keys"),
                             tensors.get("additional_values"))
        out = hooks.dispatch(handlers, call)
        if out is None:
            return self.module.run(spec, tensors, scale)
        # A steering observer replaced the output; the lse is that of the unmodified scores.
        lse = torch.logsumexp(call.scores(0, call.q.shape[2]), -1).permute(0, 2, 1).reshape(q.shape[:-1])
        lse = lse.double() if q.dtype == torch.float64 else lse.float()
        return out.reshape(*q.shape[:-1], v.shape[-1]).to(q.dtype), lse
