"""Old import path of the neighborhood and dense ops (``glocal.functional.na2d`` ...); they live in ``glocal.ops``.

Example:
    >>> import glocal.functional as F
    >>> F.na2d is __import__("glocal").na2d
    True
"""

from .ops.dense import attention, merge_attentions  # noqa: F401
from .ops.neighborhood import na1d, na2d, na3d, neighborhood_attention  # noqa: F401
