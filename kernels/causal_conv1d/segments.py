"""Which sequence each token belongs to, and where it starts, for sequences packed along one
time axis. Computed on the device, without reading cu_seqlens back to the host."""

from __future__ import annotations

import torch


def segment_ids(cu_seqlens: torch.Tensor, T: int, device: torch.device) -> torch.Tensor:
    """int64 [T]: the index of each token's sequence in cu_seqlens (int [N+1] offsets; empty
    sequences, equal neighbours, are allowed and hold no token)."""
    bounds = cu_seqlens.to(device=device, dtype=torch.long)
    return torch.searchsorted(bounds, torch.arange(T, device=device), right=True) - 1


def segment_starts(cu_seqlens: torch.Tensor | None, T: int, device: torch.device) -> torch.Tensor:
    """int64 [T]: the first token of each token's sequence (all 0 without cu_seqlens)."""
    if cu_seqlens is None:
        return torch.zeros(T, dtype=torch.long, device=device)
    return cu_seqlens.to(device=device, dtype=torch.long)[segment_ids(cu_seqlens, T, device)]
