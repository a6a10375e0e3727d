"""Context parallelism over torch.distributed: attention on inputs sharded across ranks.

Each rank holds a piece of the tokens; the ops exchange only what the attention needs:
``neighborhood_attention`` the halo rows of keys and values around its slab, ``ring_attention``
key/value blocks around a ring merged by lse (causal load-balanced by the zigzag layout),
``linear_attention`` one fixed-size state per rank. Outputs and gradients are each rank's part of
the single-process op's. ``shard`` / ``gather`` cut and join tensors, ``wrap`` runs glocal's
attention modules sharded, ``traffic`` records the bytes sent and the time spent. Works on any
torch.distributed backend: gloo on CPUs, NCCL on GPUs (launch with ``torchrun``); see
docs/distributed.md.

Shapes: as the single-device ops, with the sharded axis holding this rank's piece.

Example (4 processes, e.g. ``torchrun --nproc-per-node 4 script.py``):
    >>> import torch, torch.distributed as dist, glocal.distributed as gd  # doctest: +SKIP
    >>> dist.init_process_group("gloo")                                    # doctest: +SKIP
    >>> torch.manual_seed(0); x = torch.randn(1, 256, 256, 4, 32)          # the same on every rank  # doctest: +SKIP
    >>> out = gd.neighborhood_attention(*(gd.shard(x, 1),) * 3, kernel_size=7)  # [1, 64, 256, 4, 32]  # doctest: +SKIP
"""

from .comm import Traffic, traffic
from .halo import neighborhood_attention
from .linear import linear_attention
from .modules import ShardedAttention, wrap
from .ring import ring_attention
from .sharding import gather, shard

__all__ = ["ShardedAttention", "Traffic", "gather", "linear_attention", "neighborhood_attention", "ring_attention",
           "shard", "traffic", "wrap"]
