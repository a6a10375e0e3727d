"""The efficacy suite: local, global, linear and hybrid attention trained on small synthetic tasks (CPU).

Each task trains one tiny model per attention kind, from scratch, for every seed; only the attention
kind differs. Fixed across kinds: the embedding (a token embedding or, for continuous inputs, a linear
one), width, heads, depth, the MLP (glocal's pre-norm blocks, GELU, 4x), the linear readout, AdamW
with the same learning rate, warmup and cosine decay, the number of steps, the batch size and the
training and held-out data (both drawn from seeded generators, the same for every kind). Checkpoints
are never written to disk.

Tasks:

- ``mqar`` (multi-query associative recall, Zoology): ``k1 v1 k2 v2 ... kP vP q1 ... qQ``, every
  query a key of the pairs (distinct keys); a causal decoder predicts, at each query position, the
  value paired with that key. Metric: accuracy on the query positions.
- ``regression`` (in-context linear regression, Garg et al. 2022): ``x1 y1 x2 y2 ... xN yN`` with a
  fresh ``w ~ N(0, I)`` per sequence and ``y_i = w . x_i``; tokens are ``[x, 0]`` and ``[0, y]``
  through a linear embedding; the causal decoder predicts ``y_i`` at ``x_i``'s position. Metric: the
  MSE over the last quarter of the examples divided by ``E[y^2] = d`` (1.0 = predicting 0); the
  result also holds the MSE against the number of in-context examples (``curves``).
- ``grid`` (a 2-D task needing local detail and global context): a binary grid with a per-grid
  density ``p ~ U(0.3, 0.7)``; a cell's label is ``2 * global + local``, where ``local`` says whether its
  3x3 neighbourhood (zero-padded) holds at least 5 ones and ``global`` whether the whole grid has more
  ones than zeros. A bidirectional 2-D encoder (``ndim=2``) labels every cell. Metric: cell accuracy
  (a local-only model should stall near the local half; a global-only one must learn the 3x3 pattern
  from RoPE alone).

Models (``MODELS``; every one ``depth`` layers): ``local`` (pattern ``"L"``: a causal sliding window of
``window`` keys, a ``window`` x ``window`` neighbourhood on the grid), ``global`` (``"G"``),
``linear`` (``"N"``, elu+1 feature map, a fixed state of head_dim x head_dim per head) and ``hybrid``
(``"LG"``: local layers, then one global layer).

Example:
    >>> from glocal.bench import efficacy
    >>> result = efficacy.run(quick=True, seeds=(0, 1, 2))  # a CI smoke test, < 60 s  # doctest: +SKIP
    >>> print(efficacy.format_table(result)); efficacy.plot(result, "efficacy.png")  # doctest: +SKIP
    >>> import torch
    >>> tokens, targets = efficacy.mqar_batch(2, num_pairs=4, num_queries=2, num_keys=8, num_values=8,
    ...                                       generator=torch.Generator().manual_seed(0))
    >>> tokens.shape, int((targets != efficacy.IGNORE).sum())
    (torch.Size([2, 10]), 4)
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import glocal

from .neighborhood import machine

TASKS = ("mqar", "regression", "grid")
MODELS = {"local": "L", "global": "G", "linear": "N", "hybrid": "LG"}
IGNORE = -100  # cross-entropy targets at positions that are not scored

# Sizes per mode. Everything a task reads is here, so the result records it.
CONFIGS = {
    "quick": {
        "model": {"dim": 32, "num_heads": 2, "depth": 2, "lr": 3e-3, "weight_decay": 0.01, "warmup": 5},
        "mqar": {"num_pairs": 6, "num_queries": 4, "num_keys": 16, "num_values": 16, "window": 3,
                 "steps": 15, "batch": 16, "eval": 64},
        "regression": {"d": 4, "num_examples": 8, "window": 3, "steps": 15, "batch": 16, "eval": 64},
        "grid": {"size": 8, "window": 3, "steps": 15, "batch": 8, "eval": 32},
    },
    "full": {
        "model": {"dim": 64, "num_heads": 4, "depth": 2, "lr": 3e-3, "weight_decay": 0.01, "warmup": 40},
        "mqar": {"num_pairs": 12, "num_queries": 8, "num_keys": 32, "num_values": 32, "window": 4,
                 "steps": 800, "batch": 64, "eval": 1024},
        "regression": {"d": 6, "num_examples": 16, "window": 4, "steps": 800, "batch": 64, "eval": 1024},
        "grid": {"size": 10, "window": 3, "steps": 300, "batch": 32, "eval": 512},
    },
}
EVAL_SEED = 1_000_003  # the held-out set's generator seed (training data: the run's seed)


# ----------------------------------------------------------------------------------------------- data


def mqar_batch(batch: int, num_pairs: int, num_queries: int, num_keys: int, num_values: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One MQAR batch: ``tokens [B, 2P + Q]`` and ``targets [B, 2P + Q]`` (IGNORE except at the queries).

    Keys are tokens ``0 .. num_keys - 1`` (``num_pairs`` distinct ones per sequence), values
    ``num_keys .. num_keys + num_values - 1``; each query is one of the sequence's keys (distinct) and its
    target is the value paired with it."""
    if num_pairs > num_keys or num_queries > num_pairs:
        raise ValueError(f"mqar: need num_queries <= num_pairs <= num_keys, got {num_queries}, {num_pairs}, "
                         f"{num_keys}")
    keys = torch.rand(batch, num_keys, generator=generator).argsort(-1)[:, :num_pairs]
    values = num_keys + torch.randint(0, num_values, (batch, num_pairs), generator=generator)
    pick = torch.rand(batch, num_pairs, generator=generator).argsort(-1)[:, :num_queries]
    queries = keys.gather(1, pick)
    pairs = torch.stack([keys, values], -1).flatten(1)
    tokens = torch.cat([pairs, queries], 1)
    targets = torch.full_like(tokens, IGNORE)
    targets[:, 2 * num_pairs:] = values.gather(1, pick)
    return tokens, targets


def regression_batch(batch: int, d: int, num_examples: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One in-context regression batch: ``inputs [B, 2N, d + 1]`` (x tokens ``[x, 0]`` at even positions,
    y tokens ``[0, y]`` at odd ones), ``targets [B, N]`` = ``w . x_i`` and the weights ``w [B, d]``."""
    w = torch.randn(batch, d, generator=generator)
    x = torch.randn(batch, num_examples, d, generator=generator)
    y = torch.einsum("bnd,bd->bn", x, w)
    inputs = torch.zeros(batch, 2 * num_examples, d + 1)
    inputs[:, 0::2, :d] = x
    inputs[:, 1::2, d] = y
    return inputs, y, w


def grid_batch(batch: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One grid batch: ``cells [B, S, S]`` in {0, 1} and ``labels [B, S, S]`` = ``2 * global + local``:
    local = the cell's zero-padded 3x3 neighbourhood holds >= 5 ones; global = the grid holds more ones than
    zeros (an odd ``size`` avoids ties; with an even one a tie counts as 0)."""
    p = 0.3 + 0.4 * torch.rand(batch, 1, 1, generator=generator)
    cells = (torch.rand(batch, size, size, generator=generator) < p).long()
    counts = F.conv2d(cells[:, None].float(), torch.ones(1, 1, 3, 3), padding=1)[:, 0]
    local = (counts >= 5).long()
    glob = (cells.flatten(1).sum(1) * 2 > size * size).long()
    return cells, 2 * glob[:, None, None] + local


# --------------------------------------------------------------------------------------------- models


class TaskModel(nn.Module):
    """An embedding, a glocal schedule (``HybridDecoder``, or ``HybridEncoder`` on grids) and a linear readout.

    ``vocab``: a token embedding of that many tokens, else ``in_features``: a linear embedding of
    continuous inputs."""

    def __init__(self, pattern: str, dim: int, num_heads: int, depth: int, out_features: int, window: int,
                 vocab: int | None = None, in_features: int | None = None, ndim: int = 1, causal: bool = True):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim) if vocab is not None else nn.Linear(in_features, dim)
        cls = glocal.nn.HybridDecoder if causal else glocal.nn.HybridEncoder
        kwargs = {} if causal else {"ndim": ndim}
        self.body = cls(dim, num_heads, depth, pattern, settings={"L": {"window": window}}, **kwargs)
        self.readout = nn.Linear(dim, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.body(self.embed(x)))


def _task_parts(task: str, cfg: dict, mcfg: dict, pattern: str):
    """(model, draw(batch, generator) -> data, loss(model, data) -> scalar, evaluate(model, data) -> dict)."""
    common = dict(dim=mcfg["dim"], num_heads=mcfg["num_heads"], depth=mcfg["depth"], window=cfg["window"])
    if task == "mqar":
        vocab = cfg["num_keys"] + cfg["num_values"]
        model = TaskModel(pattern, out_features=vocab, vocab=vocab, **common)

        def draw(b, g):
            return mqar_batch(b, cfg["num_pairs"], cfg["num_queries"], cfg["num_keys"], cfg["num_values"], g)

        def loss(m, data):
            tokens, targets = data
            return F.cross_entropy(m(tokens).flatten(0, 1), targets.flatten(), ignore_index=IGNORE)

        def evaluate(m, data):
            tokens, targets = data
            scored = targets != IGNORE
            right = (m(tokens).argmax(-1) == targets)[scored]
            return {"value": right.float().mean().item()}

    elif task == "regression":
        d = cfg["d"]
        model = TaskModel(pattern, out_features=1, in_features=d + 1, **common)

        def draw(b, g):
            return regression_batch(b, d, cfg["num_examples"], g)[:2]

        def loss(m, data):
            inputs, y = data
            return F.mse_loss(m(inputs)[:, 0::2, 0], y)

        def evaluate(m, data):
            inputs, y = data
            per_k = ((m(inputs)[:, 0::2, 0] - y) ** 2).mean(0) / d  # [N]: normalised MSE with k earlier examples
            tail = per_k[-max(1, cfg["num_examples"] // 4):]
            return {"value": tail.mean().item(), "curve": [round(v, 5) for v in per_k.tolist()]}

    elif task == "grid":
        model = TaskModel(pattern, out_features=4, vocab=2, ndim=2, causal=False, **common)

        def draw(b, g):
            return grid_batch(b, cfg["size"], g)

        def loss(m, data):
            cells, labels = data
            return F.cross_entropy(m(cells).flatten(0, 2), labels.flatten())

        def evaluate(m, data):
            cells, labels = data
            pred = m(cells).argmax(-1)
            return {"value": (pred == labels).float().mean().item(),
                    "local_acc": (pred % 2 == labels % 2).float().mean().item(),
                    "global_acc": (pred // 2 == labels // 2).float().mean().item()}
    else:
        raise ValueError(f"unknown task {task!r}; valid: {TASKS}")
    return model, draw, loss, evaluate


METRICS = {"mqar": ("accuracy", True), "regression": ("MSE / E[y^2]", False), "grid": ("accuracy", True)}


def train_one(task: str, kind: str, seed: int, cfg: dict, mcfg: dict) -> dict:
    """Train one model from scratch (``torch.manual_seed(seed)``) and evaluate it on the held-out set."""
    torch.manual_seed(seed)
    model, draw, loss_fn, evaluate = _task_parts(task, cfg, mcfg, MODELS[kind])
    steps, warmup = cfg["steps"], min(mcfg["warmup"], cfg["steps"])
    opt = torch.optim.AdamW(model.parameters(), lr=mcfg["lr"], weight_decay=mcfg["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) /
                                                                                 max(1, steps - warmup))))
    train_gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    losses = []
    for _ in range(steps):
        loss = loss_fn(model, draw(cfg["batch"], train_gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    train_s = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        result = evaluate(model, draw(cfg["eval"], torch.Generator().manual_seed(EVAL_SEED)))
    tail = losses[-max(1, steps // 10):]
    return {"task": task, "model": kind, "pattern": MODELS[kind], "seed": seed, **result,
            "final_train_loss": sum(tail) / len(tail), "train_s": round(train_s, 3),
            "params": sum(p.numel() for p in model.parameters())}


def run(quick: bool = False, seeds=(0, 1, 2), progress: Callable[[str], None] | None = None,
        tasks=TASKS, models=tuple(MODELS)) -> dict:
    """Every task x model x seed: train, evaluate; rows hold mean, std, min and max over the seeds."""
    mode = "quick" if quick else "full"
    config = CONFIGS[mode]
    start = time.perf_counter()
    runs = []
    for task in tasks:
        for kind in models:
            for seed in seeds:
                r = train_one(task, kind, int(seed), config[task], config["model"])
                runs.append(r)
                if progress is not None:
                    progress(f"{task} {kind} seed {seed}: {r['value']:.4f} ({r['train_s']:.1f} s)")
    rows, curves = [], {}
    for task in tasks:
        metric, higher = METRICS[task]
        for kind in models:
            mine = [r for r in runs if (r["task"], r["model"]) == (task, kind)]
            values = [r["value"] for r in mine]
            rows.append({"task": task, "model": kind, "pattern": MODELS[kind], "metric": metric,
                         "higher_is_better": higher, "mean": statistics.fmean(values),
                         "std": statistics.pstdev(values), "min": min(values), "max": max(values),
                         "values": values, "seeds": [r["seed"] for r in mine], "params": mine[0]["params"],
                         "train_s": sum(r["train_s"] for r in mine) / len(mine)})
            if task == "regression":
                per = [r["curve"] for r in mine]
                curves[kind] = [round(statistics.fmean(c), 5) for c in zip(*per)]
    return {"suite": "efficacy", "mode": mode, "seeds": [int(s) for s in seeds], "config": config,
            "models": {k: MODELS[k] for k in models}, "tasks": list(tasks), "rows": rows, "runs": runs,
            "regression_curves": curves, "machine": machine(), "wall_s": round(time.perf_counter() - start, 2)}


def format_table(result: dict) -> str:
    """One line per task x model: metric mean +- std [min, max] over the seeds, train seconds per run."""
    header = ["task", "model", "pattern", "metric", "mean", "std", "min", "max", "seeds", "params", "train s"]
    lines = [header]
    for r in result["rows"]:
        lines.append([r["task"], r["model"], r["pattern"], r["metric"], f"{r['mean']:.4f}", f"{r['std']:.4f}",
                      f"{r['min']:.4f}", f"{r['max']:.4f}", str(len(r["values"])), str(r["params"]),
                      f"{r['train_s']:.1f}"])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.append(f"mode {result['mode']}, seeds {result['seeds']}, wall {result['wall_s']:.1f} s, "
               f"{result['machine']['cpu_model']}, {result['machine']['threads']} threads")
    return "\n".join(out)


def plot(result: dict, path: str) -> None:
    """PNG: one panel per task, a bar per model (mean over seeds) with min/max error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = result["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, task in zip(axes[0], tasks):
        rows = [r for r in result["rows"] if r["task"] == task]
        xs = range(len(rows))
        means = [r["mean"] for r in rows]
        err = [[r["mean"] - r["min"] for r in rows], [r["max"] - r["mean"] for r in rows]]
        ax.bar(xs, means, yerr=err, capsize=4, color=[colors(i) for i in xs])
        ax.set_xticks(list(xs), [f"{r['model']}\n{r['pattern']}" for r in rows], fontsize=8)
        arrow = "higher" if rows[0]["higher_is_better"] else "lower"
        ax.set_title(f"{task} ({rows[0]['metric']}, {arrow} is better)", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"efficacy suite ({result['mode']}, {len(result['seeds'])} seeds, bars: min..max)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
