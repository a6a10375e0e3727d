"""Validation of user arguments: a shared base plus one module per family; everything is re-exported here.

Every message states the rule, the values that broke it and the fix. Checks
raise ``ValueError`` for bad values and ``TypeError`` for bad types; they never
modify their inputs. Kernels assume these checks passed.

Example:
    >>> from glocal import checks
    >>> checks.per_axis("kernel_size", 3, 2, int)
    (3, 3)
"""

from .base import _FLOAT_DTYPES, per_axis, is_tensor, float_dtype, same_dtype_device, scale, heads_and_dims, causal_flag, backend_name, choice, ATTENTION_PATTERNS, pattern_name, pattern_supported  # noqa: F401
from .neighborhood import window_args, neighborhood_args, neighborhood_tensors, additional_kv  # noqa: F401
from .dense import sequence_tensors, merge_inputs  # noqa: F401
from .linear import feature_map, chunk_size, linear_state, step_tensors, l2vit_args, nonempty_keys  # noqa: F401
from .global_tokens import grid_tensors, reduction, global_tokens, channel_tensors, global_queries  # noqa: F401
from .modules import module_dims, module_input, module_global_tokens  # noqa: F401
from .analysis import capture_args, report_window, report_clip, steering_converted_layer, steering_factor  # noqa: F401
from .convert import conversion_rule, plan_targets  # noqa: F401
