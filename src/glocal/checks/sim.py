"""Checks of the performance model's arguments (glocal.sim): problems, tilings, hardware figures, configs.

Every message states the rule, the values that broke it and the fix (see glocal.checks)."""

from __future__ import annotations

import numbers

DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
LAYOUTS = ("box", "flat")
KEY_ANCHORS = ("grid", "query")


def _positive_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def problem_sizes(heads, head_dim, value_dim, batch) -> None:
    """Heads, head dims and batch of a ``glocal.sim.Problem`` are positive ints."""
    for name, value in (("heads", heads), ("head_dim", head_dim), ("value_dim", value_dim), ("batch", batch)):
        if not _positive_int(value):
            raise ValueError(f"{name} must be a positive int; got {name}={value!r}. Pass e.g. {name}=1.")


def problem_dtype(dtype) -> None:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {list(DTYPE_BYTES)}; got {dtype=}. Pass e.g. dtype='float32'.")


def tile_sizes(name: str, value, layout: str, ndim: int) -> tuple[int, ...]:
    """A box tile is an int (every axis) or one positive int per axis; a flat tile is one positive int."""
    if layout == "flat":
        if not _positive_int(value):
            raise ValueError(f"a flat tiling takes one token count per tile; got {name}={value!r}. "
                             f"Pass a positive int, e.g. {name}=128.")
        return (int(value),)
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * ndim
    if len(values) != ndim or not all(_positive_int(v) for v in values):
        raise ValueError(f"a box tile has one positive int per axis; got {name}={value!r} for a {ndim}-D problem. "
                         f"Pass an int or a tuple of {ndim} positive ints, e.g. {name}={(8,) * ndim}.")
    return tuple(int(v) for v in values)


def tiling_options(layout, groups, key_anchor) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}; got {layout=}. Pass 'box' or 'flat'.")
    if key_anchor not in KEY_ANCHORS:
        raise ValueError(f"key_anchor must be one of {list(KEY_ANCHORS)}; got {key_anchor=}. "
                         f"Pass 'grid' (fixed key tiles) or 'query' (key tiles cut from each query tile's window).")
    if layout == "flat" and (groups or key_anchor != "grid"):
        raise ValueError(f"a flat tiling cuts the row-major token order into fixed tiles: it takes neither "
                         f"dilation groups nor query-anchored key tiles; got {layout=}, {groups=}, {key_anchor=}. "
                         f"Use layout='box' for groups/key_anchor, or groups=False, key_anchor='grid'.")
    if key_anchor == "query" and not groups:
        raise ValueError(f"query-anchored key tiles are cut inside the query tile's dilation group, so they need "
                         f"group tiling; got {key_anchor=}, {groups=}. Pass groups=True (or key_anchor='grid').")


def hardware_figures(peak_gflops, bandwidth_gbs) -> None:
    for name, value in (("peak_gflops", peak_gflops), ("bandwidth_gbs", bandwidth_gbs)):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0
        if not ok:
            raise ValueError(f"{name} must be a positive number (a measured figure); got {name}={value!r}. "
                             f"Measure it with glocal.sim.calibrate() or `glocal sim --calibrate`.")


def hardware_file(path, exists: bool) -> None:
    if not exists:
        raise ValueError(f"no hardware figures at {path!s}: the model never assumes a machine's peak rate or "
                         f"bandwidth; got path={str(path)!r}. Run `glocal sim --calibrate` (optionally with "
                         f"--hardware PATH) first, or pass --hardware with a file it wrote.")


def hardware_json(path, data) -> None:
    keys = ("peak_gflops", "bandwidth_gbs")
    if not isinstance(data, dict) or any(k not in data for k in keys):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"a hardware file holds a JSON object with {list(keys)}; {path!s} has {got}. "
                         f"Write it again with `glocal sim --calibrate --hardware {path!s}`.")


def config_text(text: str, problem: str, fix: str) -> None:
    """Raise the error of a bad ``--config`` string: ``problem`` says what is wrong, ``fix`` how to write it."""
    raise ValueError(f"config {text!r}: {problem}. {fix} "
                     f"(syntax: Nd:GRID then ,k ,s ,d ,h ,dim ,b ,causal=; e.g. 2d:64x64,k7,h4,dim64)")


def tile_text(text: str, ndim: int) -> tuple[int, ...]:
    """``--tile``/``--key-tile``: one int or ``ndim`` ints joined by x."""
    try:
        values = tuple(int(p) for p in str(text).split("x"))
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * ndim
    if len(values) != ndim or not all(v >= 1 for v in values):
        raise ValueError(f"a tile is one positive int or {ndim} joined by x for a {ndim}-D config; got tile={text!r}. "
                         f"Pass e.g. --tile {'x'.join(['8'] * ndim)}.")
    return values


def report_rows(rows) -> None:
    """Rows of ``glocal bench --json`` (config, speedup_vs_dense) or of the GPU suite's JSON (name, the problem's
    spatial / kernel_size / is_causal ..., glocal_ms, sdpa_ms)."""
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"report takes the rows of `glocal bench --json` (a list of dicts, the file's 'results') or "
                         f"of the GPU suite (its 'rows'); got rows of type {type(rows).__name__}. Pass "
                         f"json.load(f)['results'].")
    for i, row in enumerate(rows):
        if "spatial" in row and "sdpa_ms" in row:  # a GPU suite row
            needed = ("name", "kernel_size", "is_causal", "heads", "head_dim", "glocal_ms", "sdpa_ms")
            how = "the GPU suite (`glocal bench --device cuda --json`)"
        else:
            needed, how = ("config", "speedup_vs_dense"), "`glocal bench --json`"
        missing = [k for k in needed if k not in row]
        if missing:
            raise ValueError(f"report row {i} lacks {missing}; got keys {sorted(row)}. Pass rows written by {how}.")


def report_hardware(data) -> None:
    """The figures a GPU suite JSON must carry for a report without ``--hardware``."""
    missing = [k for k in ("matmul_tflops", "bandwidth_gbs") if not isinstance(data.get(k), (int, float))]
    if missing:
        raise ValueError(f"the GPU suite's JSON lacks the card's measured {missing} (runs before the suite measured "
                         f"its copy bandwidth have none); got keys {sorted(data)}. Pass --hardware with the card's "
                         f"figures (JSON: peak_gflops, bandwidth_gbs, name).")


def triton_problem(dtype: str, head_dim: int, value_dim: int) -> None:
    """What glocal's Triton kernel runs: float16, bfloat16, float32 (TF32); head dims multiples of 8 up to 256."""
    if dtype not in ("float16", "bfloat16", "float32"):
        raise ValueError(f"glocal's Triton kernel runs float16, bfloat16 and float32 (as TF32), so it has no tiling "
                         f"for {dtype=}. Model dtype='bfloat16' (or 'float32'), or use cpu_tiling.")
    for name, width in (("head_dim", head_dim), ("value_dim", value_dim)):
        if width % 8 or width > 256:
            raise ValueError(f"glocal's Triton kernel takes head dims that are multiples of 8 up to 256; got "
                             f"{name}={width}. Use e.g. {name}={min(256, max(8, width // 8 * 8))}.")
