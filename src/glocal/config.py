"""Scoped settings: one ContextVar and one context manager per setting; environment variables give defaults.

| setting | context manager | read with | default from |
|---|---|---|---|
| preferred backend | ``glocal.use_backend(name)`` (validates) / ``backend(name)`` | ``preferred_backend()`` | ``GLOCAL_BACKEND`` |
| compiled CPU kernels | ``cpu_kernels(enabled)`` | ``cpu_kernels_enabled()`` | ``GLOCAL_CPU_KERNELS`` (``0`` = off) |
| FlexAttention compiled on CUDA | ``flex_compile(enabled)`` | ``flex_compile_enabled()`` | ``GLOCAL_FLEX_COMPILE`` (``0`` = off) |
| NaN-poisoned kernel outputs | ``nan_poisoning(enabled)`` | ``nan_poisoning_enabled()`` | ``GLOCAL_POISON`` (``1`` = on) |
| Triton tile shapes | ``triton_tiles(**options)`` | ``triton_tile_overrides()`` | none |

NaN poisoning makes the fast kernels fill their outputs with NaN before writing them, so an
element a kernel fails to write shows up in a test. Each scope is restored when its block is
left, also through an exception, and is local to the thread (and asyncio task) that opened it.

Example:
    >>> from glocal import config
    >>> with config.nan_poisoning(True):
    ...     config.nan_poisoning_enabled()
    True
"""

from __future__ import annotations

import contextlib
import contextvars
import os


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


_backend = contextvars.ContextVar("glocal_backend", default=os.environ.get("GLOCAL_BACKEND") or None)
_cpu_kernels = contextvars.ContextVar("glocal_cpu_kernels", default=_env_flag("GLOCAL_CPU_KERNELS", True))
_flex_compile = contextvars.ContextVar("glocal_flex_compile", default=_env_flag("GLOCAL_FLEX_COMPILE", True))
_nan_poisoning = contextvars.ContextVar("glocal_nan_poisoning", default=_env_flag("GLOCAL_POISON", False))
_triton_tiles = contextvars.ContextVar("glocal_triton_tiles", default={})


@contextlib.contextmanager
def _scoped(var: contextvars.ContextVar, value):
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def backend(name: str | None):
    """Scope the preferred backend without validating the name (``glocal.use_backend`` validates)."""
    return _scoped(_backend, name)


def preferred_backend() -> str | None:
    return _backend.get()


def cpu_kernels(enabled: bool):
    """Scope whether the compiled CPU kernels run (else the pure-PyTorch path, with the same results)."""
    return _scoped(_cpu_kernels, bool(enabled))


def cpu_kernels_enabled() -> bool:
    return _cpu_kernels.get()


def flex_compile(enabled: bool):
    """Scope whether FlexAttention runs compiled (``torch.compile``) on CUDA."""
    return _scoped(_flex_compile, bool(enabled))


def flex_compile_enabled() -> bool:
    return _flex_compile.get()


def nan_poisoning(enabled: bool):
    """Scope whether the fast kernels pre-fill their outputs with NaN (for tests)."""
    return _scoped(_nan_poisoning, bool(enabled))


def nan_poisoning_enabled() -> bool:
    return _nan_poisoning.get()


def triton_tiles(**options):
    """Scope Triton tile shapes / launch options (keys of the triton backend's defaults), nested scopes merged."""
    return _scoped(_triton_tiles, {**_triton_tiles.get(), **options})


def triton_tile_overrides() -> dict:
    return dict(_triton_tiles.get())
