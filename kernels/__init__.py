"""memlab.kernels: the hot ops, each a Triton kernel with a plain PyTorch twin.

Public API (names and conventions of the linear-attention and Mamba ecosystems):
``chunk_gated_delta_rule``, ``fused_recurrent_gated_delta_rule``, ``gated_delta_rule_step``,
``selective_scan``, ``selective_state_update``, ``causal_conv1d``, ``causal_conv1d_update``,
``l2norm``, ``gated_rmsnorm``, ``combine_routed``, ``topk_route``. Every op takes
``backend="auto" | "triton" | "torch"``.
"""

from memlab.kernels.backend import KernelInputError, resolve_backend
from memlab.kernels.causal_conv1d import causal_conv1d, causal_conv1d_update
from memlab.kernels.combine_routed import combine_routed
from memlab.kernels.gated_delta_rule import (
    chunk_gated_delta_rule,
    fused_recurrent_gated_delta_rule,
    gated_delta_rule_step,
)
from memlab.kernels.gated_rmsnorm import gated_rmsnorm
from memlab.kernels.l2norm import l2norm
from memlab.kernels.selective_scan import selective_scan, selective_state_update
from memlab.kernels.topk_route import topk_route

__all__ = [
    "KernelInputError",
    "causal_conv1d",
    "causal_conv1d_update",
    "chunk_gated_delta_rule",
    "combine_routed",
    "fused_recurrent_gated_delta_rule",
    "gated_delta_rule_step",
    "gated_rmsnorm",
    "l2norm",
    "resolve_backend",
    "selective_scan",
    "selective_state_update",
    "topk_route",
]
