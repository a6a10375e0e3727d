"""Backends in priority order, and the one place that chooses among them.

A backend is a module with ``NAME``, ``can_run(spec, tensors) -> list[str]``
(empty = it can run; else the reasons it cannot) and
``run(spec, q, k, v, scale, additional_keys, additional_values) -> (out, lse)``.
Modules that need optional packages import them inside their functions, so
listing a backend here never imports Triton.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os

# Every backend, and per device type the priority order in which backend=None
# tries them: the first that can run a problem runs it. On the CPU, FlexAttention
# (inference only, minutes of compilation) and the Triton interpreter (for
# tests) run only when named.
BACKENDS = ("cpu", "triton", "flex", "reference")
PRIORITY = {"cpu": ("cpu", "reference"), "cuda": ("triton", "flex", "reference")}

_preferred = contextvars.ContextVar("glocal_backend", default=os.environ.get("GLOCAL_BACKEND") or None)


def load(name: str):
    """Import a backend module; ``None`` if this build of glocal has no such module."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"{__name__}.{name}":
            return None
        raise


def available() -> list[str]:
    """Names of the backends present in this build, in priority order."""
    return [name for name in BACKENDS if load(name) is not None]


@contextlib.contextmanager
def use_backend(name: str | None):
    """Scope a preferred backend: ``with glocal.use_backend("reference"): ...``.

    Inside the block, calls that pass ``backend=None`` use ``name`` (and raise
    its reasons if it cannot run). The default comes from ``GLOCAL_BACKEND``.
    """
    from .. import checks

    checks.backend_name(name, available())
    token = _preferred.set(name)
    try:
        yield
    finally:
        _preferred.reset(token)


def choose_backend(spec, tensors: dict, name: str | None = None):
    """The backend module that runs ``spec`` on ``tensors``.

    ``name`` (or the scoped preference) forces one backend and raises its
    reasons when it cannot run; otherwise the first able backend in priority
    order is taken, and if none is able every backend's reasons are raised.
    """
    from .. import checks

    name = name if name is not None else _preferred.get()
    names = available()
    checks.backend_name(name, names)
    if name is not None:
        reasons = load(name).can_run(spec, tensors)
        if reasons:
            raise RuntimeError(f"backend {name!r} cannot run this problem: " + "; ".join(reasons))
        return load(name)
    refusals = []
    device_type = tensors["q"].device.type
    for candidate in [n for n in PRIORITY.get(device_type, ("reference",)) if n in names]:
        module = load(candidate)
        reasons = module.can_run(spec, tensors)
        if not reasons:
            return module
        refusals.append(f"{candidate}: " + "; ".join(reasons))
    raise RuntimeError("no backend can run this problem:\n  " + "\n  ".join(refusals))
