"""Where each token's sequence starts, for sequences packed along one time axis."""

from __future__ import annotations

import torch


def segment_starts(cu_seqlens: torch.Tensor | None, T: int, device: torch.device) -> torch.Tensor:
    """int64 [T]: the first token of each token's sequence (all 0 without cu_seqlens).

    cu_seqlens: int [N+1] offsets; empty sequences (equal neighbours) are allowed. Computed on
    the device, without reading cu_seqlens back to the host.
    """
    if cu_seqlens is None:
        return torch.zeros(T, dtype=torch.long, device=device)
    bounds = cu_seqlens.to(device=device, dtype=torch.long)
    tokens = torch.arange(T, device=device)
    return bounds[torch.searchsorted(bounds, tokens, right=True) - 1]
