"""Where MoM's routed tokens go before the one gated-delta-rule call of a layer, and the
per-memory projections of the tokens once they are there.

A token visits S = topk (+1 with a shared memory) of the M memories of its sequence; every
(sequence, memory) pair is one independent recurrence (a *segment*) that must see its
tokens in time order. Two layouts put the segments side by side:

- padded: segment (b, m) is row b·M + m of a [B·M, T] batch; its tokens are compacted to
  the front of the row, the rest is padding. Any kernel backend and decoding can run it; it
  pays for M·T token slots per sequence where only S·T are real.
- packed: the B·T·S visits are laid end to end, segment after segment, with ``cu_seqlens``
  marking where each starts: exactly the real tokens, for the varlen Triton kernel.

Both place a token by its rank among the earlier tokens routed to the same memory (a cumsum
of the routing mask along time): the permutation a stable sort by (memory, sequence, time)
would give, without a sort, and time order inside a segment by construction. All sizes are
fixed by B, T and S, never by the routing, so nothing is read back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from memlab.kernels import combine_routed


def padded_layout(visited: torch.Tensor, chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The padded layout of B sequences.

    Args:
        visited: int64 0/1 [B, T, M], which memories each token visits (shared one included).
        chosen: int64 [B, T, S], the memories each token visits, in the order of its weights.

    Returns:
        destination [B, T, S] int64, each visit's flat index (b·M + m)·T + slot in the
        [B·M, T] rows, and counts [B, M] int64, the real tokens at the front of each row.
    """
    B, T, M = visited.shape
    slot = (visited.cumsum(1) - 1).gather(2, chosen)
    batch = torch.arange(B, device=visited.device)[:, None, None]
    return (batch * M + chosen) * T + slot, visited.sum(1)


@dataclass(frozen=True)
class PackedSegments:
    """The packed layout of N = (tokens)·S visits, segments ordered memory-major: all of
    memory 0's segments (one per sequence), then memory 1's, ..., so that each memory's
    tokens are contiguous for a grouped matmul.

    destination: int64 [tokens, S], each visit's position in the packed stream.
    source: int64 [N], the token each packed position holds (inverse of destination).
    memory: int64 [N], the memory each packed position belongs to (non-decreasing).
    cu_seqlens: int64 [M·num_seqs + 1], segment offsets; empty segments are equal neighbours.
    memory_ends: int32 [M], where each memory's run of positions ends (``offs`` of a grouped mm).
    """

    destination: torch.Tensor
    source: torch.Tensor
    memory: torch.Tensor
    cu_seqlens: torch.Tensor
    memory_ends: torch.Tensor


def packed_layout(
    visited: torch.Tensor,
    chosen: torch.Tensor,
    sequence: torch.Tensor,
    starts: torch.Tensor,
    ends: torch.Tensor,
) -> PackedSegments:
    """The packed layout of tokens from num_seqs sequences laid along one time axis.

    Args:
        visited: int64 0/1 [tokens, M], which memories each token visits (shared one included).
        chosen: int64 [tokens, S], the memories each token visits.
        sequence: int64 [tokens], the sequence of each token; a sequence's tokens are
            contiguous and in time order.
        starts, ends: int64 [num_seqs], each sequence's first and one-past-last token.
    """
    tokens = visited.shape[0]
    S, num_seqs = chosen.shape[1], starts.numel()
    # routed_before[i, m]: tokens before token i that visit m, so a visit's rank inside its
    # segment is routed_before at the token minus routed_before at its sequence's start.
    # The cumsum runs along the last, contiguous dim of [M, tokens]: along dim 0 of [tokens, M]
    # CUDA scans each of the M columns with one thread block, a tenth of the layer's time.
    routed_before = F.pad(visited.T.contiguous().cumsum(1), (1, 0)).T  # [tokens + 1, M]
    at_start = routed_before[starts]  # [num_seqs, M]
    rank = routed_before[:-1].gather(1, chosen) - at_start[sequence].gather(1, chosen)
    lengths = (routed_before[ends] - at_start).T.flatten()  # [M·num_seqs], memory-major
    cu_seqlens = F.pad(lengths.cumsum(0), (1, 0))
    destination = cu_seqlens[chosen * num_seqs + sequence[:, None]] + rank
    flat = destination.flatten()
    token = torch.arange(tokens, device=visited.device).repeat_interleave(S)
    source = torch.empty_like(flat).index_put_((flat,), token)
    memory = torch.empty_like(flat).index_put_((flat,), chosen.flatten())
    memory_ends = cu_seqlens[num_seqs::num_seqs].to(torch.int32)
    return PackedSegments(destination, source, memory, cu_seqlens, memory_ends)


class _DispatchRows(torch.autograd.Function):
    """x[source] into packed order; the backward sums each token's S visits back through
    ``destination`` (a gather again, not the sorting scatter-add of index's backward)."""

    @staticmethod
    def forward(ctx, x, segments, backend):
        ctx.segments, ctx.backend = segments, backend
        return x[segments.source]

    @staticmethod
    def backward(ctx, grad):
        destination = ctx.segments.destination
        ones = torch.ones(destination.shape, dtype=torch.float32, device=grad.device)
        return combine_routed(grad.contiguous(), destination, ones, ctx.backend), None, None


def dispatch_rows(x: torch.Tensor, segments: PackedSegments, backend: str | None = None) -> torch.Tensor:
    """x [tokens, F] -> [N, F], each packed visit's token row (differentiable).

    backend: the kernel backend of the backward's combine (see ``combine_routed``).
    """
    return _DispatchRows.apply(x, segments, backend)


def grouped_mm_fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``torch._grouped_mm`` runs natively for x [N, D] @ weight [M, D, F] on this
    device: CUDA bf16 on compute capability 9.x or 10.x (its CUTLASS kernel), with 16-byte
    aligned rows. Elsewhere torch falls back to one matmul per group, which reads the group
    offsets on the host."""
    return (
        hasattr(torch, "_grouped_mm")
        and x.is_cuda
        and x.dtype == torch.bfloat16
        and torch.cuda.get_device_capability(x.device)[0] in (9, 10)
        and x.shape[-1] % 8 == 0
        and weight.shape[-1] % 8 == 0
    )


def project_packed(
    x: torch.Tensor, weight: torch.Tensor, segments: PackedSegments, grouped: bool, backend: str | None = None
) -> torch.Tensor:
    """Each packed visit's token through its memory's projection.

    Args:
        x: [tokens, D], the tokens in their own order.
        weight: [M, D, F], one projection per memory.
        segments: the packed layout.
        grouped: gather the tokens into packed order and run one ``torch._grouped_mm`` over
            the memories' runs (N·D·F multiply-adds); otherwise project every token with every
            memory in one dense matmul and pick (tokens·M·D·F), which runs anywhere.
        backend: the kernel backend of the gather's backward (see ``dispatch_rows``).

    Returns:
        [N, F] in x's dtype (the autocast dtype under autocast for the dense form).
    """
    if grouped:
        rows = dispatch_rows(x, segments, backend)
        return torch._grouped_mm(rows, weight.to(x.dtype), offs=segments.memory_ends)
    M, D, width = weight.shape
    every = (x @ weight.permute(1, 0, 2).reshape(D, M * width)).view(-1, width)  # [tokens·M, F]
    return every[segments.source * M + segments.memory]
