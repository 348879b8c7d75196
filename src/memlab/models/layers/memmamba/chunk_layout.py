"""How one forward pass of MemMamba falls into chunks of w tokens, and the [C, W] grid that
holds each chunk's tokens in a row.

Positions are cut into chunks of w consecutive tokens, counted from the first token of each
document; chunk c leaves one note. A pass may begin inside a chunk (a prefill piece or a
decoding step continuing a state) and may hold several documents (packed ``cu_seqlens``). The
layout says which chunk each token falls in and which chunks each chunk's pool may hold.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChunkLayout:
    """How the T tokens of one forward pass fall into chunks; shared by every row of the batch.

    width: W <= min(w, T), the most tokens of one chunk in this pass: the width of the
        [C, W] grid that ``group_by_chunk`` lays the tokens out in (1 for a decoding step,
        whose chunk would otherwise cost w rows of attention).
    token_flat: int64 [T], the token's cell ``chunk · W + slot`` in that grid, where slot
        counts the chunk's tokens in this pass (0..W−1).
    token_chunk: int64 [T], the chunk (0..C−1) of each token.
    chunk_index: int64 [C], each chunk's index within its document (its first position // w).
    complete: bool [C], the chunk holds all its w tokens by the end of this pass.
    query_index: int64 [C + 1], the chunk index each pool is for: row q < C is chunk q's, row
        C is the pool after this pass, the one a decoding state keeps (for the chunk the next
        token falls in).
    older: bool [C + 1, C], older[q, j]: chunk j may enter the K-best part of pool q (complete,
        of the same document, and before q's FIFO window).
    recent: bool [C + 1, C], recent[q, j]: chunk j is in pool q's FIFO window (complete, of the
        same document, among the ``recent_slots`` chunks just before q).
    dense: every cell of the grid holds a token, in time order (token_flat is 0..T−1): the
        grid is then a view of the tokens, which ``group_by_chunk`` and ``ungroup`` need not
        copy (a training pass whose documents are whole chunks).
    """

    width: int
    token_flat: torch.Tensor
    token_chunk: torch.Tensor
    chunk_index: torch.Tensor
    complete: torch.Tensor
    query_index: torch.Tensor
    older: torch.Tensor
    recent: torch.Tensor
    dense: bool

    @property
    def num_chunks(self) -> int:
        return self.chunk_index.shape[0]


# Host code that torch.compile calls as it is (a graph break around it): traced, dynamo would drop
# the lru_cache, rebuild the layout as graph code every pass, and fail on ``pin_memory`` (no fake
# tensor op).
@torch.compiler.disable
def chunk_layout(
    chunk_size: int,
    segments: list[tuple[int, int, int]],
    recent_slots: int = 0,
    device: torch.device | None = None,
) -> ChunkLayout:
    """The layout of one pass over documents given as ``(start, end, position)`` triples: tokens
    [start, end) of the pass belong to one document and the first of them sits at ``position``
    within it (> 0 when a decoding state already holds the document's beginning). Segments must
    be non-empty and cover the pass in order. ``recent_slots``: R, the FIFO length.

    The layout is a function of these host-side integers alone. It is built on the CPU, moved to
    ``device`` without blocking (from pinned memory), and cached: a training step sees the same
    layout every time, so after the first step it costs neither work nor a host-device sync.
    """
    key = tuple((int(start), int(end), int(position)) for start, end, position in segments)
    w, R, device = int(chunk_size), int(recent_slots), torch.device(device or "cpu")
    if len(key) == 1 and key[0][2] >= w:
        # A pass that continues one document (a prefill piece, a decoding step) differs from the
        # pass at the same place within a chunk only in its absolute chunk indices, by whole
        # chunks: it reuses that layout, so decoding meets w layouts in all, not one per token.
        ((start, end, position),) = key
        base = _cached_layout(w, ((start, end, position % w),), R, device)
        shift = position // w
        return dataclasses.replace(
            base, chunk_index=base.chunk_index + shift, query_index=base.query_index + shift
        )
    return _cached_layout(w, key, R, device)


def step_layout(chunk_size: int, recent_slots: int, position: torch.Tensor) -> ChunkLayout:
    """``chunk_layout`` of a decoding step: one token at ``position`` (int64 [] on the device) of
    one document, built by device ops from that tensor, so that the step reads no host value
    and can be replayed from a CUDA graph."""
    w, R = chunk_size, recent_slots
    index = (position // w).reshape(1)
    done = ((position + 1) % w == 0).reshape(1)
    query_index = torch.cat([index, index + done.long()])
    earlier = done[None, :] & (index[None, :] < query_index[:, None])  # [2, 1]
    older = earlier & (index[None, :] < query_index[:, None] - R)
    zero = torch.zeros(1, dtype=torch.long, device=position.device)
    return ChunkLayout(
        width=1,
        token_flat=zero,
        token_chunk=zero,
        chunk_index=index,
        complete=done,
        query_index=query_index,
        older=older,
        recent=earlier & ~older,
        dense=True,
    )


@functools.lru_cache(maxsize=64)
def _cached_layout(
    chunk_size: int, segments: tuple[tuple[int, int, int], ...], recent_slots: int, device: torch.device
) -> ChunkLayout:
    # Cached tensors outlive the call: made in inference mode (Lightning's evaluation loops),
    # they could not be used by a later training step.
    with torch.inference_mode(False):
        layout = _build_layout(chunk_size, segments, recent_slots)
        if device.type == "cpu":
            return layout
        # A plain copy from pageable memory would wait for the device to drain: a sync per layer.
        fields = {
            name: getattr(layout, name).pin_memory().to(device, non_blocking=True)
            for name in (
                "token_flat",
                "token_chunk",
                "chunk_index",
                "complete",
                "query_index",
                "older",
                "recent",
            )
        }
        return ChunkLayout(width=layout.width, dense=layout.dense, **fields)


def _build_layout(
    chunk_size: int, segments: tuple[tuple[int, int, int], ...], recent_slots: int
) -> ChunkLayout:
    """``chunk_layout`` on the CPU."""
    w = chunk_size
    token_chunk, token_slot, chunk_index, chunk_doc, complete = [], [], [], [], []
    first_chunk = 0
    for doc, (start, end, position) in enumerate(segments):
        pos = torch.arange(position, position + end - start)
        first = position // w
        count = (position + end - start - 1) // w - first + 1
        index = torch.arange(first, first + count)
        token_chunk.append(first_chunk + pos // w - first)
        # The first chunk may have begun before this pass: its slots count from `position`.
        token_slot.append(pos % w - torch.where(pos // w == first, position % w, 0))
        chunk_index.append(index)
        chunk_doc.append(torch.full((count,), doc))
        complete.append((index + 1) * w <= position + end - start)
        first_chunk += count
    chunk = torch.cat(token_chunk)
    width = int(torch.bincount(chunk).max())
    token_flat = chunk * width + torch.cat(token_slot)
    index, docs, done = torch.cat(chunk_index), torch.cat(chunk_doc), torch.cat(complete)
    # The row after the pass continues the last document, in the next chunk if this one is done.
    query_doc = torch.cat([docs, docs[-1:]])
    query_index = torch.cat([index, index[-1:] + int(done[-1])])
    before = index[None, :] < query_index[:, None]
    earlier = done[None, :] & (query_doc[:, None] == docs[None, :]) & before
    older = earlier & (index[None, :] < query_index[:, None] - recent_slots)
    return ChunkLayout(
        width=width,
        token_flat=token_flat,
        token_chunk=chunk,
        chunk_index=index,
        complete=done,
        query_index=query_index,
        older=older,
        recent=earlier & ~older,
        dense=token_flat.numel() == index.numel() * width
        and bool((token_flat == torch.arange(token_flat.numel())).all()),
    )


def group_by_chunk(x: torch.Tensor, layout: ChunkLayout, fill: float) -> torch.Tensor:
    """x [B, T, F] -> [B, C, W, F]: each token in its chunk's row at its slot, ``fill`` elsewhere."""
    B, _, F = x.shape
    C, W = layout.num_chunks, layout.width
    if layout.dense:
        return x.reshape(B, C, W, F)
    grid = x.new_full((B, C * W, F), fill).index_copy(1, layout.token_flat, x)
    return grid.view(B, C, W, F)


def ungroup(y: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    """The inverse of ``group_by_chunk``: y [B, C, W, ...] -> [B, T, ...] (the fill is dropped)."""
    B, C, W = y.shape[:3]
    if layout.dense:
        return y.reshape(B, C * W, *y.shape[3:])
    return y.reshape(B, C * W, *y.shape[3:]).index_select(1, layout.token_flat)
