"""The result of ``rec.report(window=w)``: per-layer, per-head metrics, head classes, JSON and plots.

Shapes:
    report.layers[l][metric]: tensor [H] (per-head scalars) or [H, R] (per key rank: sink_scores,
    future_attention_influence); report.classes[l][h] in {"local", "global", "sink"}

Example:
    >>> import torch, glocal
    >>> from glocal.analysis import capture
    >>> q = k = v = torch.randn(1, 40, 2, 8)
    >>> with capture(None) as rec:
    ...     _ = glocal.na1d(q, k, v, kernel_size=5)
    >>> report = rec.report(window=5)
    >>> report.classes[0]
    ['local', 'local']
    >>> '"locality"' in report.to_json()
    True
"""

from __future__ import annotations

import json

import torch

from . import plots

SCALARS = ("mean_distance", "waad", "entropy", "locality", "locality_with_sinks", "first_token_mass",
           "last_token_mass")


def classify(m: dict, sink_threshold: float, local_threshold: float) -> list[str]:
    """Class per head: "sink" if one key (first, last, or any rank) takes on average >= sink_threshold
    of the attention; else "local" if locality >= local_threshold; else "global"."""
    sink = torch.maximum(torch.maximum(m["first_token_mass"], m["last_token_mass"]),
                         m["sink_scores"].amax(-1) if m["sink_scores"].numel() else m["first_token_mass"])
    out = []
    for h in range(sink.shape[0]):
        if sink[h] >= sink_threshold:
            out.append("sink")
        elif m["locality"][h] >= local_threshold:
            out.append("local")
        else:
            out.append("global")
    return out


class Report:
    """Per-layer, per-head attention metrics (definitions in docs/analysis.md)."""

    def __init__(self, names, layers, maps, window, waad_clip, sink_threshold=0.5, local_threshold=0.6,
                 secondary_threshold=0.1, tokens=None):
        self.names = list(names)
        self.layers = layers
        self.maps = maps
        self.window = window
        self.waad_clip = waad_clip
        self.sink_threshold = sink_threshold
        self.local_threshold = local_threshold
        self.secondary_threshold = secondary_threshold
        self.tokens = tokens
        self.classes = [classify(m, sink_threshold, local_threshold) for m in layers]

    @classmethod
    def from_stats(cls, stats, window, waad_clip, **kwargs):
        return cls([s.name for s in stats], [s.summary() for s in stats], [s.maps[0] if s.maps else None
                   for s in stats], window, waad_clip, **kwargs)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def heads(self):
        """All (layer, head) pairs."""
        return [(l, h) for l, m in enumerate(self.layers) for h in range(m["locality"].shape[0])]

    def value(self, metric: str, layer: int, head: int) -> float:
        return float(self.layers[layer][metric][head])

    def secondary_sinks(self, layer: int, head: int) -> list[tuple[int, float]]:
        """(rank, score) of keys other than the first whose sink score is >= secondary_threshold."""
        scores = self.layers[layer]["sink_scores"][head]
        return [(r, float(scores[r])) for r in range(1, scores.shape[0]) if scores[r] >= self.secondary_threshold]

    def to_dict(self) -> dict:
        layers = []
        for l, m in enumerate(self.layers):
            heads = []
            for h in range(m["locality"].shape[0]):
                entry = {"head": h, "class": self.classes[l][h]}
                entry.update({k: round(float(m[k][h]), 6) for k in SCALARS})
                entry["secondary_sinks"] = [[r, round(s, 6)] for r, s in self.secondary_sinks(l, h)]
                entry["sink_scores"] = [round(float(x), 6) for x in m["sink_scores"][h]]
                entry["future_attention_influence"] = [round(float(x), 6) for x in m["future_attention_influence"][h]]
                heads.append(entry)
            layers.append({"name": self.names[l], "heads": heads})
        counts = {c: sum(row.count(c) for row in self.classes) for c in ("local", "global", "sink")}
        return {"window": self.window, "waad_clip": self.waad_clip,
                "thresholds": {"sink": self.sink_threshold, "local": self.local_threshold,
                               "secondary_sink": self.secondary_threshold},
                "class_counts": counts, "tokens": self.tokens, "layers": layers}

    def to_json(self, path=None) -> str:
        """JSON text of :meth:`to_dict`; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    def plot(self, directory, heads=None) -> list[str]:
        """Write heatmaps.png, layers.png, head_classes.png and sinks.png into ``directory``; returns the paths."""
        return plots.plot_report(self, directory, heads)

    def __repr__(self):
        counts = self.to_dict()["class_counts"]
        return f"Report({self.num_layers} layers, window={self.window}, classes={counts})"
