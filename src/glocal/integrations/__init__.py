"""Adapters to other libraries (Hugging Face transformers, timm), each imported lazily.

A missing optional package raises ``ModuleNotFoundError`` that names the package and the pip command.

Example:
    >>> from glocal.integrations import require
    >>> require("torch", "torch").__name__
    'torch'
"""

from __future__ import annotations

import importlib

EXTRAS = {"transformers": "transformers>=5.0", "timm": "timm>=1.0"}


def require(module: str, package: str | None = None, purpose: str = "this feature"):
    """Import ``module`` or raise a ModuleNotFoundError saying what to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is not None and err.name != module and not module.startswith(err.name + "."):
            raise  # a dependency of the package is missing, not the package itself; let it say which
        package = package or EXTRAS.get(module, module)
        raise ModuleNotFoundError(
            f"{purpose} needs the optional package {module!r}, which is not installed. "
            f"Install it with: pip install '{package}'",
            name=module,
        ) from err
