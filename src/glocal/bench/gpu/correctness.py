"""The GPU suite's correctness sweep: Triton kernels against the float32 reference on random problems.

Shapes (each problem, from ``configs._random_problem``):
    q: [B, *spatial, H_q, D_qk]  k: [B, *spatial, H_kv, D_qk]  v: [B, *spatial, H_kv, D_v]
    additional keys / values (some problems): [B, S, H_kv, D_qk] / [B, S, H_kv, D_v]

Example:
    >>> import torch
    >>> from glocal.bench.gpu import correctness
    >>> correctness._rel(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]))
    0.2
    >>> correctness.check(50)                                       # doctest: +SKIP
"""

from __future__ import annotations

import random
import time

import torch

from ... import config
from ...backends.reference import neighborhood as reference
from ...spec import make_neighborhood_spec
from .configs import _random_problem


def _rel(a, b) -> float:
    """Max absolute difference over the max magnitude of ``b`` (inf when ``a`` holds a non-finite value)."""
    a, b = a.detach().double(), b.detach().double()
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def check(n_problems: int, seed: int = 0, device: str = "cuda") -> dict:
    """Triton vs the float32 reference on random problems; worst relative errors forward and backward."""
    from ...backends.triton import ops  # imports Triton

    rng = random.Random(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    worst = {"fwd": 0.0, "bwd": 0.0}
    failures = []
    start = time.time()
    # NaN-poisoned outputs: an element a kernel fails to write shows up as an error.
    with config.nan_poisoning(True):
        for i in range(n_problems):
            p = _random_problem(rng)
            spec = make_neighborhood_spec(p["spatial"], p["kernel_size"], p["stride"], p["dilation"],
                                          p["is_causal"])
            dev, dt = device, p["dtype"]

            def rand(*shape):
                return torch.randn(*shape, device=dev, generator=gen).to(dt).requires_grad_()

            q = rand(p["batch"], *p["spatial"], p["hq"], p["d_qk"])
            k = rand(p["batch"], *p["spatial"], p["hkv"], p["d_qk"])
            v = rand(p["batch"], *p["spatial"], p["hkv"], p["d_v"])
            ak = rand(p["batch"], p["extra"], p["hkv"], p["d_qk"]) if p["extra"] else None
            av = rand(p["batch"], p["extra"], p["hkv"], p["d_v"]) if p["extra"] else None
            inputs = [x for x in (q, k, v, ak, av) if x is not None]
            scale = p["d_qk"] ** -0.5
            out, lse = ops.neighborhood(spec, q, k, v, scale, ak, av)
            gout = torch.randn(out.shape, device=dev, generator=gen)
            glse = torch.randn(lse.shape, device=dev, generator=gen)
            grads = torch.autograd.grad((out.float() * gout).sum() + (lse * glse).sum(), inputs)
            ref_in = [x.detach().float().requires_grad_() for x in inputs]
            rq, rk, rv = ref_in[:3]
            rak, rav = (ref_in[3], ref_in[4]) if ak is not None else (None, None)
            rout, rlse = reference.run(spec, {"q": rq, "k": rk, "v": rv, "additional_keys": rak,
                                              "additional_values": rav}, scale)
            rgrads = torch.autograd.grad((rout * gout).sum() + (rlse * glse).sum(), ref_in)
            fwd = max(_rel(out, rout), _rel(lse, rlse))
            bwd = max(_rel(g, r) for g, r in zip(grads, rgrads))
            tol = 2e-2 if dt == torch.bfloat16 else 1e-2
            worst["fwd"] = max(worst["fwd"], fwd)
            worst["bwd"] = max(worst["bwd"], bwd)
            if not (fwd <= tol and bwd <= tol):
                failures.append(dict(problem={k_: str(v_) for k_, v_ in p.items()}, fwd=fwd, bwd=bwd))
                print(f"  FAIL {i}: {p} fwd={fwd:.2e} bwd={bwd:.2e}", flush=True)
    print(f"checked {n_problems} random problems in {time.time() - start:.0f}s: worst relative error "
          f"forward (out, lse) {worst['fwd']:.2e}, backward (dq, dk, dv, extra) {worst['bwd']:.2e}; "
          f"{len(failures)} over tolerance (bf16 2e-2, fp16 1e-2)", flush=True)
    return dict(problems=n_problems, worst_fwd=worst["fwd"], worst_bwd=worst["bwd"], failures=failures)
