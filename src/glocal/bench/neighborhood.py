"""The neighborhood benchmark suite on the CPU: glocal vs dense SDPA, compiled FlexAttention and NATTEN.

Shapes: every problem is ``q, k, v: [B, *spatial, H, D]`` (heads-last), built from a config string.

Config syntax (``--config``), comma separated after the grid::

    2d:64x64,k7,s1,d1,h4,dim64,causal=0,b1

- ``Nd:`` then the grid, axes joined by ``x`` (``1d:16384``, ``3d:8x32x32``);
- ``k``, ``s``, ``d``: kernel size, stride, dilation; one int for every axis or one per axis
  joined by ``x`` (``k3x7x7``); defaults ``k7``, ``s1``, ``d1``;
- ``h``: heads (default 4); ``dim``: head dim (default 64); ``b``: batch (default 1);
- ``causal=0|1``, or one flag per axis (``causal=1x0``).

Example:
    >>> from glocal.bench.neighborhood import parse_config
    >>> parse_config("2d:64x64,k7,d2,causal=0")["dilation"]
    (2, 2)

Every figure is the median of ``repeats`` timed calls after a warm-up, measured in one
process against its baselines (DESIGN.md §5). The FLOP floor divides the useful FLOPs
(attended pairs · heads · 2·(D_qk + D_v), times 3.5 for forward+backward) by a float32
matmul rate measured in the same run, just before each config. The implementations of a
config are timed in turns (see ``interleaved_ms``), so they share the machine's load.
"""

from __future__ import annotations

import platform
import sys
import time

import torch
import torch.nn.functional as F

from ..backends.cpu import neighborhood as cpu
from ..masks import neighborhood_mask_mod
from ..ops import neighborhood_attention
from ..sim import Problem, useful_flops
from ..spec import make_neighborhood_spec
from .timing import interleaved_ms, matmul_gflops, peak_cpu_bytes

DEFAULT_CONFIGS = [
    "2d:64x64,k7",
    "2d:64x64,k7,d2",
    "2d:64x64,k7,s2",
    "1d:16384,k512,causal=1",
    "3d:8x32x32,k3x7x7",
    "2d:256x256,k7",
]
QUICK_CONFIGS = ["1d:256,k15,h2,dim32", "2d:16x16,k5,h2,dim32", "3d:4x8x8,k3,h2,dim32"]
SCALING_SIDES = [32, 64, 128, 256]
# Dense and Flex baselines above this many tokens would take minutes (dense is O(N²)); skipped unless raised.
DENSE_MAX_TOKENS = 16384

# The keys of every row (--json), in table order.
FIELDS = [
    "config", "spatial", "kernel_size", "stride", "dilation", "is_causal", "batch", "heads", "head_dim",
    "tokens", "dtype", "glocal_path", "glocal_ms", "dense_ms", "speedup_vs_dense", "flex_ms", "flex_compile_s",
    "speedup_vs_flex", "natten_ms", "speedup_vs_natten", "glocal_bwd_ms", "dense_bwd_ms",
    "speedup_bwd_vs_dense", "flex_bwd_ms", "useful_gflop", "floor_ms", "floor_fraction", "floor_bwd_ms",
    "floor_bwd_fraction", "matmul_gflops", "peak_extra_bytes", "qkvo_bytes", "peak_vs_qkvo",
]


def parse_config(text: str) -> dict:
    """Parse ``"2d:64x64,k7,s1,d1,h4,dim64,causal=0"`` (see the module docstring) into a config dict."""
    head, _, rest = text.partition(":")
    if not rest or head not in ("1d", "2d", "3d"):
        raise ValueError(f"config {text!r} must start with 1d:, 2d: or 3d: then the grid, e.g. '2d:64x64,k7'.")
    ndim = int(head[0])
    items = rest.split(",")

    def ints(value: str, name: str) -> tuple[int, ...]:
        parts = value.split("x")
        try:
            nums = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"config {text!r}: {name} must be integers joined by 'x'; got {value!r}.") from None
        if len(nums) == 1:
            nums = nums * ndim
        if len(nums) != ndim:
            raise ValueError(f"config {text!r}: {name} has {len(nums)} values for a {ndim}-D grid; give 1 or {ndim}.")
        return nums

    spatial = ints(items[0], "the grid")
    cfg = dict(config=text, spatial=spatial, kernel_size=(7,) * ndim, stride=(1,) * ndim, dilation=(1,) * ndim,
               is_causal=(False,) * ndim, batch=1, heads=4, head_dim=64)
    for item in items[1:]:
        if item.startswith("causal="):
            cfg["is_causal"] = tuple(bool(x) for x in ints(item[7:], "causal"))
        elif item.startswith("dim"):
            cfg["head_dim"] = ints(item[3:], "dim")[0]
        elif item[:1] in ("k", "s", "d", "h", "b") and item[1:2].isdigit():
            key = {"k": "kernel_size", "s": "stride", "d": "dilation", "h": "heads", "b": "batch"}[item[0]]
            values = ints(item[1:], key)
            cfg[key] = values[0] if key in ("heads", "batch") else values
        else:
            raise ValueError(f"config {text!r}: unknown item {item!r}; use k, s, d, h, dim, b, causal=.")
    cfg["spec"] = make_neighborhood_spec(spatial, cfg["kernel_size"], cfg["stride"], cfg["dilation"],
                                         cfg["is_causal"])
    return cfg


def _flex_callable(cfg, q):
    """Compiled FlexAttention with the neighborhood block mask, and its one-off cost in seconds."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    n = cfg["spec"].num_tokens
    # Each config is a new graph; without a reset, dynamo's recompile limit (8) silently
    # falls back to the eager, unfused flex_attention after a few configs.
    torch._dynamo.reset()
    start = time.perf_counter()
    block_mask = create_block_mask(neighborhood_mask_mod(cfg["spec"]), None, None, n, n, device="cpu")
    compiled = torch.compile(flex_attention, dynamic=False)
    qf = q.flatten(1, -3).transpose(1, 2)
    compiled(qf, qf, qf, block_mask=block_mask)
    return compiled, block_mask, time.perf_counter() - start


def _natten_fn():
    try:
        import natten  # noqa: F401
        import natten.functional as nf
    except Exception:
        return None
    return nf


def run_config(cfg: dict, dtype: torch.dtype, repeats: int, backward: bool,
               dense_max_tokens: int = DENSE_MAX_TOKENS, flex: bool = True) -> dict:
    """Time one config; returns a row with every key of FIELDS (None where a baseline did not run)."""

    spec, heads, dim, batch = cfg["spec"], cfg["heads"], cfg["head_dim"], cfg["batch"]
    gen = torch.Generator().manual_seed(0)
    shape = (batch, *spec.spatial, heads, dim)
    q, k, v = (torch.randn(shape, generator=gen).to(dtype) for _ in range(3))
    n = spec.num_tokens
    row = {key: None for key in FIELDS}
    row.update(config=cfg["config"], spatial=list(spec.spatial), kernel_size=list(spec.kernel_size),
               stride=list(spec.stride), dilation=list(spec.dilation), is_causal=list(spec.is_causal),
               batch=batch, heads=heads, head_dim=dim, tokens=n, dtype=str(dtype).replace("torch.", ""),
               glocal_path=cpu.active_path())

    def glocal_fwd():
        return neighborhood_attention(q, k, v, spec.kernel_size, spec.stride, spec.dilation, spec.is_causal,
                                            backend="cpu")

    forward = {"glocal": glocal_fwd}
    # Dense SDPA over all tokens; causal only for a 1-D causal problem (the one case with a dense analogue).
    dense_causal = spec.ndim == 1 and spec.is_causal[0]
    qd, kd, vd = (x.flatten(1, -3).transpose(1, 2).contiguous() for x in (q, k, v))
    if n <= dense_max_tokens:
        forward["dense"] = lambda: F.scaled_dot_product_attention(qd, kd, vd, is_causal=dense_causal)
        if flex:
            try:
                compiled, block_mask, row["flex_compile_s"] = _flex_callable(cfg, q)
                forward["flex"] = lambda: compiled(qd, kd, vd, block_mask=block_mask)
            except Exception as err:  # a compiler failure must not end the whole run
                print(f"  compiled FlexAttention failed on {cfg['config']}: {type(err).__name__}", file=sys.stderr)
    nf = _natten_fn()
    if nf is not None and hasattr(nf, f"na{spec.ndim}d"):
        fn = getattr(nf, f"na{spec.ndim}d")
        forward["natten"] = lambda: fn(q, k, v, kernel_size=spec.kernel_size, stride=spec.stride,
                                       dilation=spec.dilation, is_causal=spec.is_causal)

    # The machine's rate right now: under shared load it drifts, so each row has its own.
    gflops = matmul_gflops(dtype if dtype != torch.float16 else torch.float32, repeats)
    try:
        times = interleaved_ms(forward, repeats)
    except Exception as err:  # NATTEN may refuse an option; time the rest without it
        if "natten" not in forward:
            raise
        print(f"  NATTEN failed on {cfg['config']}: {type(err).__name__}: {err}", file=sys.stderr)
        forward.pop("natten")
        times = interleaved_ms(forward, repeats)
    row["glocal_ms"] = times["glocal"]
    for name in ("dense", "flex", "natten"):
        if name in times:
            row[f"{name}_ms"] = times[name]
            row[f"speedup_vs_{name}"] = times[name] / times["glocal"]

    flops = useful_flops(Problem.from_spec(spec, heads, dim, batch=batch))  # attended pairs · B·H · 2·(D + D_v)
    row["matmul_gflops"] = gflops
    row["useful_gflop"] = flops / 1e9
    row["floor_ms"] = flops / (gflops * 1e9) * 1e3
    row["floor_fraction"] = row["floor_ms"] / row["glocal_ms"]
    _warn_floor(cfg["config"], "forward", row["floor_fraction"])
    row["qkvo_bytes"] = 4 * q.numel() * q.element_size()
    row["peak_extra_bytes"] = peak_cpu_bytes(glocal_fwd)
    row["peak_vs_qkvo"] = row["peak_extra_bytes"] / row["qkvo_bytes"]

    if backward:
        leaves = [x.detach().requires_grad_() for x in (q, k, v)]
        dense_leaves = [x.detach().requires_grad_() for x in (qd, kd, vd)]
        grad = torch.randn_like(q)
        dense_grad = grad.flatten(1, -3).transpose(1, 2).contiguous()

        def glocal_fb():
            out = neighborhood_attention(*leaves, spec.kernel_size, spec.stride, spec.dilation,
                                               spec.is_causal, backend="cpu")
            torch.autograd.grad(out, leaves, grad)

        def dense_fb():
            out = F.scaled_dot_product_attention(*dense_leaves, is_causal=dense_causal)
            torch.autograd.grad(out, dense_leaves, dense_grad)

        both = {"glocal": glocal_fb}
        if "dense" in forward:
            both["dense"] = dense_fb
        times = interleaved_ms(both, repeats)
        row["glocal_bwd_ms"] = times["glocal"]
        row["floor_bwd_ms"] = 3.5 * row["floor_ms"]  # forward 2 matmuls + backward 5
        row["floor_bwd_fraction"] = row["floor_bwd_ms"] / row["glocal_bwd_ms"]
        _warn_floor(cfg["config"], "forward+backward", row["floor_bwd_fraction"])
        if "dense" in times:
            row["dense_bwd_ms"] = times["dense"]
            row["speedup_bwd_vs_dense"] = times["dense"] / times["glocal"]
        row["flex_bwd_ms"] = None  # FlexAttention on the CPU is inference only
    return row


def _warn_floor(config: str, what: str, fraction: float) -> None:
    """A kernel faster than its FLOP floor means the floor is wrong (DESIGN.md §5): say so."""
    if fraction > 1.0:
        print(f"warning: {config} {what} reached {100 * fraction:.0f}% of its FLOP floor (above 100%): a floor the "
              f"kernel beats is a bug in the floor (useful FLOPs or matmul rate)", file=sys.stderr)


def cpu_model() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    return dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                cpu_model=cpu_model(), threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version())


def _fmt(x, spec=".1f", none="-"):
    return none if x is None else format(x, spec)


def format_table(rows: list[dict], backward: bool) -> str:
    """The suite's table: one line per config (forward; plus forward+backward columns with --backward)."""
    header = ["config", "tokens", "glocal ms", "dense ms", "x dense", "flex ms", "(compile s)", "x flex",
              "natten ms", "floor ms", "% floor", "peak MB", "x qkvo"]
    if backward:
        header += ["f+b ms", "dense f+b", "x dense f+b", "flex f+b"]
    lines = [header]
    for r in rows:
        line = [r["config"], str(r["tokens"]), _fmt(r["glocal_ms"], ".2f"), _fmt(r["dense_ms"]),
                _fmt(r["speedup_vs_dense"]), _fmt(r["flex_ms"]), _fmt(r["flex_compile_s"]),
                _fmt(r["speedup_vs_flex"]), _fmt(r["natten_ms"]), _fmt(r["floor_ms"], ".2f"),
                _fmt(100 * r["floor_fraction"], ".0f"), _fmt(r["peak_extra_bytes"] / 2 ** 20),
                _fmt(r["peak_vs_qkvo"], ".2f")]
        if backward:
            line += [_fmt(r["glocal_bwd_ms"]), _fmt(r["dense_bwd_ms"]), _fmt(r["speedup_bwd_vs_dense"]), "n/a"]
        lines.append(line)
    widths = [max(len(x[i]) for x in lines) for i in range(len(header))]
    out = ["  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(line, widths))) for line in lines]
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def plot(rows: list[dict], path: str, title: str) -> None:
    """Time vs tokens on log-log axes, one line per implementation (forward)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ordered = sorted(rows, key=lambda r: r["tokens"])
    for key, label in [("glocal_ms", "glocal (cpu)"), ("dense_ms", "dense SDPA"), ("flex_ms", "FlexAttention"),
                       ("natten_ms", "NATTEN"), ("glocal_bwd_ms", "glocal fwd+bwd"),
                       ("dense_bwd_ms", "dense SDPA fwd+bwd")]:
        points = [(r["tokens"], r[key]) for r in ordered if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens")
    ax.set_ylabel("time (ms)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def scaling_configs(kernel: int, heads: int, dim: int, quick: bool) -> list[str]:
    sides = [8, 16, 32] if quick else SCALING_SIDES
    return [f"2d:{s}x{s},k{kernel},h{heads},dim{dim}" for s in sides]


def scaling_table(rows: list[dict]) -> str:
    """Scaling rows: time and time per token, and each step's growth, for glocal and dense."""
    lines = [["grid", "tokens", "glocal ms", "growth", "dense ms", "growth", "x dense"]]
    prev = None
    for r in rows:
        g_growth = d_growth = "-"
        if prev is not None:
            g_growth = _fmt(r["glocal_ms"] / prev["glocal_ms"], ".2f")
            if r["dense_ms"] is not None and prev["dense_ms"] is not None:
                d_growth = _fmt(r["dense_ms"] / prev["dense_ms"], ".2f")
        lines.append([r["config"].split(",")[0], str(r["tokens"]), _fmt(r["glocal_ms"], ".2f"), g_growth,
                      _fmt(r["dense_ms"]), d_growth, _fmt(r["speedup_vs_dense"])])
        prev = r
    widths = [max(len(x[i]) for x in lines) for i in range(len(lines[0]))]
    out = ["  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in lines]
    out.insert(1, "-" * len(out[0]))
    tokens_growth = rows[-1]["tokens"] / rows[0]["tokens"] if len(rows) > 1 else 1
    out.append(f"tokens grow {tokens_growth:.0f}x: linear time grows {tokens_growth:.0f}x, "
               f"quadratic {tokens_growth ** 2:.0f}x")
    return "\n".join(out)
