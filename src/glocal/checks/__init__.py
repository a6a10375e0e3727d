"""Validation of user arguments: a shared base plus one module per family; everything is re-exported here.

Every message states the rule, the values that broke it and the fix. Checks
raise ``ValueError`` for bad values and ``TypeError`` for bad types; they never
modify their inputs. Kernels assume these checks passed.

Example:
    >>> from glocal import checks
    >>> checks.per_axis("kernel_size", 3, 2, int)
    (3, 3)
"""

from .analysis import (  # noqa: F401
    capture_args,
    report_clip,
    report_window,
    steering_converted_layer,
    steering_factor,
)
from .base import (  # noqa: F401
    _FLOAT_DTYPES,
    ATTENTION_PATTERNS,
    backend_name,
    causal_flag,
    choice,
    float_dtype,
    heads_and_dims,
    is_tensor,
    pattern_name,
    pattern_supported,
    per_axis,
    same_dtype_device,
    scale,
)
from .block_sparse import (  # noqa: F401
    block_means,
    block_shape,
    block_size,
    moba_grid_tensors,
    moba_tensors,
    routing,
)
from .convert import (  # noqa: F401
    accelerate_target,
    conversion_rule,
    plan_avoids_accelerated,
    plan_quality,
    plan_split,
    plan_targets,
)
from .dense import merge_inputs, sequence_tensors  # noqa: F401
from .global_tokens import (  # noqa: F401
    channel_tensors,
    global_queries,
    global_tokens,
    grid_tensors,
    reduction,
)
from .hybrid import (  # noqa: F401
    head_branches,
    hybrid_branch,
    positive_int,
    rope_dims,
    schedule_pattern,
    schedule_settings,
    window_border,
    window_sinks,
)
from .linear import (  # noqa: F401
    chunk_size,
    feature_map,
    l2vit_args,
    linear_inputs,
    linear_state,
    nonempty_keys,
    step_tensors,
)
from .local_linear import (  # noqa: F401
    local_linear_tensors,
    module_positions,
    ridge,
    rope_head_dim,
    rope_theta,
    window_size,
)
from .modules import module_dims, module_global_tokens, module_input  # noqa: F401
from .moh import MOH_ROUTERS, moh_args  # noqa: F401
from .neighborhood import (  # noqa: F401
    additional_kv,
    neighborhood_args,
    neighborhood_tensors,
    window_args,
)
from .rat import rat_gate_range, rat_module_args, rat_tensors  # noqa: F401
from .routed_layer import (  # noqa: F401
    routed_cache,
    routed_force,
    routed_layer_args,
    routed_sequence,
    sparsity_target,
)
