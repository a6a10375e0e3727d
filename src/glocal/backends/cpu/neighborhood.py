"""CPU neighborhood attention in O(N·K) time and memory, forward and backward.

Shapes:
    q: [B, *spatial, H_q, D_qk]   k: [B, *spatial, H_kv, D_qk]   v: [B, *spatial, H_kv, D_v]
    out: [B, *spatial, H_q, D_v]  lse: [B, *spatial, H_q] (float32; float64 for float64 inputs)

Example:
    >>> import torch
    >>> from glocal.backends.cpu import neighborhood
    >>> from glocal.spec import make_neighborhood_spec
    >>> q = k = v = torch.randn(1, 16, 16, 2, 32)
    >>> out, lse = neighborhood.run(make_neighborhood_spec((16, 16), 5), {"q": q, "k": k, "v": v}, 32 ** -0.5)
    >>> out.shape, lse.shape
    (torch.Size([1, 16, 16, 2, 32]), torch.Size([1, 16, 16, 2]))

How it works. Every query attends a box of keys: per axis a run of at most K
coordinates stepping by the dilation. ``_plan`` turns the spec into two small
integer tables per axis (length L each): for every query coordinate the first
key coordinate and the key count of its window, and for every key coordinate
the first query and the count of queries whose windows contain it (windows are
monotone in the query coordinate, so that set is a run too). A window is then
the Cartesian product of per-axis runs, so:

- no masking anywhere: border and interior queries run the same loop over their
  own window, only its bounds differ (the table entries);
- dilation is a re-indexing: keys are read at ``start + j * d`` (the query's
  dilation group is implied by ``start``), never masked out of a larger box;
- stride and per-axis causality only change the tables.

Three code paths, all exact, share the tables:

- blocked compiled kernels (float32, head dims multiples of 16; ``kernels/
  neighborhood.cpp``, built on first use with ``torch.utils.cpp_extension``,
  parallel with ATen's thread pool). Tokens are addressed in dilation-group
  order (per axis: the members of group 0, then group 1, ...), where every
  window is a contiguous run: that permutation is the only thing dilation
  costs. A tile is a block of queries along the last axis inside one group:
  8 queries when the last axis's kernel is at most 9 (their union of keys on
  that axis then fits one 16-float vector), else 16. The block shares its key
  rows on the leading axes, so its scores are small dense products against a
  transposed copy of K (16 keys per vector, no horizontal sums); each query
  then takes the softmax over its own column range of the span, the same on
  every row, and out = P·V runs 16 output columns at a time. The backward
  uses the same blocks: recompute S and P from the saved lse, dP = dO·V^T,
  dS = P (dP - delta), dq = dS·K written once per query, and dk, dv
  accumulated in phases in which no two threads write the same key (no
  atomics, no per-thread copies), so memory is O(N · D), never O(N²);
- per-query compiled kernels (other head dims, and float64): one pass per
  query over its window with the head dim as a compile-time constant where it
  is 16/32/64/128; backward computes dq per query and dk/dv per key over the
  inverse windows, so no two threads write the same row;
- pure PyTorch (when the build fails, or inside ``glocal.config.cpu_kernels(False)``):
  the same windows gathered for chunks of queries, batched matmuls, and the
  same recompute-from-lse backward with ``index_add_`` for dk/dv. Memory is
  bounded by the chunk size (about 32 MB of gathered rows).

No path masks a border: every query's window is exact, so interior and
border queries run the same loop with different bounds.

Additional keys/values are attended densely (S is small) in plain PyTorch and
merged with the neighborhood part by lse. float32 and float64 are computed in
their own precision; bfloat16 and float16 are computed in float32. Dense
``AttentionSpec`` problems are refused (they go to the reference backend).
"""

from __future__ import annotations

import functools

import torch

from ... import config
from ...numerics import compute_dtype, merge_extra_tokens
from ...spec import NeighborhoodSpec, axis_window
from .build import build_error, kernels

NAME = "cpu"

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def can_run(spec, tensors: dict) -> list[str]:
    reasons = []
    if not isinstance(spec, NeighborhoodSpec):
        reasons.append(f"cpu does not implement {type(spec).__name__} as neighborhood attention")
    for name, t in tensors.items():
        if t is None:
            continue
        if t.device.type != "cpu":
            reasons.append(f"cpu needs CPU tensors; {name} is on {t.device}")
            break
    q = tensors.get("q")
    if q is not None and q.dtype not in _DTYPES:
        reasons.append(f"cpu takes float32, float64, bfloat16 or float16; got {q.dtype}")
    return reasons


def active_path() -> str:
    """``"compiled"`` or ``"pytorch"``: which implementation runs now (builds the kernels if needed)."""
    if config.cpu_kernels_enabled() and kernels() is not None:
        return "compiled"
    return "pytorch"


def describe() -> str:
    path = active_path()
    if path == "compiled":
        return "cpu: compiled C++ kernels (torch.utils.cpp_extension, ATen thread pool)"
    why = "disabled (GLOCAL_CPU_KERNELS=0 or glocal.config.cpu_kernels(False))" if not config.cpu_kernels_enabled() \
        else f"build failed: {build_error()}"
    return f"cpu: pure-PyTorch path (compiled kernels {why})"


# ---------------------------------------------------------------------------- planning


class _Plan:
    """Per-axis window tables of one spec (see the module docstring), padded to 3 axes."""

    def __init__(self, spec: NeighborhoodSpec):
        pad = 3 - spec.ndim
        axes = [(1, 1, 1, 1, False)] * pad + [spec.axis(i) for i in range(spec.ndim)]
        self.lengths = [a[0] for a in axes]
        self.dilations = [a[3] for a in axes]
        self.kernel = [a[1] for a in axes]
        lmax = max(self.lengths)
        tab = torch.zeros(2, 3, 2, lmax, dtype=torch.int32)
        self.qk = []  # per axis: (start, count) of key runs per query coordinate
        self.kq = []  # per axis: (start, count) of query runs per key coordinate
        for a, (length, k, s, d, causal) in enumerate(axes):
            x = torch.arange(length)
            group, lo, hi = axis_window(x, length, k, s, d, causal)
            start, count = lo * d + group, hi - lo
            # Inverse: within a dilation group, lo and hi are non-decreasing in the query, so the
            # queries containing key y' are the run [first with hi > y', last with lo <= y'].
            qstart = torch.zeros(length, dtype=torch.long)
            qcount = torch.zeros(length, dtype=torch.long)
            for g in range(d):
                members = x[g::d]
                glo, ghi = lo[g::d].contiguous(), hi[g::d].contiguous()
                y = torch.arange(members.numel())
                first = torch.searchsorted(ghi, y, right=True)
                last = torch.searchsorted(glo, y, right=True)
                qstart[g::d] = first * d + g
                qcount[g::d] = (last - first).clamp(min=0)
            for direction, (st, ct) in enumerate(((start, count), (qstart, qcount))):
                tab[direction, a, 0, :length] = st.to(torch.int32)
                tab[direction, a, 1, :length] = ct.to(torch.int32)
            self.qk.append((start, count))
            self.kq.append((qstart, qcount))
        self.tab = tab
        self._blocked(axes, lmax)
        self.geom = self.lengths + self.dilations
        self.kmax = int(torch.prod(torch.tensor([int(c.max()) for _, c in self.qk])))
        self.qmax = int(torch.prod(torch.tensor([int(c.max()) for _, c in self.kq])))

    def _blocked(self, axes, lmax):
        """Tables of the blocked float32 kernel, in dilation-group-major ("permuted") coordinates.

        Per axis, permuted position p lists the members of dilation group 0, then group 1, ...;
        there every window is a contiguous run. ``ptab[a]`` holds, per permuted query coordinate,
        the permuted start and the count of its key run; ``orig`` maps permuted flat tokens to
        original ones. Blocks of ``qb`` queries run along the last axis inside one group: 8 when
        the last axis's kernel is at most 9 (their key span then fits one 16-wide vector), else 16.
        """
        ptab = torch.zeros(3, 2, lmax, dtype=torch.int32)
        origs = []
        for a, (length, k, s, d, causal) in enumerate(axes):
            x = torch.arange(length)
            order = torch.cat([x[g::d] for g in range(d)])
            pos = torch.empty_like(order)
            pos[order] = x
            group, lo, hi = axis_window(order, length, k, s, d, causal)
            ptab[a, 0, :length] = (pos[group] + lo).to(torch.int32)
            ptab[a, 1, :length] = (hi - lo).to(torch.int32)
            origs.append(order)
        l0, l1, l2 = self.lengths
        self.orig = ((origs[0][:, None, None] * l1 + origs[1][None, :, None]) * l2 + origs[2][None, None, :]).reshape(-1)
        self.ptab = ptab
        self.qb = 8 if self.kernel[2] <= 9 else 16
        length, d = l2, self.dilations[2]
        starts, counts = [], []
        offset = 0
        for g in range(d):
            members = (length - g + d - 1) // d
            for b in range(0, members, self.qb):
                starts.append(offset + b)
                counts.append(min(self.qb, members - b))
            offset += members
        self.blocks = torch.tensor([starts, counts], dtype=torch.int32)
        kstart, kcount = ptab[2, 0].long(), ptab[2, 1].long()
        first = self.blocks[0].long()
        last = first + self.blocks[1].long() - 1
        self.wmax = int((kstart[last] + kcount[last] - kstart[first]).max())
        self.rmax = int(ptab[0, 1].max()) * int(ptab[1, 1].max())

    def neighbors(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Key token indices ``[n, K_max]`` of the windows of ``tokens`` (flat), and their validity."""
        l0, l1, l2 = self.lengths
        coords = (tokens // (l1 * l2), (tokens // l2) % l1, tokens % l2)
        ys, oks = [], []
        for a in range(3):
            start, count = self.qk[a]
            j = torch.arange(self.kernel[a])
            ys.append(start[coords[a]][:, None] + j * self.dilations[a])
            oks.append(j < count[coords[a]][:, None])
        flat = (ys[0][:, :, None, None] * l1 + ys[1][:, None, :, None]) * l2 + ys[2][:, None, None, :]
        ok = oks[0][:, :, None, None] & oks[1][:, None, :, None] & oks[2][:, None, None, :]
        n = tokens.numel()
        flat, ok = flat.reshape(n, -1), ok.reshape(n, -1)
        return torch.where(ok, flat, torch.zeros_like(flat)), ok


@functools.lru_cache(maxsize=64)
def _plan(spec: NeighborhoodSpec) -> _Plan:
    return _Plan(spec)


# ---------------------------------------------------------------------------- pure PyTorch path


def _chunk(plan: _Plan, q, k, v) -> int:
    batch, _, hkv, dq = k.shape
    row = batch * plan.kmax * hkv * (dq + v.shape[-1]) * q.element_size()
    return max(1, (32 << 20) // max(1, row))


def _torch_forward(plan, q, k, v, scale):
    batch, n_tok, hq, dq = q.shape
    hkv, dv = k.shape[2], v.shape[-1]
    group = hq // hkv
    out = torch.full((batch, n_tok, hq, dv), float("nan"), dtype=q.dtype)
    lse = torch.full((batch, n_tok, hq), float("nan"), dtype=q.dtype)
    step = _chunk(plan, q, k, v)
    for begin in range(0, n_tok, step):
        tokens = torch.arange(begin, min(begin + step, n_tok))
        idx, ok = plan.neighbors(tokens)
        kn, vn = k[:, idx], v[:, idx]  # [B, n, J, H_kv, D]
        qg = q[:, tokens].view(batch, -1, hkv, group, dq)
        s = torch.einsum("bnhgd,bnjhd->bnhgj", qg, kn) * scale
        s = s.masked_fill(~ok[None, :, None, None, :], -float("inf"))
        chunk_lse = torch.logsumexp(s, dim=-1)
        p = torch.exp(s - chunk_lse[..., None])
        out[:, tokens] = torch.einsum("bnhgj,bnjhe->bnhge", p, vn).reshape(batch, -1, hq, dv)
        lse[:, tokens] = chunk_lse.reshape(batch, -1, hq)
    return out, lse


def _torch_backward(plan, q, k, v, dout, lse, delta, scale):
    batch, n_tok, hq, dq = q.shape
    hkv, dv = k.shape[2], v.shape[-1]
    group = hq // hkv
    dq_out = torch.full_like(q, float("nan"))
    dk = torch.zeros_like(k)
    dvv = torch.zeros_like(v)
    step = _chunk(plan, q, k, v)
    for begin in range(0, n_tok, step):
        tokens = torch.arange(begin, min(begin + step, n_tok))
        idx, ok = plan.neighbors(tokens)
        kn, vn = k[:, idx], v[:, idx]
        qg = q[:, tokens].view(batch, -1, hkv, group, dq)
        gg = dout[:, tokens].view(batch, -1, hkv, group, dv)
        lg = lse[:, tokens].view(batch, -1, hkv, group, 1)
        dg = delta[:, tokens].view(batch, -1, hkv, group, 1)
        s = torch.einsum("bnhgd,bnjhd->bnhgj", qg, kn) * scale
        p = torch.exp(s - lg).masked_fill(~ok[None, :, None, None, :], 0.0)
        dp = torch.einsum("bnhge,bnjhe->bnhgj", gg, vn)
        ds = p * (dp - dg)
        dq_out[:, tokens] = (torch.einsum("bnhgj,bnjhd->bnhgd", ds, kn) * scale).reshape(batch, -1, hq, dq)
        dkn = torch.einsum("bnhgj,bnhgd->bnjhd", ds, qg) * scale
        dvn = torch.einsum("bnhgj,bnhge->bnjhe", p, gg)
        flat = idx.reshape(-1)
        dk.index_add_(1, flat, dkn.reshape(batch, -1, hkv, dq))
        dvv.index_add_(1, flat, dvn.reshape(batch, -1, hkv, dv))
    return dq_out, dk, dvv


# ---------------------------------------------------------------------------- autograd


def _blocked_ok(q, v) -> bool:
    """The blocked kernels take float32 with head dims that are multiples of 16 (one vector)."""
    return q.dtype == torch.float32 and q.shape[-1] % 16 == 0 and v.shape[-1] % 16 == 0


class _NeighborhoodFunction(torch.autograd.Function):
    """(out, lse) of neighborhood attention on flat ``[B, N, H, D]`` tensors; backward recomputes from lse."""

    @staticmethod
    def forward(ctx, q, k, v, plan, scale, compiled):
        # With NaN poisoning (tests) the compiled kernels pre-fill their outputs with NaN, so an
        # element a kernel fails to write shows up (the pure path always pre-fills).
        nan_fill = ctx.nan_fill = config.nan_poisoning_enabled()
        if compiled and _blocked_ok(q, v):
            out, lse = kernels().forward_blocked(q, k, v, plan.ptab, plan.orig, plan.blocks, plan.lengths + plan.dilations[2:], scale,
                                                 plan.qb, plan.rmax, plan.wmax, nan_fill)
        elif compiled:
            out, lse = kernels().forward(q, k, v, plan.tab, plan.geom, scale, plan.kmax, nan_fill)
        else:
            out, lse = _torch_forward(plan, q, k, v, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.scale, ctx.compiled = plan, scale, compiled
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dout = dout.contiguous()
        # d lse / d s_ij = P_ij, so a gradient on lse shifts delta = rowsum(dO * O) by -dlse.
        delta = (dout * out).sum(-1) - dlse
        plan, nan_fill = ctx.plan, ctx.nan_fill
        if ctx.compiled and _blocked_ok(q, v):
            dq, dk, dv = kernels().backward_blocked(q, k, v, dout, lse, delta.contiguous(), plan.ptab, plan.orig,
                                                    plan.blocks, plan.lengths + plan.dilations[2:], ctx.scale,
                                                    plan.qb, plan.rmax, plan.wmax, nan_fill)
        elif ctx.compiled:
            dq, dk, dv = kernels().backward(q, k, v, dout, lse, delta.contiguous(), ctx.plan.tab, ctx.plan.geom,
                                            ctx.scale, ctx.plan.kmax, ctx.plan.qmax, nan_fill)
        else:
            dq, dk, dv = _torch_backward(ctx.plan, q, k, v, dout, lse, delta, ctx.scale)
        return dq, dk, dv, None, None, None


def run(spec, tensors: dict, scale: float):
    """``tensors["q"]: [B, *spatial, H_q, D]`` → ``(out [B, *spatial, H_q, D_v], lse [B, *spatial, H_q])``."""
    q, k, v = tensors["q"], tensors["k"], tensors["v"]
    extra_k, extra_v = tensors.get("additional_keys"), tensors.get("additional_values")
    compute = compute_dtype(q)
    # flatten, not reshape(batch, -1, ...): the token count must stay known when the batch is empty.
    qf = q.flatten(1, -3).to(compute).contiguous()
    kf = k.flatten(1, -3).to(compute).contiguous()
    vf = v.flatten(1, -3).to(compute).contiguous()
    compiled = active_path() == "compiled"
    out, lse = _NeighborhoodFunction.apply(qf, kf, vf, _plan(spec), float(scale), compiled)
    if extra_k is not None:
        out, lse = merge_extra_tokens(qf, out, lse, extra_k.to(compute), extra_v.to(compute), scale)
    out = out.reshape(*q.shape[:-1], v.shape[-1]).to(q.dtype)
    return out, lse.reshape(q.shape[:-1])
