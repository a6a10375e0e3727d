"""Plots of a :class:`~glocal.analysis.report.Report` (matplotlib, Agg backend, imported lazily).

Shapes:
    heatmaps: one [T_q, T_k] map per chosen (layer, head); layers: [L] x [H] scatter; head map: [L, H]

Example:
    >>> import tempfile, torch, glocal
    >>> from glocal.analysis import capture
    >>> q = k = v = torch.randn(1, 24, 2, 8)
    >>> with capture(None) as rec:
    ...     _ = glocal.na1d(q, k, v, kernel_size=5)
    >>> paths = rec.report(window=5).plot(tempfile.mkdtemp())
    >>> sorted(p.rsplit("/", 1)[-1] for p in paths)
    ['head_classes.png', 'heatmaps.png', 'layers.png', 'sinks.png']
"""

from __future__ import annotations

import os

CLASS_COLOURS = {"local": "#2a9d8f", "global": "#e9c46a", "sink": "#e76f51"}


def _pyplot():
    try:
        import matplotlib
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("plots need matplotlib: pip install matplotlib (or glocal[bench])") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def default_heads(report, count: int = 6) -> list[tuple[int, int]]:
    """The most local, most global and most sink-dominated heads, for heatmaps."""
    pairs = report.heads()
    by_local = sorted(pairs, key=lambda p: -report.value("locality", *p))
    by_dist = sorted(pairs, key=lambda p: -report.value("mean_distance", *p))
    by_sink = sorted(pairs, key=lambda p: -report.value("first_token_mass", *p))
    chosen = []
    for group in zip(by_local, by_dist, by_sink):
        for p in group:
            if p not in chosen and report.maps[p[0]] is not None:
                chosen.append(p)
    return chosen[:count]


def plot_heatmaps(report, heads, path):
    plt = _pyplot()
    heads = [p for p in heads if report.maps[p[0]] is not None]
    cols = min(3, max(1, len(heads)))
    rows = max(1, (len(heads) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (l, h) in zip(axes.flat, heads):
        ax.axis("on")
        # A square root stretch keeps faint off-diagonal structure visible next to strong sinks.
        ax.imshow(report.maps[l][h].sqrt().numpy(), cmap="magma", interpolation="nearest")
        ax.set_title(f"layer {l} head {h} ({report.classes[l][h]})", fontsize=9)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    fig.suptitle("attention probabilities (sqrt scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_layers(report, path):
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, metric, label in zip(axes, ("mean_distance", "locality", "entropy"),
                                 ("mean attention distance", f"locality (window {report.window})",
                                  "entropy (nats)")):
        means = []
        for l, m in enumerate(report.layers):
            values = m[metric].numpy()
            ax.scatter([l] * len(values), values, s=12, c=[CLASS_COLOURS[c] for c in report.classes[l]])
            means.append(values.mean())
        ax.plot(range(len(means)), means, color="black", lw=1, label="layer mean")
        ax.set_xlabel("layer")
        ax.set_title(label, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_head_map(report, path):
    plt = _pyplot()
    import numpy as np

    rows = report.num_layers
    cols = max(m["locality"].shape[0] for m in report.layers)
    codes = {"local": 0, "global": 1, "sink": 2}
    grid = np.full((rows, cols), np.nan)
    for l, row in enumerate(report.classes):
        for h, c in enumerate(row):
            grid[l, h] = codes[c]
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(1 + 0.55 * cols, 1 + 0.45 * rows))
    ax.imshow(grid, cmap=ListedColormap([CLASS_COLOURS[c] for c in codes]), vmin=0, vmax=2)
    for l in range(rows):
        for h in range(len(report.classes[l])):
            ax.text(h, l, f"{report.value('locality', l, h):.2f}", ha="center", va="center", fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"head classes (numbers: locality at window {report.window})", fontsize=9)
    ax.legend(handles=[Patch(color=CLASS_COLOURS[c], label=c) for c in codes], fontsize=7,
              bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_sinks(report, path, ranks: int = 64):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for l, m in enumerate(report.layers):
        scores = m["sink_scores"]
        n = min(ranks, scores.shape[1])
        ax.plot(range(n), scores[:, :n].mean(0).numpy(), label=f"layer {l}", lw=1)
    ax.set_xlabel("key position")
    ax.set_ylabel("mean attention received")
    ax.set_title("sink scores (averaged over heads)", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_report(report, directory, heads=None) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    heads = default_heads(report) if heads is None else list(heads)
    paths = [os.path.join(directory, n) for n in ("heatmaps.png", "layers.png", "head_classes.png", "sinks.png")]
    plot_heatmaps(report, heads, paths[0])
    plot_layers(report, paths[1])
    plot_head_map(report, paths[2])
    plot_sinks(report, paths[3])
    return paths
