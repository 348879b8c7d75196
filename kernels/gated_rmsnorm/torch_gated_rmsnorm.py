"""PyTorch twin of the gated RMSNorm, which in float64 is also the reference: a row-wise
formula with nothing to reorder."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memlab.kernels.precision import compute_dtype


def gated_rmsnorm_torch(
    o: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """As ``gated_rmsnorm``: computed in fp32 (fp64 when an input is fp64), returned in o's dtype."""
    dtype = compute_dtype(o, weight)
    wide = o.to(dtype)
    normed = wide * torch.rsqrt(wide.square().mean(-1, keepdim=True) + eps)
    return (normed * weight.to(dtype) * F.silu(gate.to(dtype))).to(o.dtype)
