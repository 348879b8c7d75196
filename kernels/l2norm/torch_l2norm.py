"""PyTorch twin of the L2 norm, which in float64 is also the reference: a row-wise formula
with nothing to reorder."""

from __future__ import annotations

import torch

from memlab.kernels.precision import compute_dtype

EPS = 1e-6


def l2norm_torch(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """x / sqrt(sum(x²) + eps) over the last dim, in x's dtype; eps keeps all-zero rows finite.

    The sum runs in fp32 (or fp64) and the result is cast back explicitly: CUDA autocast runs
    ``sum`` in fp32, and a bf16 x times an fp32 norm would otherwise come out fp32 while v
    stays bf16, a dtype mix the Triton kernels cannot compile.
    """
    wide = x.to(compute_dtype(x))
    return (wide * torch.rsqrt(wide.square().sum(-1, keepdim=True) + eps)).to(x.dtype)
