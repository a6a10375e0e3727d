"""``--config`` strings of ``glocal sim`` (the syntax of ``glocal bench --config``) into problems.

Syntax: ``Nd:GRID`` (axes joined by x) then comma-separated ``k``, ``s``, ``d`` (one int or one per axis
joined by x; defaults k7, s1, d1), ``h`` (heads, 4), ``dim`` (head dim, 64), ``b`` (batch, 1),
``causal=0|1`` (or one flag per axis, ``causal=1x0``).

Example:
    >>> p = parse_config("2d:64x64,k7,d2,h2,dim32")
    >>> p.grid, p.kernel_size, p.dilation, p.heads, p.head_dim
    ((64, 64), (7, 7), (2, 2), 2, 32)
"""

from __future__ import annotations

from ..checks import sim as checks
from .model import Problem


def parse_config(text: str, dtype: str = "float32", backward: bool = False) -> Problem:
    """The :class:`glocal.sim.Problem` of a config string (see the module docstring)."""
    head, _, rest = str(text).partition(":")
    if not rest or head not in ("1d", "2d", "3d"):
        checks.config_text(text, "it must start with 1d:, 2d: or 3d: and then the grid",
                           "Write e.g. '2d:64x64,k7'.")
    ndim = int(head[0])
    items = rest.split(",")

    def ints(value: str, name: str) -> tuple[int, ...]:
        try:
            nums = tuple(int(p) for p in value.split("x"))
        except ValueError:
            checks.config_text(text, f"{name} must be integers joined by 'x'; got {name}={value!r}",
                               f"Write e.g. {'x'.join(['7'] * ndim)}.")
        if len(nums) == 1:
            nums = nums * ndim
        if len(nums) != ndim:
            checks.config_text(text, f"{name} has {len(nums)} values for a {ndim}-D grid ({name}={value!r})",
                               f"Give 1 or {ndim} values joined by x.")
        return nums

    grid = ints(items[0], "grid")
    cfg = dict(kernel_size=(7,) * ndim, stride=1, dilation=1, is_causal=False, heads=4, head_dim=64, batch=1)
    for item in items[1:]:
        if item.startswith("causal="):
            cfg["is_causal"] = tuple(bool(x) for x in ints(item[7:], "causal"))
        elif item.startswith("dim") and item[3:].isdigit():
            cfg["head_dim"] = int(item[3:])
        elif item[:1] in ("k", "s", "d", "h", "b") and item[1:2].isdigit():
            key = {"k": "kernel_size", "s": "stride", "d": "dilation", "h": "heads", "b": "batch"}[item[0]]
            values = ints(item[1:], key)
            cfg[key] = values[0] if key in ("heads", "batch") else values
        else:
            checks.config_text(text, f"unknown item {item!r}", "Use k, s, d, h, dim, b or causal=.")
    return Problem(grid, cfg["heads"], cfg["head_dim"], cfg["kernel_size"], cfg["stride"], cfg["dilation"],
                   cfg["is_causal"], dtype=dtype, backward=backward, batch=cfg["batch"])
