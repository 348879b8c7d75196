"""Packed documents: ``cu_seqlens`` (int [N + 1], offsets along T of N documents laid end to
end in one row, B == 1) as the mixers take it, checked and read once here."""

from __future__ import annotations

import weakref

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


class DocumentRows:
    """Packed documents (cu_seqlens int [N+1] over x [1, T, ...]) as a batch of N rows padded
    at the end to the longest document, for layers that run documents as rows: MoM's padded
    layout, attention. Sizing the rows reads cu_seqlens on the host (a device sync);
    ``document_rows`` does that once per cu_seqlens tensor.

    doc, position: int64 [T], each token's row and place in it; mask: bool [N, L], the real
    places; shape: (N, L).
    """

    def __init__(self, mixer: str, cu_seqlens: torch.Tensor, total: int, device: torch.device) -> None:
        bounds = document_bounds(mixer, cu_seqlens, total)
        self.shape = (len(bounds), max([end - start for start, end in bounds], default=0))
        self.doc, self.position = document_positions(cu_seqlens.to(device), total)
        mask = torch.zeros(self.shape, dtype=torch.bool, device=device)
        self.mask = mask.index_put((self.doc, self.position), torch.ones_like(self.doc, dtype=torch.bool))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """[1, T, *F] -> [N, L, *F], zeros after each document's end."""
        return x.new_zeros(*self.shape, *x.shape[2:]).index_put((self.doc, self.position), x[0])

    def unpad(self, rows: torch.Tensor) -> torch.Tensor:
        """[N, L, *F] -> [1, T, *F]."""
        return rows[self.doc, self.position][None]


_last_rows: tuple[weakref.ref, int, int, torch.device, DocumentRows] | None = None


def document_rows(mixer: str, cu_seqlens: torch.Tensor, x: torch.Tensor) -> DocumentRows:
    """``DocumentRows`` of cu_seqlens for x [1, T, ...]: the layers of one forward pass receive
    the same cu_seqlens tensor, so the rows (and the host read) are made once and reused while
    that tensor lives unchanged."""
    global _last_rows
    key = (cu_seqlens._version, x.shape[1], x.device)
    if _last_rows is not None and _last_rows[0]() is cu_seqlens and _last_rows[1:4] == key:
        return _last_rows[4]
    rows = DocumentRows(mixer, cu_seqlens, x.shape[1], x.device)
    _last_rows = (weakref.ref(cu_seqlens), *key, rows)
    return rows
