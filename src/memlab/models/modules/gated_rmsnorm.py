"""Gated RMSNorm on each head's output: y = RMSNorm(o) ⊙ silu(g), one weight per head-dim channel."""

from __future__ import annotations

import torch
from torch import nn

from memlab.kernels.gated_rmsnorm import gated_rmsnorm


class GatedRMSNorm(nn.Module):
    """y = o / sqrt(mean(o²) + eps) · weight · silu(g), normalising over the last dim (a head's channels).

    Args:
        dim: the head dim; weight is [dim], initialised to ones, shared by all heads.
        eps: added to the mean square.
        backend: kernel backend (see ``gated_rmsnorm``).
    """

    def __init__(self, dim: int, eps: float = 1e-5, backend: str | None = None) -> None:
        super().__init__()
        self.eps, self.backend = eps, backend
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, o: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """o, gate: [..., dim] -> [..., dim] in o's dtype; computed in fp32 (or fp64) for bf16 safety."""
        return gated_rmsnorm(o, gate, self.weight, self.eps, backend=self.backend)
