"""Reference causal depthwise conv1d: every output a plain sum over its window, one time step
at a time. The ground truth the fast paths are tested against (call it in float64)."""

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
    y = torch.empty(B, T, C, dtype=dtype, device=x.device)
    for t in range(T):
        acc = torch.zeros(B, C, dtype=dtype, device=x.device) if bias is None else bias.to(dtype).expand(B, C)
        for s in range(min(W, t - int(start[t]) + 1)):
            acc = acc + w[:, W - 1 - s] * xs[:, t - s]
        y[:, t] = F.silu(acc) if activation == "silu" else acc
    return y.to(x.dtype)
