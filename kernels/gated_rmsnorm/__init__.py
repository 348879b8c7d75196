"""Gated RMSNorm over the last dim: RMSNorm(o) ⊙ weight ⊙ silu(gate), the output norm of the
gated-delta-rule layers."""

from memlab.kernels.gated_rmsnorm.gated_rmsnorm import gated_rmsnorm
from memlab.kernels.gated_rmsnorm.torch_gated_rmsnorm import gated_rmsnorm_torch

__all__ = ["gated_rmsnorm", "gated_rmsnorm_torch"]
