"""PyTorch twin of the routed combine, which in float64 is also the reference: a gather and a
weighted sum, with nothing to reorder."""

from __future__ import annotations

import torch

from memlab.kernels.precision import compute_dtype


def combine_routed_torch(values: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """As ``combine_routed``: computed in fp32 (fp64 when an input is fp64), returned in values' dtype."""
    dtype = compute_dtype(values, weights)
    picked = values[index].to(dtype)  # [R, S, F]
    return (picked * weights.to(dtype)[..., None]).sum(1).to(values.dtype)
