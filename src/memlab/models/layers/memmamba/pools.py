"""The note pool's tensors: the slots of a pool, its part of a decoding cache, what a layer
offers the layers above it, and a pass's answer (see note_pool.py for how they are made)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memlab.models.layers.memmamba.chunk_layout import ChunkLayout


@dataclass
class PoolSlots:
    """The K + R slots of one pool per row: the K best notes (best first), then the R recent.

    summary: [B, K + R, summary_dim] model dtype.
    log_priority: [B, K + R] fp32 (fp64 for fp64 models), −inf at empty slots.
    valid: bool [B, K + R], which slots hold a note.
    recent_index: int64 [B, R], the chunk index of each recent note.
    """

    summary: torch.Tensor
    log_priority: torch.Tensor
    valid: torch.Tensor
    recent_index: torch.Tensor


@dataclass
class PoolState(PoolSlots):
    """The pool's part of a decoding cache, its size independent of the context length: the pool
    for the chunk the next token falls in, plus

    chunk_max: [B, D] model dtype, running max-pool of the unfinished chunk (−inf when empty).
    position: int64 [] on the device, tokens seen so far (a device value, so that a decoding
        step reads no host value).
    skip_notes: the host knows that the next decoding step's token does not end its chunk
        (``MemMamba.schedule_step``), so the step leaves the pool as it is; False: the step
        decides on the device.
    """

    chunk_max: torch.Tensor
    position: torch.Tensor
    skip_notes: bool = False


@dataclass
class PoolView:
    """What a MemMamba layer offers later layers for one pass: the pool each chunk reads.

    summary: [B, C, K + R, summary_dim]; log_priority: [B, C, K + R], −inf at empty slots. The
    chunks C are the pass's, the same in every layer (one ``chunk_size`` for the whole stack).
    """

    summary: torch.Tensor
    log_priority: torch.Tensor


@dataclass
class Pools:
    """The note pool's answer for one pass: its ``layout``, the pools of its chunks (``view``),
    which of their slots hold a note (``valid``, bool [B, C, K + R]) and the log-priorities of
    the pass's own notes (``note_priority``, [B, C])."""

    layout: ChunkLayout
    view: PoolView
    valid: torch.Tensor
    note_priority: torch.Tensor

    def stats(self) -> dict[str, torch.Tensor]:
        """pool_fill: the share of its pool's slots a token reads filled, over tokens; priority:
        the mean priority of the pass's notes."""
        with torch.no_grad():
            fill = self.valid.float().mean(-1)  # [B, C]
            return {
                "pool_fill": fill[:, self.layout.token_chunk].mean(),
                "priority": self.note_priority.float().exp().mean(),
            }
