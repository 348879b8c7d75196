"""Packed documents: ``cu_seqlens`` (int [N + 1], offsets along T of N documents laid end to
end in one row, B == 1) as the mixers take it, checked and read once here."""

from __future__ import annotations

import torch

from memlab.kernels.gated_delta_rule.checks import sequence_bounds


def check_packed(mixer: str, batch_size: int, cu_seqlens: torch.Tensor | None, state: object) -> None:
    """Refuse packed input that a mixer cannot take: a batch of several rows, or a decoding
    state (a state continues one sequence per row; packing puts several in one)."""
    if cu_seqlens is None:
        return
    if state is not None:
        raise ValueError(f"{mixer}: decoding from a state is not supported for packed cu_seqlens input")
    if batch_size != 1:
        raise ValueError(f"{mixer}: cu_seqlens packs documents along T, so B must be 1, got {batch_size}")


def document_bounds(mixer: str, cu_seqlens: torch.Tensor, total: int) -> list[tuple[int, int]]:
    """The (start, end) of every document, empty ones included, read to the host (a device
    sync); ValueError unless cu_seqlens starts at 0, never decreases and ends at ``total``."""
    return sequence_bounds(mixer, cu_seqlens, total)


def document_positions(cu_seqlens: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(document id, position inside the document) of each packed token, each int64 [total];
    computed on the device, without a sync."""
    idx = torch.arange(total, device=cu_seqlens.device)
    doc = torch.searchsorted(cu_seqlens[1:].long(), idx, right=True)
    return doc, idx - cu_seqlens.long()[doc]
