"""Run a function in several processes of this machine, each a rank of one gloo process group.

For tests, benchmarks and trying context parallelism without ``torchrun``: ``run_local(fn, world)``
spawns ``world`` fresh Python processes, initialises a gloo group among them over loopback, calls
``fn(rank, world, *args)`` on each and returns what each returned (rank order). A rank that raises
is reported with its traceback; ranks that outlive ``timeout`` seconds are killed, so a bug that
would leave a rank waiting for a message fails instead of hanging.

Example:
    >>> from glocal.distributed.launch import run_local                   # doctest: +SKIP
    >>> run_local(my_module.step, world=4)   # fn must be importable (a module-level function)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import socket
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, fn, args, outdir, threads, timeout):
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout + 30))  # the parent kills first
    try:
        result = ("ok", fn(rank, world, *args))
    except BaseException:  # reported to the parent with its traceback, instead of a bare exit code
        result = ("error", traceback.format_exc())
    with open(os.path.join(outdir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)
    if result[0] == "ok":  # a rank that failed may have left the others mid-exchange: no barrier then
        with contextlib.suppress(RuntimeError):  # a peer that failed closed its connection; it reports why
            dist.barrier()
    dist.destroy_process_group()


def run_local(fn, world: int, args: tuple = (), timeout: float = 120.0, threads: int | None = None) -> list:
    """``[fn(0, world, *args), ..., fn(world - 1, world, *args)]``, each in its own process and rank of a gloo group.

    ``fn`` and ``args`` must pickle (a module-level function). ``threads``: torch threads per rank
    (None: the machine's cores shared out, at least 1). Raises RuntimeError naming the rank and its
    traceback if a rank raised or died, TimeoutError if the ranks ran past ``timeout`` seconds.
    """
    threads = threads or max(1, (os.cpu_count() or 1) // world)
    with tempfile.TemporaryDirectory(prefix="glocal-ranks-") as outdir:
        context = mp.start_processes(_rank_main, args=(world, _free_port(), fn, args, outdir, threads, timeout),
                                     nprocs=world, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        failure = None
        try:
            while not context.join(timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the {world} ranks did not finish within {timeout:.0f} s (a rank waiting for "
                                       f"a message that never came?); all were killed")
        except mp.ProcessRaisedException as err:
            failure = f"a rank failed outside the function:\n{err}"
        except mp.ProcessExitedException as err:
            failure = f"rank {err.error_index} died (exit code {err.exit_code})"
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
        results = []
        for rank in range(world):  # a rank's own error explains its peers' failures: reported first
            path = os.path.join(outdir, f"rank{rank}.pkl")
            if not os.path.exists(path):
                continue
            with open(path, "rb") as f:
                status, value = pickle.load(f)
            if status == "error":
                raise RuntimeError(f"rank {rank} of {world} raised:\n{value}")
            results.append(value)
        if failure is not None or len(results) < world:
            raise RuntimeError(failure or "a rank exited without a result")
        return results
