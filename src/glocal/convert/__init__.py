"""Training-free conversion of full-attention heads to local (or local + global) attention.

``glocal.convert`` is this package and, called as ``glocal.convert(model, plan)``, converts in
place and returns the model (:func:`glocal.convert.apply.convert`); ``glocal.convert.restore(model)``
undoes it. A plan maps ``(layer, head)`` to a rule; heads not in the plan keep their attention:

- ``Local(window, sinks)``: the ``window`` tokens around each query plus the ``sinks`` positions;
- ``Hybrid(window, sinks, global_branch)``: the same plus mean-pooled blocks of ``global_branch``
  tokens, merged exactly (:mod:`glocal.convert.rules` defines both).

Modules: ``rules`` (the rule types and the attention they run, heads-last), ``apply`` (the
adapter for a model, plan validation, convert and restore), ``plan`` (``plan_from_report``),
``command`` (``glocal convert``).

Shapes:
    plan: {(layer, head): Local | Hybrid}; converted_attention: q, k, v [B, T, H, D] -> [B, T, H, D_v]

Example:
    >>> import glocal
    >>> rule = glocal.convert.Local(65, sinks=(0, -1))
    >>> rule.window, rule.sinks
    (65, (0, -1))
"""

import sys
import types

from .accelerate import accelerate
from .apply import adapter_for, convert, restore, validate_plan
from .plan import Plan, held_out_split, mean_cosine, mean_pooled, plan_from_report
from .rules import Hybrid, Local, converted_attention, converted_probs, local_mask

__all__ = ["Hybrid", "Local", "Plan", "accelerate", "adapter_for", "convert", "converted_attention", "converted_probs",
           "held_out_split", "local_mask", "mean_cosine", "mean_pooled", "plan_from_report", "restore", "validate_plan"]


class _ConvertModule(types.ModuleType):
    """``glocal.convert`` is this package and, called, :func:`glocal.convert.apply.convert`."""

    def __call__(self, model, plan: dict):
        return convert(model, plan)


sys.modules[__name__].__class__ = _ConvertModule
