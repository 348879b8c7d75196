"""Where each chunk of a (possibly packed) batch lives, for the Triton chunked kernels.

Every launch treats its input as sequences packed along one time axis: a dense [B, T] batch
is B sequences of length T at offsets n·T, a ``cu_seqlens`` batch is whatever the offsets
say. Chunk-parallel kernels run one program per (chunk, head) over a grid sized by an upper
bound on the number of chunks; the table that maps a program to its (sequence, chunk) is
built on the device, so no call reads ``cu_seqlens`` back to the host. Programs beyond the
real number of chunks find sequence -1 and exit at once.

Also the tile loads and stores every kernel uses: masked, zero-filled, with int64 offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

CHUNK_SIZE = 64


@dataclass(frozen=True)
class ChunkIndex:
    """The chunk layout of one call.

    ``num_chunks`` bounds the number of chunks (exact without cu_seqlens); ``seq_len`` is the
    length T of every sequence of a dense batch. With cu_seqlens: ``cu_seqlens`` [N + 1]
    int64, ``chunk_offsets`` [N + 1] int64 (index of each sequence's first chunk) and
    ``chunk_table`` [num_chunks, 2] int32 (sequence, chunk within it; -1 for spare rows).
    """

    num_seqs: int
    num_chunks: int
    seq_len: int
    cu_seqlens: torch.Tensor | None = None
    chunk_offsets: torch.Tensor | None = None
    chunk_table: torch.Tensor | None = None

    @property
    def is_varlen(self) -> bool:
        return self.cu_seqlens is not None

    def launch_args(self) -> tuple:
        """(cu_seqlens, chunk_offsets, chunk_table, T) as the kernels take them."""
        return self.cu_seqlens, self.chunk_offsets, self.chunk_table, self.seq_len


def build_chunk_index(batch: int, seq_len: int, cu_seqlens: torch.Tensor | None) -> ChunkIndex:
    """The chunk layout of a [batch, seq_len] call, or of a packed one (batch == 1).

    cu_seqlens values are trusted here (the public API validated them); building the table
    takes a handful of small device ops and never synchronises.
    """
    if cu_seqlens is None:
        return ChunkIndex(
            num_seqs=batch, num_chunks=batch * triton.cdiv(seq_len, CHUNK_SIZE), seq_len=seq_len
        )
    num_seqs = cu_seqlens.numel() - 1
    # Each sequence adds at most one partial chunk to the ceil of the packed length.
    num_chunks = triton.cdiv(seq_len, CHUNK_SIZE) + num_seqs
    cu = cu_seqlens.to(torch.int64)
    per_seq = (cu[1:] - cu[:-1] + CHUNK_SIZE - 1) // CHUNK_SIZE
    chunk_offsets = F.pad(per_seq.cumsum(0), (1, 0))
    chunk = torch.arange(num_chunks, device=cu.device)
    # The sequence owning global chunk c is the first n with chunk_offsets[n + 1] > c, which
    # also steps over empty sequences.
    seq = torch.searchsorted(chunk_offsets[1:], chunk, right=True)
    valid = seq < num_seqs
    local = chunk - chunk_offsets[seq.clamp(max=num_seqs - 1)]
    table = torch.stack([torch.where(valid, seq, -1), local], dim=1).to(torch.int32)
    return ChunkIndex(num_seqs, num_chunks, seq_len, cu, chunk_offsets, table.contiguous())


@triton.jit
def chunk_position(i_c, cu_seqlens, chunk_table, T, IS_VARLEN: tl.constexpr, BT: tl.constexpr):
    """(sequence n, chunk i_t within it, first token bos as int64, sequence length) of chunk i_c.

    n is -1 for the spare programs of a varlen grid.
    """
    if IS_VARLEN:
        i_n = tl.load(chunk_table + 2 * i_c).to(tl.int32)
        i_t = tl.load(chunk_table + 2 * i_c + 1).to(tl.int32)
        safe_n = tl.maximum(i_n, 0)
        bos = tl.load(cu_seqlens + safe_n).to(tl.int64)
        eos = tl.load(cu_seqlens + safe_n + 1).to(tl.int64)
        seq_len = (eos - bos).to(tl.int32)
    else:
        num_chunks = tl.cdiv(T, BT)
        i_n = i_c // num_chunks
        i_t = i_c % num_chunks
        bos = i_n.to(tl.int64) * T
        seq_len = T
    return i_n, i_t, bos, seq_len


@triton.jit
def sequence_position(i_n, cu_seqlens, chunk_offsets, T, IS_VARLEN: tl.constexpr, BT: tl.constexpr):
    """(first token bos as int64, length, index of the first chunk as int64) of sequence i_n."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        seq_len = (eos - bos).to(tl.int32)
        first_chunk = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        seq_len = T
        first_chunk = i_n.to(tl.int64) * tl.cdiv(T, BT)
    return bos, seq_len, first_chunk


@triton.jit
def tile_pointers(base, off0, off1, size0, size1, stride0, stride1, B0: tl.constexpr, B1: tl.constexpr):
    """Pointers and in-bounds mask of the [B0, B1] tile at (off0, off1) of a size0 × size1
    matrix at ``base`` with the given strides; offsets in int64. A transposed view is the
    same call with the sizes and strides swapped."""
    o0 = off0 + tl.arange(0, B0)
    o1 = off1 + tl.arange(0, B1)
    offsets = o0.to(tl.int64)[:, None] * stride0 + o1.to(tl.int64)[None, :] * stride1
    return base + offsets, (o0[:, None] < size0) & (o1[None, :] < size1)


@triton.jit
def load_tile(base, off0, off1, size0, size1, stride0, stride1, B0: tl.constexpr, B1: tl.constexpr):
    """The [B0, B1] tile at (off0, off1) of a size0 × size1 matrix, zero outside it."""
    pointers, mask = tile_pointers(base, off0, off1, size0, size1, stride0, stride1, B0, B1)
    return tl.load(pointers, mask=mask, other=0.0)


@triton.jit
def store_tile(base, value, off0, off1, size0, size1, stride0, stride1, B0: tl.constexpr, B1: tl.constexpr):
    """Store ``value`` (cast to the destination dtype) as the [B0, B1] tile at (off0, off1)."""
    pointers, mask = tile_pointers(base, off0, off1, size0, size1, stride0, stride1, B0, B1)
    tl.store(pointers, value.to(base.dtype.element_ty), mask=mask)
