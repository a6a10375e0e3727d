"""The import order of DESIGN.md §3: a module imports only from its own layer or below, and no cycles.

Layers, lowest first: numerics, hooks, config → spec, checks, masks → backends → ops (and the
old-path shims functional, linear, global_attention) → nn, decoding, sim, distributed →
integrations → analysis, convert → bench, cli. The subcommand modules (``*.command``) belong to
the cli layer: they drive the code beside them. ``glocal/__init__.py`` is the public API above all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import glocal

SRC = Path(glocal.__file__).parent
LAYERS = [
    {"numerics", "hooks", "config"},
    {"spec", "checks", "masks"},
    {"backends"},
    {"ops", "functional", "linear", "global_attention"},
    {"nn", "decoding", "sim", "distributed"},
    {"integrations"},
    {"analysis", "convert"},
    {"bench", "cli"},
]
# Imports of glocal modules inside functions are allowed only where laziness is the point: the CLI's
# subcommands import their work when run, and the Triton kernels (which import Triton, and must see
# TRITON_INTERPRET first) are imported on use by the backend and the GPU suite.
LAZY_OK = ("glocal.cli", "glocal.bench.command", "glocal.analysis.command", "glocal.convert.command",
           "glocal.backends.triton", "glocal.bench.gpu")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> int:
    parts = module.split(".")
    if module == "glocal" or parts[-1] == "command" or parts[1:] == ["cli"]:  # the API: only the CLI is above it
        return len(LAYERS) - 1
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    raise AssertionError(f"{module} is in no layer of DESIGN.md §3; add its package to LAYERS")


def _imports(path: Path):
    """(imported glocal module, line, at module level?) for every import in ``path``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from . import x` may import a submodule x; `from .m import f` imports m.
            targets = [f"{prefix}.{alias.name}" for alias in node.names] if not node.module else [prefix]
        else:
            continue
        for target in targets:
            if target == "glocal" or target.startswith("glocal."):
                yield _existing(target), node.lineno, id(node) in top


def _existing(module: str) -> str:
    """The longest prefix of ``module`` that is a glocal module or package."""
    parts = module.split(".")
    while len(parts) > 1:
        path = SRC.parent.joinpath(*parts)
        if path.with_suffix(".py").exists() or (path / "__init__.py").exists():
            return ".".join(parts)
        parts = parts[:-1]
    return "glocal"


FILES = sorted(p for p in SRC.rglob("*.py") if p != SRC / "__init__.py")


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_respect_the_layers(path):
    importer = _module_name(path)
    for target, line, _ in _imports(path):
        assert _layer(target) <= _layer(importer), (
            f"{importer}:{line} imports {target}, a higher layer ({_layer(target)} > {_layer(importer)}); "
            f"see DESIGN.md §3")


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_hidden_imports_inside_functions(path):
    importer = _module_name(path)
    if importer.startswith(LAZY_OK):
        return
    lazy = [(target, line) for target, line, at_top in _imports(path) if not at_top]
    assert not lazy, f"{importer} imports glocal modules inside functions: {lazy}; import them at the top"


def test_no_import_cycles():
    graph = {}
    for path in FILES:
        importer = _module_name(path)
        graph[importer] = {t for t, _, _ in _imports(path) if t != importer and t != "glocal"}
    # A package's __init__ importing its own submodules is not a cycle through them.
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if not (nxt.startswith(node + ".") or node.startswith(nxt + ".")):
                visit(nxt)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_every_layer_name_exists_or_is_planned():
    present = {p.name if p.is_dir() else p.stem for p in SRC.iterdir() if not p.name.startswith("_")}
    known = set().union(*LAYERS)
    assert present - {"py.typed"} <= known, f"packages in no layer: {present - known}"
