"""MemMamba's note pool: chunk notes and the causal top-K pool every token reads.

Chunk c of a document leaves one note (a summary and a priority). A token in chunk c reads the
*pool of chunk c*: the K highest-priority notes among the complete chunks < c of its document,
so nothing of the current or a later chunk reaches it. With R ``recent_slots`` the pool also
holds the notes of the R chunks just before c (a FIFO), and the K-best part is then drawn from
the chunks before those.

Sequentially, the pool is kept by insert-if-better, evict-the-minimum as chunks complete (or,
with a FIFO, as they leave it). Notes are ranked by (priority descending, older first): a new
note enters a full pool iff its priority is strictly above the pool's minimum, and it evicts the
youngest of the minimum-priority notes. Here every chunk's pool is computed at once: the
candidates (the pool carried in from before the pass, then this pass's chunks, in age order)
are sorted stably by priority under a [chunks, candidates] mask and the first K kept. Since the
top K of (top K of A) ∪ B is the top K of A ∪ B, a prefill in pieces and token-by-token decoding
select exactly the pools a single forward pass does, ties included. A pass with nothing before
it carries in the empty pool, so that all three run the same selection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from memlab.models.layers.memmamba.chunk_layout import ChunkLayout, chunk_layout, group_by_chunk, step_layout
from memlab.models.layers.memmamba.config import MemMambaConfig
from memlab.models.layers.memmamba.pools import Pools, PoolSlots, PoolState, PoolView
from memlab.models.modules.varlen import check_packed, document_bounds

# Priority of a chunk outside the positional schedule's window (inside: 1).
_OFF_SCHEDULE_PRIORITY = 0.5


class NotePool(nn.Module):
    """Notes of the chunks of x and the pool each chunk reads, for a training pass, a prefill
    and a decoding step alike.

    Parameters: summary_proj [S, D], summary_norm [S], and with the learned scorer
    scorer [1, D] + bias (S = summary_dim).
    """

    def __init__(self, d_model: int, config: MemMambaConfig) -> None:
        super().__init__()
        self.chunk_size, self.pool_size = config.chunk_size, config.pool_size
        self.recent_slots, self.summary_dim = config.recent_slots, config.summary_dim
        self.note_period, self.note_window = config.note_period, config.note_window
        self.summary_proj = nn.Linear(d_model, config.summary_dim, bias=False)
        self.summary_norm = nn.RMSNorm(config.summary_dim, eps=config.norm_eps)
        self.scorer = nn.Linear(d_model, 1) if config.note_scorer == "learned" else None

    def empty(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> PoolSlots:
        """The pool a document starts with: K + R empty slots."""
        slots, score_dtype = self.pool_size + self.recent_slots, torch.promote_types(dtype, torch.float32)
        return PoolSlots(
            summary=torch.zeros(batch_size, slots, self.summary_dim, device=device, dtype=dtype),
            log_priority=torch.full((batch_size, slots), float("-inf"), device=device, dtype=score_dtype),
            valid=torch.zeros(batch_size, slots, device=device, dtype=torch.bool),
            # −1, as a selection leaves empty recent slots: a step that skips the selection
            # keeps the same cache
            recent_index=torch.full((batch_size, self.recent_slots), -1, device=device, dtype=torch.long),
        )

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> PoolState:
        """An empty cache: the empty pool and an empty running max-pool."""
        d_model = self.summary_proj.in_features
        chunk_max = torch.full((batch_size, d_model), float("-inf"), device=device, dtype=dtype)
        position = torch.zeros((), dtype=torch.long, device=device)
        return PoolState(
            **vars(self.empty(batch_size, device, dtype)), chunk_max=chunk_max, position=position
        )

    def forward(
        self, x: torch.Tensor, state: PoolState | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> Pools:
        """x: [B, T, D] the layer's input; state: from ``init_state``, continued and updated in
        place; cu_seqlens: int [N+1] packed documents (B == 1, no state), each with its own
        chunks and pools. Returns the pass's ``Pools``."""
        B, T, _ = x.shape
        check_packed("MemMamba", B, cu_seqlens, state)
        if state is not None and T == 1:
            layout = step_layout(self.chunk_size, self.recent_slots, state.position)
        else:
            if cu_seqlens is not None:
                segments = [(s, e, 0) for s, e in document_bounds("MemMamba", cu_seqlens, T) if e > s]
            else:  # a prefill piece reads the position once
                segments = [(0, T, 0 if state is None else int(state.position))]
            layout = chunk_layout(self.chunk_size, segments, self.recent_slots, x.device)
        chunk_max, summary, log_priority = self._notes(x, layout, state)

        # The pool before the pass: the state's, or the empty one a document starts with.
        carried = self.empty(B, x.device, x.dtype) if state is None else state
        rows = (layout.chunk_index, layout.query_index, layout.older, layout.recent)
        pool_summary, pool_priority, valid = self._pools(carried, summary, log_priority, rows, state)
        C = layout.num_chunks
        if state is not None:  # its pool is now row C's, the pool after the pass
            ends_chunk = layout.complete[-1]
            state.chunk_max = chunk_max[:, -1].masked_fill(ends_chunk, float("-inf"))
            state.position += T
        return Pools(layout, PoolView(pool_summary[:, :C], pool_priority[:, :C]), valid[:, :C], log_priority)

    @torch.no_grad()
    def step(self, x: torch.Tensor, state: PoolState) -> PoolView:
        """One decoding token x [B, 1, D] at ``state.position``: the pool it reads, [B, 1, ...],
        and ``state`` moved past it, as ``forward`` at T = 1 gives them. The token's chunk note
        is a candidate only if the token ends the chunk (decided on the device, for a CUDA
        graph), and only the pool after the token is selected: among K + R + 1 candidates.

        The pool read is the state's: its K best are sorted (ties in age order) and its FIFO's
        empty slots, only ever there before R chunks are complete, copy empty K-best slots, so
        selecting it again, as ``forward`` does, gives it back unchanged. Where the host has
        said that the token does not end its chunk (``state.skip_notes``), no selection runs
        at all: the step is the max-pool's update.
        """
        w, R = self.chunk_size, self.recent_slots
        view = PoolView(state.summary[:, None], state.log_priority[:, None])
        if state.skip_notes:  # the pool stays as it is: only the chunk's max-pool moves
            state.chunk_max = torch.maximum(x[:, 0], state.chunk_max)
            state.position += 1
            return view
        chunk, after = (state.position // w).reshape(1), state.position + 1
        ends = (after % w == 0).reshape(1, 1)
        chunk_max = torch.maximum(x, state.chunk_max[:, None])  # [B, 1, D]
        summary, log_priority = self._summarise(chunk_max, chunk, x.dtype)
        # A complete chunk's note enters the K best at once without a FIFO, else the FIFO.
        rows = (chunk, (after // w).reshape(1), ends if R == 0 else ends & False, ends)
        self._pools(state, summary, log_priority, rows, state)
        state.chunk_max = torch.where(ends, float("-inf"), chunk_max[:, 0])
        state.position += 1
        return view

    def _pools(
        self,
        carried: PoolSlots,
        summary: torch.Tensor,
        log_priority: torch.Tensor,
        rows: tuple[torch.Tensor, ...],
        state: PoolState | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The pools of Q queries among the carried slots and C new notes (summary [B, C, S],
        log_priority [B, C]). rows: the notes' chunk indices [C], the queries' [Q], and which
        notes each query may hold among its K best and its R recent, bool [Q, C] each (as
        ``ChunkLayout``'s chunk_index, query_index, older, recent).

        Returns summary [B, Q, K + R, S], log_priority [B, Q, K + R] (−inf at empty slots) and
        valid bool [B, Q, K + R]; the last query's pool is put into ``state`` if given.
        """
        priority = torch.cat([carried.log_priority, log_priority.to(carried.log_priority.dtype)], dim=1)
        index, valid, chunk = self._select(carried, priority, rows)
        pool_summary = gather_slots(torch.cat([carried.summary, summary], dim=1), index)
        pool_priority = torch.where(valid, gather_slots(priority, index), float("-inf"))
        if state is not None:
            # Copies, not views, of a longer pass's rows: a view would keep its [B, Q, ...]
            # tensors alive in the cache, whose size must not grow with a prefill.
            last = (lambda t: t[:, -1]) if index.shape[1] == 1 else (lambda t: t[:, -1].clone())
            state.summary, state.log_priority, state.valid = (
                last(pool_summary),
                last(pool_priority),
                last(valid),
            )
            if chunk is not None:
                state.recent_index = gather_slots(chunk, index[:, -1:, self.pool_size :])[:, 0]
        return pool_summary, pool_priority, valid

    def _notes(
        self, x: torch.Tensor, layout: ChunkLayout, state: PoolState | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The notes of the pass's chunks, the first continuing the state's unfinished chunk:
        max-pool [B, C, D], summary [B, C, S] in x's dtype, log π [B, C] in at least fp32."""
        # max, not amax: its backward scatters into the first maximum of each chunk (2 kernels)
        # where amax's shares the gradient among ties (4 kernels over [B, C, W, D]); both are
        # subgradients of the max-pool, and ties are common only in 16-bit models.
        chunk_max = group_by_chunk(x, layout, float("-inf")).max(dim=2).values
        if state is not None:
            chunk_max = torch.cat(
                [torch.maximum(chunk_max[:, :1], state.chunk_max[:, None]), chunk_max[:, 1:]], 1
            )
        return chunk_max, *self._summarise(chunk_max, layout.chunk_index, x.dtype)

    def _summarise(
        self, chunk_max: torch.Tensor, chunk_index: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The notes of chunks with max-pool [B, C, D] and indices ``chunk_index`` int64 [C]:
        summary [B, C, S] in ``dtype`` (the layer input's) and log π [B, C] in at least fp32."""
        # The norm in its weight's dtype: under autocast the projection comes out in bf16.
        projected = self.summary_proj(chunk_max).to(self.summary_norm.weight.dtype)
        summary = self.summary_norm(projected).to(dtype)
        return summary, self._log_priority(chunk_max, chunk_index)

    def _log_priority(self, chunk_max: torch.Tensor, chunk_index: torch.Tensor) -> torch.Tensor:
        """log π of each chunk [B, C], in at least fp32."""
        B, C, _ = chunk_max.shape
        dtype = torch.promote_types(chunk_max.dtype, torch.float32)
        if self.scorer is not None:
            return F.logsigmoid(self.scorer(chunk_max).squeeze(-1).to(dtype))
        start = chunk_index * self.chunk_size
        on = (start % self.note_period) < self.note_window
        value = torch.where(on, 0.0, math.log(_OFF_SCHEDULE_PRIORITY)).to(
            device=chunk_max.device, dtype=dtype
        )
        return value.expand(B, C)

    def _select(
        self, carried: PoolSlots, priority: torch.Tensor, rows: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The pools of Q queries (``_pools``' rows) among the candidates: the carried K
        best and R recent notes, then the C new notes, oldest first.

        priority: [B, K + R + C], the candidates' log-priorities. Returns index int64 and
        valid bool [B, Q, K + R] into the candidates (the K best, best first, then the R
        recent, oldest first) and, with recent slots, the candidates' chunk indices int64
        [B, K + R + C] (the K best's −1), else None.
        """
        (chunk_index, query_index, older, recent), K, R = rows, self.pool_size, self.recent_slots
        B, (Q, C) = priority.shape[0], older.shape
        if not R:
            visible = torch.cat([carried.valid[:, None].expand(B, Q, K), older.expand(B, Q, C)], dim=2)
            return (*select_pools(priority, visible, K), None)
        # A carried recent note joins the K-best competition once it falls out of the FIFO
        # window of the chunk asking.
        carried_recent = carried.valid[:, None, K:].expand(B, Q, R)
        leaves_fifo = carried.recent_index[:, None, :] < (query_index - R)[None, :, None]
        visible = torch.cat(
            [carried.valid[:, None, :K].expand(B, Q, K), carried_recent & leaves_fifo, older.expand(B, Q, C)],
            dim=2,
        )
        index, valid = select_pools(priority, visible, K)  # [B, Q, K]
        no_best = torch.zeros(B, Q, K, dtype=torch.bool, device=priority.device)
        recent = torch.cat([no_best, carried_recent & ~leaves_fifo, recent.expand(B, Q, C)], 2)
        chunk = torch.cat(
            [
                torch.full_like(carried.recent_index[:, :1], -1).expand(B, K),
                carried.recent_index,
                chunk_index.expand(B, C),
            ],
            dim=1,
        )
        recent_at, recent_valid = select_pools(chunk.to(priority.dtype), recent, R)
        # Oldest first, so that carried notes stay in age order for the stable sort's ties.
        recent_at, recent_valid = recent_at.flip(-1), recent_valid.flip(-1)
        return torch.cat([index, recent_at], dim=2), torch.cat([valid, recent_valid], dim=2), chunk


def select_pools(
    priority: torch.Tensor, visible: torch.Tensor, pool_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every query's pool: the ``pool_size`` visible candidates of highest priority.

    priority: [B, M], any monotone score of the candidates (log-priorities here), listed from
        oldest to youngest, so that the stable sort puts the older of two equal notes first.
    visible: bool [B, Q, M], which candidates each of Q queries may hold.
    Returns index int64 [B, Q, K] into the candidates, best first, and valid bool [B, Q, K]
    (False where fewer than K candidates are visible; those entries point at invisible ones).
    Needs M >= K.
    """
    scores = torch.where(visible, priority[:, None, :], float("-inf"))
    index = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :pool_size]
    return index, visible.gather(-1, index)


def gather_slots(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values [B, M, ...] gathered at index [B, Q, K] -> [B, Q, K, ...]."""
    rows = torch.arange(index.shape[0], device=index.device)[:, None, None]
    return values[rows, index]
