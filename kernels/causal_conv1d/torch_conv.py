"""PyTorch twin of the causal depthwise conv1d: one ``F.conv1d`` over the whole batch.

Packed sequences get W−1 zeros spread in front of each of them, so that no tap reaches into
the previous sequence; the outputs are then read back at the real tokens. That is a few
passes over the data, where masking every tap would take several per tap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memlab.kernels.causal_conv1d.segments import segment_ids
from memlab.kernels.precision import compute_dtype


def causal_conv1d_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> torch.Tensor:
    """As ``causal_conv1d``: x [B, T, C], weight [C, W], bias [C] -> y [B, T, C] in x's dtype,
    computed in fp32 (fp64 for fp64 inputs)."""
    dtype = compute_dtype(x, weight)
    w = weight.to(dtype)[:, None]
    b = None if bias is None else bias.to(dtype)
    # in the compute dtype even under autocast, which would run conv1d in 16 bits
    with torch.autocast(x.device.type, enabled=False):
        y = _conv(x, w, b, cu_seqlens, dtype)
    return (F.silu(y) if activation == "silu" else y).to(x.dtype)


def _conv(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The pre-activations [B, T, C] in ``dtype``; w [C, 1, W] and b [C] already in it."""
    T, C = x.shape[1:]
    gap = w.shape[-1] - 1
    if cu_seqlens is None:
        y = F.conv1d(F.pad(x.to(dtype).transpose(1, 2), (gap, 0)), w, b, groups=C).transpose(1, 2)
    else:
        sequence = segment_ids(cu_seqlens, T, x.device)
        slot = torch.arange(T, device=x.device) + gap * (sequence + 1)  # token t in the spread stream
        spread = x.new_zeros(T + gap * (cu_seqlens.numel() - 1), C, dtype=dtype)
        spread = spread.index_copy(0, slot, x[0].to(dtype))
        y = F.conv1d(spread.T[None], w, b, groups=C)[0].T.index_select(0, slot - gap)[None]
    return y
