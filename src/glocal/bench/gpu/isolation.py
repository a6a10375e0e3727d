"""The GPU suite's tasks (the checks, each config) in child processes, each under a time limit.

A task is ``"check"`` (matmul rate and the random correctness sweep) or ``"config:<index>"`` (one
row of ``configs.CONFIGS``). Each child is ``python -m glocal.bench.gpu --child <task> ...`` and
saves its result as JSON whenever it gains a figure, so a child stopped at its budget keeps them.

Example:
    >>> import argparse
    >>> from glocal.bench.gpu import isolation
    >>> opt = isolation._options(argparse.Namespace(repeats=40, quick=False, json="out.json"))
    >>> opt["rep_ms"], opt["checks"], opt["budget"]
    (40, 60, 150)
    >>> isolation._child_command(opt, "config:3", "r.json")[1:5]
    ['-m', 'glocal.bench.gpu', '--child', 'config:3']
"""

from __future__ import annotations

import faulthandler
import json
import os
import subprocess
import sys
import tempfile

from .. import (
    gpu as suite,  # the package: check, matmul_tflops, time_config are looked up there (tests patch them)
)
from .configs import CONFIGS


def _options(args) -> dict:
    """The run's options from an argparse namespace (``glocal bench``'s lacks some: defaults)."""
    quick = bool(getattr(args, "quick", False))
    # do_bench's time budget per figure in ms; callers passing a small repeat count still get >= 25 ms.
    rep_ms = max(int(getattr(args, "repeats", 100) or 100), 25)
    checks = getattr(args, "checks", None)
    path = getattr(args, "json", None)
    return dict(
        quick=quick, rep_ms=min(rep_ms, 30) if quick else rep_ms,
        checks=checks if checks is not None else (20 if quick else 60),
        variants=bool(getattr(args, "variants", False)),
        variant_keys=str(getattr(args, "variant_keys", "1,2,3,bwd")),
        head_dims=getattr(args, "head_dims", None), only=getattr(args, "only", None),
        budget=int(getattr(args, "budget", 150) or 150), in_process=bool(getattr(args, "in_process", False)),
        # a boolean --json flag (glocal bench's) means JSON on stdout at the end
        json_stdout=path is True, json=path if isinstance(path, str) and path else None,
    )


def _child_command(opt: dict, task: str, result_path: str) -> list:
    """The command that runs one task ("check" or "config:<index>") of this suite in its own process."""
    cmd = [sys.executable, "-m", "glocal.bench.gpu", "--child", task, "--json", result_path,
           "--repeats", str(opt["rep_ms"]), "--checks", str(opt["checks"]), "--budget", str(opt["budget"]),
           "--variant-keys", opt["variant_keys"]]
    if opt["variants"]:
        cmd.append("--variants")
    if opt["head_dims"]:
        cmd += ["--head-dims", opt["head_dims"]]
    return cmd


def run_isolated(cmd: list, budget_s: float, result_path: str, grace_s: float = 30) -> tuple:
    """Run ``cmd`` (a child of this suite) with a time limit; returns ``(result dict or None, error or None)``.

    The child arms ``faulthandler`` to print its Python stack and exit at ``budget_s``; this process
    kills it ``grace_s`` later if it is still there (a stalled GPU launch may not return to Python). A result
    the child saved before stopping is kept.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    error = None
    try:
        proc = subprocess.run(cmd, env=env, timeout=budget_s + grace_s)
        if proc.returncode != 0:
            error = f"stopped with exit code {proc.returncode} (see its output above)"
    except subprocess.TimeoutExpired:
        error = f"killed after {budget_s + grace_s:.0f} s"
    result = None
    if os.path.exists(result_path):
        with open(result_path) as f:
            result = json.load(f)
    return result, error


def _variant_keys(opt: dict):
    return set(opt["variant_keys"].split(",")) if opt["variants"] else None


def _child(opt: dict, task: str) -> int:
    """One task in this process, under a time limit that prints the Python stack when it is reached."""
    budget = opt["budget"] * (2 if task == "check" else 1)
    faulthandler.dump_traceback_later(budget, exit=True)
    path = opt["json"]

    def save(result):
        with open(path, "w") as f:
            json.dump(result, f, indent=1, default=str)

    if task == "check":
        result = dict(matmul_tflops=suite.matmul_tflops(opt["rep_ms"]), bandwidth_gbs=suite.copy_gbs(opt["rep_ms"]))
        save(result)
        if opt["checks"] > 0:
            result["check"] = suite.check(opt["checks"])
            save(result)
        return 0
    cfg = CONFIGS[int(task.split(":")[1])]
    suite.time_config(cfg, opt["rep_ms"], _variant_keys(opt), save=save)
    return 0


def _run_task(opt: dict, task: str, budget_s: float) -> tuple:
    """A task's result in a child process (or in this one with --in-process): ``(result, error)``."""
    if opt["in_process"]:
        if task == "check":
            return dict(matmul_tflops=suite.matmul_tflops(opt["rep_ms"]), bandwidth_gbs=suite.copy_gbs(opt["rep_ms"]),
                        check=suite.check(opt["checks"]) if opt["checks"] > 0 else None), None
        cfg = CONFIGS[int(task.split(":")[1])]
        try:
            return suite.time_config(cfg, opt["rep_ms"], _variant_keys(opt)), None
        except Exception as err:  # one broken config must not lose the others' numbers
            return None, f"{type(err).__name__}: {str(err)[:300]}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.json")
        return run_isolated(_child_command(opt, task, path), budget_s, path)
