"""Read and reshape attention in real models: capture, metrics, reports, plots and steering.

Example:
    >>> import torch, glocal
    >>> from glocal.analysis import capture
    >>> q = k = v = torch.randn(1, 32, 2, 8)
    >>> with capture() as rec:
    ...     _ = glocal.na1d(q, k, v, kernel_size=7)
    >>> rec.report(window=7).classes[0]
    ['local', 'local']
"""

from . import capture  # the module, callable as capture(model, ...)
from .capture import AttentionCall, Recorder
from .report import Report
from .steering import (
           BoostRecent,
           RedistributeSinks,
           ReinforceHeads,
           ScaleKeys,
           ScoreMod,
           steer,
)

__all__ = ["AttentionCall", "BoostRecent", "Recorder", "RedistributeSinks", "ReinforceHeads", "Report",
           "ScaleKeys", "ScoreMod", "capture", "steer"]
