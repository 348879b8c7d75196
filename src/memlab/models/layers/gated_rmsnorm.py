"""Gated RMSNorm on each head's output: y = RMSNorm(o) ⊙ silu(g), one weight per head-dim channel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedRMSNorm(nn.Module):
    """y = o / sqrt(mean(o²) + eps) · weight · silu(g), normalising over the last dim (a head's channels).

    Args:
        dim: the head dim; weight is [dim], initialised to ones, shared by all heads.
        eps: added to the mean square.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, o: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """o, gate: [..., dim] -> [..., dim] in o's dtype; computed in fp32 (or fp64) for bf16 safety."""
        dtype = torch.promote_types(o.dtype, torch.float32)
        o32 = o.to(dtype)
        normed = o32 * torch.rsqrt(o32.square().mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.to(dtype) * F.silu(gate.to(dtype))).to(o.dtype)
