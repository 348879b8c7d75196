"""Weighted combine of routed outputs: each token's output is the weighted sum of the rows its
routing picked from a packed buffer (MoM's per-memory outputs back to their tokens)."""

from memlab.kernels.combine_routed.combine import combine_routed
from memlab.kernels.combine_routed.torch_combine import combine_routed_torch

__all__ = ["combine_routed", "combine_routed_torch"]
