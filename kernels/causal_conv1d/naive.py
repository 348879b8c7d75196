"""Reference causal depthwise conv1d: every output a plain sum over its window, tap after tap
(each tap's product taken for all time steps at once, so the loop is over the window, not over
time). The ground truth the fast paths are tested against (call it in float64)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memlab.kernels.causal_conv1d.segments import segment_starts
from memlab.kernels.precision import compute_dtype


def naive_causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> torch.Tensor:
    """y_t = act(bias + Σ_{s=0}^{W−1} weight[:, W−1−s] · x_{t−s}), the sum stopping at the start
    of t's sequence. x: [B, T, C]; weight: [C, W]; bias: [C]; cu_seqlens: int [N+1] (B == 1).

    Computes in the promoted dtype of the inputs, at least float32; returns y in x's dtype.
    Inputs are not validated; use ``causal_conv1d`` for that.
    """
    dtype = compute_dtype(x, weight)
    B, T, C = x.shape
    W = weight.shape[1]
    start = segment_starts(cu_seqlens, T, x.device)
    xs, w = x.to(dtype), weight.to(dtype)
    t = torch.arange(T, device=x.device)
    acc = torch.zeros(B, T, C, dtype=dtype, device=x.device)
    if bias is not None:
        acc = acc + bias.to(dtype)
    for s in range(W):
        inside = (t - s >= start)[None, :, None]  # x_{t−s} belongs to t's sequence
        shifted = F.pad(xs, (0, 0, s, 0))[:, :T]  # x_{t−s}
        acc = acc + torch.where(inside, w[:, W - 1 - s] * shifted, 0.0)
    y = F.silu(acc) if activation == "silu" else acc
    return y.to(x.dtype)
