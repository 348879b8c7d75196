"""Packing tokenized documents into fixed windows of seq_len + 1 tokens, and windows into batches."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

import numpy as np
import torch


class Packer:
    """Concatenates documents (each followed by end-of-text) and cuts consecutive, non-overlapping
    runs of ``size`` tokens; every token lands in exactly one run, in order.

    Documents are fed with a ``key`` (where the document sits in its stream); ``position()``
    says where the first token not yet emitted lives: ``(key of its document, offset inside
    that document)``, which is all a resumed stream needs to rebuild the carry-over exactly.
    """

    def __init__(self, size: int, eos_id: int) -> None:
        self.size = int(size)
        self.eos = np.array([eos_id], dtype=np.int32)
        self._pieces: deque[tuple[Hashable, np.ndarray]] = deque()
        self._offset = 0  # tokens of the first piece already emitted
        self._buffered = 0  # tokens held, not yet emitted

    def add(self, key: Hashable, tokens: np.ndarray, offset: int = 0) -> None:
        """Append a document's tokens + end-of-text; the first ``offset`` of them were already emitted
        (a resumed stream re-adds the document it stopped in)."""
        doc = np.concatenate([tokens.astype(np.int32, copy=False), self.eos])
        if not self._pieces:
            self._offset = min(int(offset), len(doc))
        elif offset:
            raise ValueError("Packer.add: only the first document may start at an offset")
        self._pieces.append((key, doc))
        self._buffered += len(doc) - (self._offset if len(self._pieces) == 1 else 0)

    def ready(self) -> bool:
        return self._buffered >= self.size

    def take(self) -> np.ndarray:
        """The next run: int32 [size]. Requires ``ready()``."""
        if not self.ready():
            raise ValueError("Packer.take: fewer than size tokens buffered")
        out = np.empty(self.size, dtype=np.int32)
        filled = 0
        while filled < self.size:
            _, doc = self._pieces[0]
            n = min(self.size - filled, len(doc) - self._offset)
            out[filled : filled + n] = doc[self._offset : self._offset + n]
            filled += n
            self._offset += n
            # Keep a spent first piece while it is the only one, so position() stays defined.
            if self._offset == len(doc) and len(self._pieces) > 1:
                self._pieces.popleft()
                self._offset = 0
        self._buffered -= self.size
        return out

    def position(self) -> tuple[Hashable, int] | None:
        """(key, offset) of the first token not yet emitted; None before any document."""
        if not self._pieces:
            return None
        return self._pieces[0][0], self._offset

    def leftover(self) -> np.ndarray:
        """The buffered tokens not yet emitted (fewer than ``size``), in order."""
        parts = [doc for _, doc in self._pieces]
        return np.concatenate(parts)[self._offset :] if parts else np.empty(0, dtype=np.int32)


def collate_windows(windows: np.ndarray, eos_id: int, cu_seqlens: bool) -> dict[str, torch.Tensor]:
    """windows int32 [B, T + 1] -> ``input_ids`` / ``labels`` int64 [B, T] (labels = inputs shifted).

    With ``cu_seqlens`` the batch is packed along time instead: [1, B·T] plus ``cu_seqlens``
    int32 [N + 1], the starts of every window and of every document (a token right after an
    end-of-text) and the total, so the model resets its state there.
    """
    tokens = torch.from_numpy(np.ascontiguousarray(windows)).long()
    input_ids, labels = tokens[:, :-1], tokens[:, 1:]
    if not cu_seqlens:
        return {"input_ids": input_ids.contiguous(), "labels": labels.contiguous()}
    B, T = input_ids.shape
    starts = torch.zeros(B, T, dtype=torch.bool)
    starts[:, 0] = True
    starts[:, 1:] = input_ids[:, :-1] == eos_id
    bounds = torch.nonzero(starts.reshape(-1)).squeeze(1)
    cu = torch.cat([bounds, torch.tensor([B * T])]).to(torch.int32)
    return {"input_ids": input_ids.reshape(1, B * T), "labels": labels.reshape(1, B * T), "cu_seqlens": cu}
