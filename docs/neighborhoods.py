"""Draw docs/neighborhoods.png: the keys chosen queries attend on a 2-D grid, read off glocal.dense_mask.

Run: python docs/neighborhoods.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import glocal  # noqa: E402

GRID = (12, 12)
PANELS = [
    ("plain, K=5", dict(kernel_size=5)),
    ("dilated, K=3, d=3", dict(kernel_size=3, dilation=3)),
    ("causal, K=5", dict(kernel_size=5, is_causal=True)),
    ("strided, K=5, s=3", dict(kernel_size=5, stride=3)),
]
QUERIES = [(5, 5), (0, 11), (10, 1)]  # a centre query and two at borders
COLOURS = np.array([[0.16, 0.44, 0.71], [0.85, 0.37, 0.01], [0.20, 0.63, 0.17]])


def draw(path: Path) -> None:
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 4.3))
    for ax, (title, args) in zip(axes, PANELS):
        spec = glocal.make_neighborhood_spec(GRID, **args)
        mask = glocal.dense_mask(spec).numpy()
        image = np.ones(GRID + (3,))
        for colour, (x, y) in zip(COLOURS, QUERIES):
            keys = mask[x * GRID[1] + y].reshape(GRID)
            image[keys] = 0.55 * image[keys] + 0.45 * colour
            image[x, y] = colour
        ax.imshow(image, interpolation="nearest")
        ax.set_xticks(np.arange(-0.5, GRID[1], 1), minor=True)
        ax.set_yticks(np.arange(-0.5, GRID[0], 1), minor=True)
        ax.grid(which="minor", color="0.8", linewidth=0.5)
        ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
        ax.set_title(title)
    fig.suptitle("Keys attended by three queries (solid) on a 12x12 grid, from glocal.dense_mask")
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    draw(Path(__file__).with_name("neighborhoods.png"))
