"""The CAB suite: every glocal mechanism on the four CAB attention patterns, against dense attention.

CAB (the Comprehensive Attention Benchmark, Zhang et al. 2023) sorts attention by its pattern:
non-causal self, causal self, non-causal cross and causal cross. This suite asks, for each glocal
mechanism and each pattern it defines:

- support: does the op accept the pattern (it runs on tiny tensors) or refuse it (with the op's
  reason, from ``glocal.checks.pattern_supported`` or the op's shape checks)? A mechanism glocal
  does not have is listed as absent, never stood in for by another.
- cost: forward (and with ``backward``, forward+backward) wall time and peak CPU memory against
  dense attention with the same pattern, for T = 256 .. 16384 (powers of two), float32, batch 1,
  4 heads of 64, median of a few repeats, timed in turns with the baseline
  (``glocal.bench.timing.interleaved_ms``) so both see the same load on a shared machine.
- efficiency length: the smallest T from which the mechanism is both faster and lighter than
  dense, found by bisection on integer T between the grid lengths where it flips, to 5 % of T;
  plus the same for "faster" alone (time only), since dense SDPA's CPU kernel is flash-style and
  its memory grows only linearly, so "lighter" alone decides many rows.

Patterns: T is the query length; cross attention has T_kv = 2 * T keys (``CROSS_FACTOR``), and
causal cross is aligned bottom-right as ``glocal.attention``: query i sees key j iff
j <= i + (T_kv - T). Dense baselines (``DENSE``): ``torch.nn.functional.scaled_dot_product_attention``
(``is_causal`` for causal self) and, for causal cross, ``glocal.attention(is_causal=True)``, since
SDPA has no bottom-right ``is_causal`` and an explicit mask costs it 4 * T * T_kv bytes (measured
521 MiB at 8192 x 16384), which would flatter every mechanism.

Example:
    >>> from glocal.bench import cab
    >>> print(cab.format_support(cab.support_matrix()))  # doctest: +SKIP
    >>> result = cab.run(quick=True)                     # 64..256 tokens, a smoke test  # doctest: +SKIP
    >>> print(cab.format_table(result)); cab.plot(result, "cab.png")  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import glocal

from .. import checks
from ..nn.routed_layer import window_with_sinks
from .neighborhood import machine
from .timing import interleaved_ms, peak_cpu_bytes

PATTERNS = checks.ATTENTION_PATTERNS
CROSS_FACTOR = 2  # cross attention: T_kv = 2 * T_q (CAB's cross tasks have more keys than queries)
TOLERANCE = 0.05  # bisection stops when the bracket is within 5 % of its upper end
DENSE_MAX_S = 4.0  # dense is not timed where one call is predicted to take longer than this
DENSE_MAX_BYTES = 8 * 2 ** 30  # ... or to need more than this (the quadratic mask/score paths)
FULL_LENGTHS = tuple(2 ** i for i in range(8, 15))  # 256 .. 16384
QUICK_LENGTHS = (64, 128, 256)
MODES = ("forward", "forward+backward")

# Adapter settings, one budget for the sparse mechanisms: about 256 keys per query.
WINDOW = 256  # neighborhood, sliding window, L2ViT, global tokens, Parallax, LLA (or T if smaller)
SINKS = 4  # StreamingLLM's attention sinks
DILATION = 4  # dilated neighborhood: kernel min(WINDOW, T // 4), so K * d <= T
GLOBAL_TOKENS = 16  # stand-ins for learned global tokens: the first 16 keys/values
REDUCTION = 8  # compressed attention pools keys/values by 8 (PVT's first stage)
MOBA_BLOCK, MOBA_TOP_K = 64, 4  # own block + 3 routed blocks = 256 keys
RAT_CHUNK, RAT_GATE = 64, 0.9  # RAT uses chunks of 16-64; constant gates
LLA_RIDGE = 1e-2
PARALLAX_PROBE = 0.01  # a constant probe r (r = 0 would be plain softmax attention)


class NotExpressible(ValueError):
    """Raised by an adapter for a pattern its op has no argument for (e.g. RAT has no ``is_causal``).

    A ``ValueError`` like the ops' own refusals; the support matrix records its source as "adapter"
    rather than "op", so it is never mistaken for the op's word.
    """


def _flags(pattern: str) -> tuple[bool, bool]:
    """(is_causal, is_cross) of a CAB pattern name."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {list(PATTERNS)}; got pattern={pattern!r}. Pass one of them.")
    return pattern.startswith("causal"), pattern.endswith("cross")


def _causal_only(op_name: str, pattern: str) -> None:
    """Refuse the non-causal patterns for an op that is causal by definition (no ``is_causal`` argument)."""
    is_causal, _ = _flags(pattern)
    if not is_causal:
        raise NotExpressible(
            f"{op_name} is causal by definition (it takes no is_causal argument), so it has no {pattern} form; "
            f"it defines causal self attention."
        )


# ---------------------------------------------------------------------------------------------
# Adapters: (q, k, v, pattern) -> out on heads-last [B, T, H, D]; each passes the pattern to its op
# and lets the op refuse it, so the support matrix reports what glocal itself accepts.
# ---------------------------------------------------------------------------------------------


def _na(q, k, v, pattern):
    is_causal, _ = _flags(pattern)
    return glocal.na1d(q, k, v, kernel_size=min(WINDOW, k.shape[1]), is_causal=is_causal)


def _sinks(q, k, v, pattern):
    _causal_only("window_with_sinks", pattern)
    return window_with_sinks(q, k, v, window=WINDOW, sinks=SINKS)


def _blocked(q, k, v, pattern):
    is_causal, _ = _flags(pattern)
    kernel = min(WINDOW, k.shape[1])
    return glocal.na1d(q, k, v, kernel_size=kernel, stride=kernel, is_causal=is_causal)


def _dilated(q, k, v, pattern):
    is_causal, _ = _flags(pattern)
    kernel = max(1, min(WINDOW, k.shape[1] // DILATION))
    return glocal.na1d(q, k, v, kernel_size=kernel, dilation=DILATION, is_causal=is_causal)


def _linear(q, k, v, pattern):
    is_causal, _ = _flags(pattern)
    return glocal.linear_attention(q, k, v, is_causal=is_causal)


def _inline(q, k, v, pattern):
    is_causal, _ = _flags(pattern)
    return glocal.inline_attention(q, k, v, is_causal=is_causal)


def _l2vit(q, k, v, pattern):
    is_causal, _ = _flags(pattern)
    return glocal.local_concentration_attention(q, k, v, kernel_size=min(WINDOW, k.shape[1]), is_causal=is_causal)


def _global_tokens(q, k, v, pattern):
    is_causal, _ = _flags(pattern)
    g = min(GLOBAL_TOKENS, k.shape[1])
    return glocal.global_token_attention(q, k, v, kernel_size=min(WINDOW, k.shape[1]), global_k=k[:, :g],
                                         global_v=v[:, :g], is_causal=is_causal)


def _compressed(q, k, v, pattern):
    is_causal, _ = _flags(pattern)
    return glocal.compressed_attention(q, k, v, reduction=REDUCTION, is_causal=is_causal)


def _channel(q, k, v, pattern):
    is_causal, _ = _flags(pattern)
    return glocal.channel_attention(q, k, v, is_causal=is_causal)


def _moba(q, k, v, pattern):
    is_causal, _ = _flags(pattern)
    return glocal.moba_attention(q, k, v, block_size=MOBA_BLOCK, top_k=MOBA_TOP_K, is_causal=is_causal)


def _rat(q, k, v, pattern):
    _causal_only("rat_attention", pattern)
    # One gate per head and position, broadcast over the channels (the op's documented form).
    gate = torch.full((*k.shape[:3], 1), RAT_GATE, dtype=k.dtype, device=k.device)
    return glocal.rat_attention(q, k, v, gate, gate, chunk_size=RAT_CHUNK)


def _lla(q, k, v, pattern):
    is_causal, _ = _flags(pattern)
    return glocal.local_linear_attention(q, k, v, window_size=WINDOW, is_causal=is_causal, ridge=LLA_RIDGE)


def _parallax(q, k, v, pattern):
    is_causal, _ = _flags(pattern)
    r = torch.full_like(q, PARALLAX_PROBE)
    return glocal.parallax_attention(q, r, k, v, window_size=WINDOW, is_causal=is_causal)


@dataclass(frozen=True)
class Mechanism:
    """One row of the suite: ``op`` is the glocal attribute it is built on (dotted, below ``glocal``)."""

    name: str
    op: str
    settings: str
    adapter: Callable

    @property
    def present(self) -> bool:
        """Whether this build of glocal has the op (a missing one makes the mechanism absent)."""
        obj = glocal
        for part in self.op.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return False
        return True


MECHANISMS = (
    Mechanism("neighborhood", "na1d", f"kernel_size=min({WINDOW}, T)", _na),
    Mechanism("sliding window + sinks", "nn.routed_layer.window_with_sinks",
              f"window={WINDOW}, sinks={SINKS}", _sinks),
    Mechanism("blocked", "na1d", f"kernel_size=stride=min({WINDOW}, T)", _blocked),
    Mechanism("dilated", "na1d", f"kernel_size=min({WINDOW}, T // {DILATION}), dilation={DILATION}", _dilated),
    Mechanism("linear", "linear_attention", "feature_map='elu1', chunk_size=64", _linear),
    Mechanism("InLine", "inline_attention", "feature_map='identity'", _inline),
    Mechanism("L2ViT local concentration", "local_concentration_attention", f"kernel_size=min({WINDOW}, T)", _l2vit),
    Mechanism("global tokens", "global_token_attention",
              f"kernel_size=min({WINDOW}, T), global_k/v = the first {GLOBAL_TOKENS} keys/values", _global_tokens),
    Mechanism("compressed", "compressed_attention", f"reduction={REDUCTION}", _compressed),
    Mechanism("channel", "channel_attention", "scale=N ** -0.5", _channel),
    Mechanism("MoBA", "moba_attention", f"block_size={MOBA_BLOCK}, top_k={MOBA_TOP_K}", _moba),
    Mechanism("RAT", "rat_attention", f"chunk_size={RAT_CHUNK}, gates={RAT_GATE} (constant)", _rat),
    Mechanism("Local Linear Attention", "local_linear_attention", f"window_size={WINDOW}, ridge={LLA_RIDGE}", _lla),
    Mechanism("Parallax", "parallax_attention", f"window_size={WINDOW}, r={PARALLAX_PROBE} (constant)", _parallax),
)

# Mechanisms of CAB's taxonomy that glocal does not implement: listed, never faked.
ABSENT = (
    ("Performer (FAVOR+ random features)", "no random-feature map in glocal (linear_attention's maps are "
                                            "elu1, relu, identity or a user callable)"),
    ("Nystromformer", "not implemented in glocal"),
    ("cosFormer", "not implemented in glocal"),
    ("Reformer (LSH)", "not implemented in glocal"),
    ("S4D / state-space", "not implemented in glocal"),
)


def _dense(pattern: str) -> Callable:
    """The dense baseline of a pattern on heads-last tensors (see the module docstring for the choice)."""
    is_causal, is_cross = _flags(pattern)
    if is_causal and is_cross:
        return lambda q, k, v: glocal.attention(q, k, v, is_causal=True)

    def sdpa(q, k, v):
        # SDPA is heads-first: the transposes are views, and any copy they cost is part of the baseline.
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=is_causal)
        return out.transpose(1, 2)

    return sdpa


DENSE = {p: ("glocal.attention(is_causal=True), bottom-right" if p == "causal cross" else
             "F.scaled_dot_product_attention" + (" (is_causal=True)" if p == "causal self" else ""))
         for p in PATTERNS}


# ---------------------------------------------------------------------------------------------
# Support matrix.
# ---------------------------------------------------------------------------------------------


def _inputs(length: int, pattern: str, heads: int, dim: int, seed: int = 0, requires_grad: bool = False):
    """q [1, T, H, D] and k, v [1, T_kv, H, D] for a pattern (T_kv = CROSS_FACTOR * T for cross)."""
    _, is_cross = _flags(pattern)
    t_kv = CROSS_FACTOR * length if is_cross else length
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, length, heads, dim, generator=gen)
    k = torch.randn(1, t_kv, heads, dim, generator=gen)
    v = torch.randn(1, t_kv, heads, dim, generator=gen)
    return tuple(x.requires_grad_(requires_grad) for x in (q, k, v))


def probe(mechanism: Mechanism, pattern: str, length: int = 16, heads: int = 1, dim: int = 8) -> dict:
    """Call the mechanism on tiny tensors of the pattern: {status, reason, source}."""
    if not mechanism.present:
        return {"status": "absent", "reason": f"glocal.{mechanism.op} is not in this build", "source": "glocal"}
    q, k, v = _inputs(length, pattern, heads, dim)
    try:
        out = mechanism.adapter(q, k, v, pattern)
    except NotExpressible as err:
        return {"status": "refused", "reason": str(err), "source": "adapter"}
    except (ValueError, TypeError) as err:  # glocal's checks raise these, with the rule and the fix
        return {"status": "refused", "reason": str(err), "source": "op"}
    if tuple(out.shape) != tuple(q.shape[:-1]) + (v.shape[-1],):
        raise AssertionError(f"{mechanism.name} on {pattern}: output shape {tuple(out.shape)} for q {tuple(q.shape)}")
    return {"status": "supported", "reason": "", "source": "op"}


def support_matrix() -> list[dict]:
    """The mechanism x pattern table: one dict per cell, {mechanism, op, pattern, status, reason, source}.

    status is "supported" (the op ran on tiny tensors), "refused" (reason: the op's error, or the
    adapter's when the op has no argument for the pattern, source "adapter") or "absent".
    """
    cells = []
    for m in MECHANISMS:
        for p in PATTERNS:
            cells.append({"mechanism": m.name, "op": f"glocal.{m.op}", "pattern": p, **probe(m, p)})
    for name, reason in ABSENT:
        for p in PATTERNS:
            cells.append({"mechanism": name, "op": None, "pattern": p, "status": "absent", "reason": reason,
                          "source": "glocal"})
    return cells


def format_support(cells: list[dict]) -> str:
    """The support matrix as text: yes / no (refused) / absent."""
    names = list(dict.fromkeys(c["mechanism"] for c in cells))
    mark = {"supported": "yes", "refused": "no", "absent": "absent"}
    cell = {(c["mechanism"], c["pattern"]): mark[c["status"]] for c in cells}
    width = max(len(n) for n in names) + 2
    lines = ["mechanism".ljust(width) + "".join(p.rjust(18) for p in PATTERNS)]
    for n in names:
        lines.append(n.ljust(width) + "".join(cell[(n, p)].rjust(18) for p in PATTERNS))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The efficiency length: where "better than dense" starts, by bisection.
# ---------------------------------------------------------------------------------------------


def bisect_crossing(better: Callable[[int], bool], lo: int, hi: int, tolerance: float = TOLERANCE) -> tuple[int, list]:
    """Smallest integer T in (lo, hi] found better, for ``better(lo)`` False and ``better(hi)`` True.

    Halves the bracket on integer T until ``hi - lo <= max(1, tolerance * hi)`` and returns
    (hi, [T evaluated, in order]): the answer is within ``tolerance`` of the true crossing of a
    monotone predicate. ``better`` is only called strictly inside the bracket.
    """
    if not lo < hi:
        raise ValueError(f"bisect_crossing needs lo < hi; got lo={lo}, hi={hi}. Pass the bracket's ends in order.")
    visited = []
    while hi - lo > max(1.0, tolerance * hi):
        mid = (lo + hi) // 2
        visited.append(mid)
        if better(mid):
            hi = mid
        else:
            lo = mid
    return hi, visited


def efficiency_length(grid: list[int], flags: list[bool], better: Callable[[int], bool],
                      tolerance: float = TOLERANCE) -> dict:
    """The smallest T from which ``better`` holds, from its values on ``grid`` and bisection between them.

    "From which": past the last grid length where it does not hold, so a noisy flip back and forth
    counts from the last flip. Returns {length, status, bracket, probes}: length is None with
    status "never within {max grid}" when it fails at the largest length, the smallest grid length
    with status "always from the smallest length" when it holds everywhere, else the bisected T
    with status "bisected to {tolerance:.0%} of T".
    """
    if not grid:
        return {"length": None, "status": "no lengths measured", "bracket": None, "probes": []}
    if not flags[-1]:
        return {"length": None, "status": f"never within {grid[-1]}", "bracket": None, "probes": []}
    worse = [i for i, f in enumerate(flags) if not f]
    if not worse:
        return {"length": grid[0], "status": "always from the smallest length", "bracket": None, "probes": []}
    lo, hi = grid[worse[-1]], grid[worse[-1] + 1]
    length, probes = bisect_crossing(better, lo, hi, tolerance)
    return {"length": length, "status": f"bisected to {tolerance:.0%} of T", "bracket": [lo, hi], "probes": probes}


# ---------------------------------------------------------------------------------------------
# Measurement.
# ---------------------------------------------------------------------------------------------


def _call(fn, q, k, v, mode: str, grad_out):
    """One forward (no graph: the inputs do not require grad) or forward+backward of ``fn``."""
    if mode == "forward":
        return lambda: fn(q, k, v)
    # autograd.grad instead of .backward: nothing accumulates into .grad between repeats.
    return lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), grad_out)


def _measure_cell(fns: dict, length: int, pattern: str, mode: str, heads: int, dim: int, repeats: int) -> dict:
    """{name: (ms, peak bytes, error)} of each fn(q, k, v) at one length, timed in turns."""
    q, k, v = _inputs(length, pattern, heads, dim, requires_grad=mode != "forward")
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)) if mode != "forward" else None
    calls, errors = {}, {}
    for name, fn in fns.items():
        call = _call(fn, q, k, v, mode, grad_out)
        try:
            call()  # a failure (e.g. no backward) is a finding, not a crash
        except Exception as err:  # noqa: BLE001
            errors[name] = f"{type(err).__name__}: {str(err)[:200]}"
            continue
        calls[name] = call
    times = interleaved_ms(calls, repeats=repeats, warmup=0) if calls else {}  # the call above warmed up
    return {name: (times.get(name), peak_cpu_bytes(calls[name]) if name in calls else None, errors.get(name))
            for name in fns}


def _predict_dense(history: list, length: int, t_kv: int) -> tuple[float, float]:
    """Dense seconds and bytes at (length, t_kv), scaled quadratically from the last measured length."""
    if not history:
        return 0.0, 0.0
    (l0, kv0, ms, nbytes) = history[-1]
    factor = (length * t_kv) / (l0 * kv0)
    return ms / 1e3 * factor, nbytes * factor


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def run(quick: bool, lengths=None, backward: bool = False, progress=None, repeats: int | None = None,
        tolerance: float = TOLERANCE) -> dict:
    """Time every supported mechanism x pattern against dense attention; returns a JSON-serialisable dict.

    Args:
        quick: lengths 64..256, 2 heads of 16, 2 repeats (a smoke test); else 256..16384, 4 heads of
            64, 5 repeats up to T=2048 and 3 above (timed in turns with dense).
        lengths: override the grid (ascending ints).
        backward: also time forward+backward (``torch.autograd.grad`` of out w.r.t. q, k, v).
        progress: ``progress(done, total)`` callback, called after each part.
        repeats: override the repeats (the bisection probes use the same number).
        tolerance: the efficiency-length bisection's bracket, relative to T.

    Returns keys: settings, machine, dense (the baseline of each pattern), support (the matrix),
    mechanisms, rows (one per mechanism or "dense" x pattern x mode x length), efficiency (one per
    mechanism x pattern x mode, refused/absent ones included with their reason), wall_s.
    """
    start = time.perf_counter()
    grid = sorted(int(x) for x in (lengths or (QUICK_LENGTHS if quick else FULL_LENGTHS)))
    heads, dim = (2, 16) if quick else (4, 64)
    modes = MODES if backward else MODES[:1]

    def reps(length):
        return repeats or (2 if quick else 5 if length <= 2048 else 3)

    support = support_matrix()
    status = {(c["mechanism"], c["pattern"]): c for c in support}
    supported = {p: [m for m in MECHANISMS if status[(m.name, p)]["status"] == "supported"] for p in PATTERNS}
    n_pairs = sum(len(v) for v in supported.values())
    total = len(modes) * (len(PATTERNS) * len(grid) + n_pairs)
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    rows, efficiency = [], []
    for mode in modes:
        for pattern in PATTERNS:
            mechs = supported[pattern]
            _, is_cross = _flags(pattern)
            dense = _dense(pattern)
            history, cells = [], {}  # dense (length, t_kv, ms, bytes); cells[(name, length)] = row
            for length in grid:
                t_kv = CROSS_FACTOR * length if is_cross else length
                fns = {m.name: (lambda q, k, v, m=m, p=pattern: m.adapter(q, k, v, p)) for m in mechs}
                pred_s, pred_b = _predict_dense(history, length, t_kv)
                skip = None
                if pred_s > DENSE_MAX_S or pred_b > DENSE_MAX_BYTES:
                    skip = (f"dense not timed: predicted {pred_s:.1f} s and {pred_b / 2 ** 20:.0f} MiB per call "
                            f"(quadratic from T={history[-1][0]}) > the {DENSE_MAX_S:.0f} s / "
                            f"{DENSE_MAX_BYTES / 2 ** 30:.0f} GiB budget")
                elif not (history or length == grid[0]):
                    skip = "dense not timed: it failed at a shorter length"
                else:
                    fns["dense"] = dense
                got = _measure_cell(fns, length, pattern, mode, heads, dim, reps(length))
                d_ms, d_bytes, d_err = got.get("dense", (None, None, skip))
                if d_ms is not None:
                    history.append((length, t_kv, d_ms, d_bytes))
                for name, (ms, nbytes, err) in got.items():
                    note = err or ("" if name == "dense" or d_ms is not None else (d_err or skip))
                    row = {"mechanism": name, "pattern": pattern, "mode": mode, "length": length, "t_kv": t_kv,
                           "time_ms": ms, "dense_time_ms": d_ms, "time_ratio": _ratio(ms, d_ms),
                           "peak_bytes": nbytes, "dense_peak_bytes": d_bytes,
                           "memory_ratio": _ratio(nbytes, d_bytes), "note": note or ""}
                    if name == "dense":
                        row.update(time_ratio=1.0, memory_ratio=1.0)
                    rows.append(row)
                    cells[(name, length)] = row
                if skip:
                    rows.append({"mechanism": "dense", "pattern": pattern, "mode": mode, "length": length,
                                 "t_kv": t_kv, "time_ms": None, "dense_time_ms": None, "time_ratio": None,
                                 "peak_bytes": None, "dense_peak_bytes": None, "memory_ratio": None, "note": skip})
                tick()
            dense_grid = [x for x in grid if cells.get(("dense", x), {}).get("time_ms") is not None]
            for m in mechs:
                efficiency.append(_efficiency(m, pattern, mode, dense_grid, cells, dense, heads, dim, reps,
                                              tolerance, grid))
                tick()
    for m_name, reason in [(m.name, None) for m in MECHANISMS] + list(ABSENT):
        for pattern in PATTERNS:
            cell = status[(m_name, pattern)]
            if cell["status"] == "supported":
                continue
            for mode in modes:
                why = f"{cell['status']}: {cell['reason']}"
                efficiency.append({"mechanism": m_name, "pattern": pattern, "mode": mode, "status": cell["status"],
                                   "efficiency_length": None, "efficiency_status": why, "faster_length": None,
                                   "faster_status": why, "bracket": None, "faster_bracket": None, "probes": [],
                                   "tolerance": tolerance})
    return {
        "suite": "cab",
        "settings": {"lengths": grid, "batch": 1, "heads": heads, "head_dim": dim, "dtype": "float32",
                     "cross_factor": CROSS_FACTOR, "repeats": {str(x): reps(x) for x in grid},
                     "tolerance": tolerance, "dense_max_s": DENSE_MAX_S, "dense_max_bytes": DENSE_MAX_BYTES,
                     "modes": list(modes), "quick": bool(quick)},
        "machine": machine(),
        "dense": dict(DENSE),
        "support": support,
        "mechanisms": [{"name": m.name, "op": f"glocal.{m.op}", "settings": m.settings, "present": m.present}
                       for m in MECHANISMS] + [{"name": n, "op": None, "settings": r, "present": False}
                                                for n, r in ABSENT],
        "rows": rows,
        "efficiency": efficiency,
        "wall_s": time.perf_counter() - start,
    }


def _efficiency(m: Mechanism, pattern: str, mode: str, dense_grid: list, cells: dict, dense, heads: int, dim: int,
                reps, tolerance: float, grid: list) -> dict:
    """Efficiency length (faster and lighter) and faster length (time only) of one mechanism/pattern/mode.

    Both bisections share one cache of fresh measurements (``probes``), so a length both visit is
    timed once; each reports its own bracket.
    """
    probes = {}  # T -> (time_ratio, memory_ratio), measured fresh at the bisection's lengths

    def ratios(length):
        row = cells.get((m.name, length))
        if row is not None:
            return row["time_ratio"], row["memory_ratio"]
        if length not in probes:
            fns = {m.name: lambda q, k, v: m.adapter(q, k, v, pattern), "dense": dense}
            got = _measure_cell(fns, length, pattern, mode, heads, dim, reps(length))
            (ms, b, _), (d_ms, d_b, _) = got[m.name], got["dense"]
            probes[length] = (_ratio(ms, d_ms), _ratio(b, d_b))
        return probes[length]

    def faster(length):
        t, _ = ratios(length)
        return t is not None and t < 1

    def both(length):
        t, mem = ratios(length)
        return t is not None and mem is not None and t < 1 and mem < 1

    usable = [x for x in dense_grid if cells.get((m.name, x), {}).get("time_ms") is not None]
    # "never within X" where X is short of the grid's end: say why the search stopped there.
    beyond = "" if usable and usable[-1] == grid[-1] else \
        f" (dense or the mechanism not timed above {usable[-1] if usable else '-'})"

    def status(found):
        return found["status"] + (beyond if found["length"] is None else "")

    eff = efficiency_length(usable, [both(x) for x in usable], both, tolerance)
    fast = efficiency_length(usable, [faster(x) for x in usable], faster, tolerance)
    return {"mechanism": m.name, "pattern": pattern, "mode": mode, "status": "supported",
            "efficiency_length": eff["length"], "efficiency_status": status(eff),
            "faster_length": fast["length"], "faster_status": status(fast),
            "bracket": eff["bracket"], "faster_bracket": fast["bracket"],
            "probes": [{"length": x, "time_ratio": t, "memory_ratio": mem} for x, (t, mem) in sorted(probes.items())],
            "tolerance": tolerance}


# ---------------------------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------------------------


def _cell(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def _table_lengths(grid: list) -> list:
    """A few lengths for the table's ratio columns: the smallest, two in between and the largest."""
    if len(grid) <= 4:
        return list(grid)
    return [grid[0], grid[len(grid) // 3], grid[2 * len(grid) // 3], grid[-1]]


def format_table(result: dict) -> str:
    """The support matrix, then per mechanism x pattern x mode: time and memory ratios vs dense at a few
    lengths (mechanism / dense: below 1 is better), the efficiency length and the faster-only length."""
    s = result["settings"]
    lines = [f"CAB suite: batch {s['batch']}, {s['heads']} heads of {s['head_dim']}, {s['dtype']}, cross T_kv = "
             f"{s['cross_factor']} T, bisection to {s['tolerance']:.0%} of T; {result['machine']['cpu_model']}, "
             f"{result['machine']['threads']} threads; wall {result['wall_s']:.0f} s", "",
             "support (yes: the op runs the pattern; no: it refuses it; absent: not in glocal)",
             format_support(result["support"]), "",
             "dense baselines: " + "; ".join(f"{p}: {d}" for p, d in result["dense"].items()), ""]
    shown = _table_lengths(s["lengths"])
    rows = {(r["mechanism"], r["pattern"], r["mode"], r["length"]): r for r in result["rows"]}
    head = (["mechanism", "pattern", "mode"] + [f"t/d {x}" for x in shown] + [f"m/d {x}" for x in shown]
            + ["efficient from", "faster from"])
    body = []
    for e in result["efficiency"]:
        if e["status"] != "supported":
            continue
        key = (e["mechanism"], e["pattern"], e["mode"])
        t = [_cell(rows.get(key + (x,), {}).get("time_ratio")) for x in shown]
        mem = [_cell(rows.get(key + (x,), {}).get("memory_ratio")) for x in shown]

        def length(value, why):
            if value is None:  # the table keeps "never within X"; the JSON has why the search stopped at X
                return why.split(" (")[0] + ("*" if " (" in why else "")
            return str(value) if why.startswith("bisected") else f"{value} ({why})"

        body.append([e["mechanism"], e["pattern"], "fwd" if e["mode"] == "forward" else "f+b"] + t + mem
                    + [length(e["efficiency_length"], e["efficiency_status"]),
                       length(e["faster_length"], e["faster_status"])])
    widths = [max(len(str(r[i])) for r in [head] + body) for i in range(len(head))]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in body]
    dense_rows = [r for r in result["rows"] if r["mechanism"] == "dense"]
    lines += ["", "dense ms (" + ", ".join(f"T={x}" for x in shown) + "):"]
    for mode in s["modes"]:
        for p in PATTERNS:
            ms = [next((r["time_ms"] for r in dense_rows if (r["pattern"], r["mode"], r["length"]) == (p, mode, x)),
                       None) for x in shown]
            lines.append(f"  {p:<17} {mode:<17} " + "  ".join(_cell(m, ".1f") for m in ms))
    skipped = sorted({r["note"] for r in dense_rows if r["note"]})
    lines += [f"  note: {n}" for n in skipped]
    lines.append("t/d, m/d: mechanism time / dense time and peak memory / dense peak memory; 'efficient from': the "
                 "smallest T from which both are < 1 (bisected between grid lengths); 'faster from': time alone; "
                 "*: dense (or the mechanism) was not timed above that length.")
    return "\n".join(lines)


def plot(result: dict, path: str, title: str | None = None) -> None:
    """PNG: time and peak memory vs T (log-log), one panel per pattern and metric (and mode), one line per
    mechanism, dense dashed black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = result["settings"]["modes"]
    metrics = [(mode, key, label) for mode in modes
               for key, label in (("time_ms", "ms"), ("peak_bytes", "peak MiB"))]
    fig, axes = plt.subplots(len(metrics), len(PATTERNS), figsize=(4.2 * len(PATTERNS), 3.3 * len(metrics)),
                             squeeze=False)
    names = [m.name for m in MECHANISMS] + ["dense"]
    colors = plt.get_cmap("tab20")  # even entries first: tab20's neighbours are light/dark pairs of one hue
    for i, (mode, key, label) in enumerate(metrics):
        for j, pattern in enumerate(PATTERNS):
            ax = axes[i][j]
            for n, name in enumerate(names):
                pts = [(r["length"], r[key]) for r in result["rows"]
                       if (r["mechanism"], r["pattern"], r["mode"]) == (name, pattern, mode) and r[key]]
                if not pts:
                    continue
                xs, ys = zip(*sorted(pts))
                ys = [y / 2 ** 20 for y in ys] if key == "peak_bytes" else ys
                style = dict(color="black", ls="--", lw=2) if name == "dense" else dict(color=colors((2 * n) % 20 + (2 * n) // 20 % 2))
                ax.plot(xs, ys, marker="o", ms=3, label=name, **style)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{pattern}, {'fwd' if mode == 'forward' else 'fwd+bwd'}", fontsize=9)
            ax.set_xlabel("T (queries)")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = {}, {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    labels = list(handles)
    fig.legend([handles[x] for x in labels], labels, loc="lower center", ncol=min(8, len(labels)), fontsize=8)
    s = result["settings"]
    fig.suptitle(title or f"CAB suite vs dense, CPU {s['dtype']}, {s['heads']} heads of {s['head_dim']}")
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["ABSENT", "DENSE", "MECHANISMS", "PATTERNS", "Mechanism", "NotExpressible", "bisect_crossing",
           "efficiency_length", "format_support", "format_table", "plot", "probe", "run", "support_matrix"]

