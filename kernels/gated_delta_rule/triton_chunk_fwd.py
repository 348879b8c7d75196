"""Triton forward of the chunked gated delta rule (chunk size BT = 64), three launches.

1. ``prepare``: per (chunk, head), the chunk-local cumulative log decay G (fp32), the UT
   transform Ai = (I + L)⁻¹ with L_ij = β_i e^{G_i − G_j} k_i·k_j (i > j), and
   w = Ai (β e^G ⊙ K), u = Ai (β ⊙ V).
2. ``state_pass``: per (V tile, sequence, head), the serial pass over chunks carrying the fp32
   state: stores each chunk's start state h and the pseudo-values v' = u − w h.
3. ``output``: per (chunk, head, V tile), o = scale [(e^G ⊙ Q) h + (Q Kᵀ ⊙ e^{G_i − G_j})_{i≥j} v'].

Layouts: q, k [Tp, H, K], v [Tp, H, V], g, beta [Tp, H] with the batch flattened into the
packed time axis Tp; chunk-wise buffers are indexed by the global chunk index of
triton_chunk_index. K is walked in blocks of at most MAX_BLOCK_K (the serial passes hold
the state as up to four [BK, BV] register blocks, hence K <= 4·BK), V in tiles; this keeps
every tl.dot operand small enough for shared memory at K = V = 256 in fp32. Every exponent
is of a non-positive difference, masked before exp. A transposed operand of tl.dot is
loaded transposed from memory or is tl.trans of a loaded tile, never tl.trans of a dot result
(a Hopper miscompile in Triton 3.4 to 3.7).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from memlab.kernels import buffers
from memlab.kernels.gated_delta_rule.triton_chunk_index import (
    CHUNK_SIZE,
    ChunkIndex,
    chunk_position,
    load_tile,
    sequence_position,
    store_tile,
)

# Largest K block and V tiles (chunk-parallel kernels, the output kernel, the forward state
# pass, the backward's serial pass); module-level so that the interpreter tests can shrink them
# to cross block boundaries on tiny shapes. The output kernel takes V tiles of 128 with 3
# stages and the forward state pass tiles of 64, the fastest measured (docs/kernel-design.md);
# heads wider than NARROW_HEAD keep the narrow tiles and 2 stages, since the wide ones exceed
# shared memory at K = V = 256 in 16-bit.
MAX_BLOCK_K = 64
MAX_BLOCK_V = 64
MAX_BLOCK_V_OUTPUT = 128
MAX_BLOCK_V_STATE_PASS = 64
MAX_BLOCK_V_SERIAL = 32
NARROW_HEAD = 128
# Smaller tiles miscompile on an H100 with Triton 3.6: 16 in fp32 reads out of bounds (K = 16,
# any V), and V tiles of 32 beside K blocks of 64 in 16-bit give wrong u and o (prepare and
# output kernels) or an illegal access (the backward's state pass). Small heads are padded.
MIN_TILE = 64


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: fp32 inputs get 3xTF32 (about fp32 accuracy), others their own
    (and one TF32 pass where fp32 operands meet, as in the UT solve)."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def pipeline_stages(dtype: torch.dtype, depth: int = 2) -> int:
    """Software-pipelining depth of the K and V loops: ``depth`` for 16-bit inputs, 1 for fp32,
    whose tiles are twice as large, so that the multi-buffered operands stay within shared
    memory. The deeper choices: docs/kernel-design.md."""
    return 1 if dtype == torch.float32 else depth


def is_narrow(K: int, V: int) -> bool:
    """Whether a head is narrow enough for the wide V tiles and deep pipelines (NARROW_HEAD)."""
    return max(K, V) <= NARROW_HEAD


def tile(size: int, cap: int) -> int:
    """A power-of-two tile of at least MIN_TILE covering size, at most cap (masked loads fill
    the rest with zeros)."""
    return min(max(MIN_TILE, triton.next_power_of_2(size)), cap)


def block_k(K: int) -> int:
    """The K block of every kernel; the serial passes take at most four blocks."""
    bk = tile(K, MAX_BLOCK_K)
    if triton.cdiv(K, bk) > 4:
        raise ValueError(f"K={K} needs more than four blocks of {bk}")
    return bk


@triton.jit(do_not_specialize=["T"])
def _prepare_kernel(
    k,
    v,
    g,
    beta,
    gcum,
    Ai,
    w,
    u,
    cu_seqlens,
    chunk_table,
    T,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    PREC: tl.constexpr,
):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_n, i_t, bos, seq_len = chunk_position(i_c, cu_seqlens, chunk_table, T, IS_VARLEN, BT)
    if i_n < 0:
        return
    o_i = tl.arange(0, BT)
    o_t = i_t * BT + o_i
    m_t = o_t < seq_len
    row = (bos + o_t) * H + i_h  # int64 token-head index
    r0 = i_t * BT

    b_g = tl.load(g + row, mask=m_t, other=0.0).to(tl.float32)
    b_G = tl.cumsum(b_g, axis=0)
    tl.store(gcum + row, b_G, mask=m_t)
    b_beta = tl.load(beta + row, mask=m_t, other=0.0).to(tl.float32)

    base_k = k + (bos * H + i_h) * K
    b_L = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        b_k = load_tile(base_k, r0, i_k * BK, seq_len, K, H * K, 1, BT, BK)
        b_L += tl.dot(b_k, tl.trans(b_k), input_precision=PREC)
    strictly_lower = (o_i[:, None] > o_i[None, :]) & m_t[:, None]
    decay = tl.exp(tl.where(strictly_lower, b_G[:, None] - b_G[None, :], 0.0))
    b_L = tl.where(strictly_lower, b_L * decay * b_beta[:, None], 0.0)

    # Invert I + L by 16×16 blocks, with this chunk's Ai rows as scratch (a register tile
    # cannot be sliced). The four diagonal blocks at once, as a [4, 16, 16] tile: L_bb is
    # strictly lower triangular, so N = −L_bb has N¹⁶ = 0 and
    # (I + L_bb)⁻¹ = Σ_{m<16} Nᵐ = (I + N)(I + N²)(I + N⁴)(I + N⁸): six batched 16×16
    # products in place of a 15-step forward substitution. The solve's fp32 products take the
    # inputs' PREC: Ai is rounded to the input dtype before w and u, so for 16-bit inputs one
    # TF32 pass is as fine as that rounding, and faster (docs/kernel-design.md).
    base_a = Ai + (bos * H + i_h) * BT
    S = H * BT  # row stride of Ai
    store_tile(base_a, b_L, r0, 0, seq_len, BT, S, 1, BT, BT)
    tl.debug_barrier()
    o_16 = tl.arange(0, 16)
    o_b = tl.arange(0, 4) * 16  # first row (and column) of each diagonal block
    block_rows = r0 + o_b[:, None, None] + o_16[None, :, None]
    diag_tiles = base_a + block_rows.to(tl.int64) * S + o_b[:, None, None] + o_16[None, None, :]
    in_seq = (block_rows < seq_len) & (o_16 >= 0)[None, None, :]
    b_N = -tl.load(diag_tiles, mask=in_seq, other=0.0)
    eye = (o_16[:, None] == o_16[None, :]).to(tl.float32)
    b_X = b_N + eye[None, :, :]
    for _ in tl.static_range(3):
        b_N = tl.dot(b_N, b_N, input_precision=PREC)
        b_X += tl.dot(b_X, b_N, input_precision=PREC)
    # Every thread has read its blocks of L before the diagonal ones are overwritten.
    tl.debug_barrier()
    tl.store(diag_tiles, b_X, mask=in_seq)
    tl.debug_barrier()

    # The off-diagonal blocks: X_ij = −X_ii Σ_{j≤m<i} L_im X_mj.
    b_L21 = load_tile(base_a, r0 + 16, 0, seq_len, BT, S, 1, 16, 16)
    b_L31 = load_tile(base_a, r0 + 32, 0, seq_len, BT, S, 1, 16, 16)
    b_L32 = load_tile(base_a, r0 + 32, 16, seq_len, BT, S, 1, 16, 16)
    b_L41 = load_tile(base_a, r0 + 48, 0, seq_len, BT, S, 1, 16, 16)
    b_L42 = load_tile(base_a, r0 + 48, 16, seq_len, BT, S, 1, 16, 16)
    b_L43 = load_tile(base_a, r0 + 48, 32, seq_len, BT, S, 1, 16, 16)
    b_X11 = load_tile(base_a, r0, 0, seq_len, BT, S, 1, 16, 16)
    b_X22 = load_tile(base_a, r0 + 16, 16, seq_len, BT, S, 1, 16, 16)
    b_X33 = load_tile(base_a, r0 + 32, 32, seq_len, BT, S, 1, 16, 16)
    b_X44 = load_tile(base_a, r0 + 48, 48, seq_len, BT, S, 1, 16, 16)
    b_X21 = -tl.dot(tl.dot(b_X22, b_L21, input_precision=PREC), b_X11, input_precision=PREC)
    b_X32 = -tl.dot(tl.dot(b_X33, b_L32, input_precision=PREC), b_X22, input_precision=PREC)
    b_X43 = -tl.dot(tl.dot(b_X44, b_L43, input_precision=PREC), b_X33, input_precision=PREC)
    b_S31 = tl.dot(b_L31, b_X11, input_precision=PREC) + tl.dot(b_L32, b_X21, input_precision=PREC)
    b_X31 = -tl.dot(b_X33, b_S31, input_precision=PREC)
    b_S42 = tl.dot(b_L42, b_X22, input_precision=PREC) + tl.dot(b_L43, b_X32, input_precision=PREC)
    b_X42 = -tl.dot(b_X44, b_S42, input_precision=PREC)
    b_S41 = (
        tl.dot(b_L41, b_X11, input_precision=PREC)
        + tl.dot(b_L42, b_X21, input_precision=PREC)
        + tl.dot(b_L43, b_X31, input_precision=PREC)
    )
    b_X41 = -tl.dot(b_X44, b_S41, input_precision=PREC)
    # Every thread has read its blocks of L before any is overwritten.
    tl.debug_barrier()
    store_tile(base_a, b_X21, r0 + 16, 0, seq_len, BT, S, 1, 16, 16)
    store_tile(base_a, b_X31, r0 + 32, 0, seq_len, BT, S, 1, 16, 16)
    store_tile(base_a, b_X32, r0 + 32, 16, seq_len, BT, S, 1, 16, 16)
    store_tile(base_a, b_X41, r0 + 48, 0, seq_len, BT, S, 1, 16, 16)
    store_tile(base_a, b_X42, r0 + 48, 16, seq_len, BT, S, 1, 16, 16)
    store_tile(base_a, b_X43, r0 + 48, 32, seq_len, BT, S, 1, 16, 16)
    tl.debug_barrier()

    b_Ai = load_tile(base_a, r0, 0, seq_len, BT, S, 1, BT, BT).to(k.dtype.element_ty)
    b_kscale = b_beta * tl.exp(b_G)
    for i_k in range(tl.cdiv(K, BK)):
        b_k = load_tile(base_k, r0, i_k * BK, seq_len, K, H * K, 1, BT, BK)
        b_kb = (b_k * b_kscale[:, None]).to(b_k.dtype)
        b_w = tl.dot(b_Ai, b_kb, input_precision=PREC)
        store_tile(w + (bos * H + i_h) * K, b_w, r0, i_k * BK, seq_len, K, H * K, 1, BT, BK)
    for i_v in range(tl.cdiv(V, BV)):
        b_v = load_tile(v + (bos * H + i_h) * V, r0, i_v * BV, seq_len, V, H * V, 1, BT, BV)
        b_vb = (b_v * b_beta[:, None]).to(b_v.dtype)
        b_u = tl.dot(b_Ai, b_vb, input_precision=PREC)
        store_tile(u + (bos * H + i_h) * V, b_u, r0, i_v * BV, seq_len, V, H * V, 1, BT, BV)


@triton.jit(do_not_specialize=["T"])
def _state_pass_kernel(
    k,
    w,
    u,
    gcum,
    h0,
    h,
    v_new,
    ht,
    cu_seqlens,
    chunk_offsets,
    T,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    PREC: tl.constexpr,
):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, seq_len, first_chunk = sequence_position(i_n, cu_seqlens, chunk_offsets, T, IS_VARLEN, BT)
    c0 = i_v * BV
    # The state's K rows as up to four register blocks.
    b_h1 = tl.zeros([BK, BV], dtype=tl.float32)
    b_h2 = tl.zeros([BK, BV], dtype=tl.float32)
    b_h3 = tl.zeros([BK, BV], dtype=tl.float32)
    b_h4 = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        base_h0 = h0 + i_nh.to(tl.int64) * K * V
        b_h1 += load_tile(base_h0, 0, c0, K, V, V, 1, BK, BV).to(tl.float32)
        if K > BK:
            b_h2 += load_tile(base_h0, BK, c0, K, V, V, 1, BK, BV).to(tl.float32)
        if K > 2 * BK:
            b_h3 += load_tile(base_h0, 2 * BK, c0, K, V, V, 1, BK, BV).to(tl.float32)
        if K > 3 * BK:
            b_h4 += load_tile(base_h0, 3 * BK, c0, K, V, V, 1, BK, BV).to(tl.float32)

    base_k = k + (bos * H + i_h) * K
    base_w = w + (bos * H + i_h) * K
    o_i = tl.arange(0, BT)
    for i_t in range(tl.cdiv(seq_len, BT)):
        r0 = i_t * BT
        base_h = h + ((first_chunk + i_t) * H + i_h) * K * V
        store_tile(base_h, b_h1, 0, c0, K, V, V, 1, BK, BV)
        if K > BK:
            store_tile(base_h, b_h2, BK, c0, K, V, V, 1, BK, BV)
        if K > 2 * BK:
            store_tile(base_h, b_h3, 2 * BK, c0, K, V, V, 1, BK, BV)
        if K > 3 * BK:
            store_tile(base_h, b_h4, 3 * BK, c0, K, V, V, 1, BK, BV)

        b_v = load_tile(u + (bos * H + i_h) * V, r0, c0, seq_len, V, H * V, 1, BT, BV).to(tl.float32)
        b_w = load_tile(base_w, r0, 0, seq_len, K, H * K, 1, BT, BK)
        b_v -= tl.dot(b_w, b_h1.to(b_w.dtype), input_precision=PREC)
        if K > BK:
            b_w = load_tile(base_w, r0, BK, seq_len, K, H * K, 1, BT, BK)
            b_v -= tl.dot(b_w, b_h2.to(b_w.dtype), input_precision=PREC)
        if K > 2 * BK:
            b_w = load_tile(base_w, r0, 2 * BK, seq_len, K, H * K, 1, BT, BK)
            b_v -= tl.dot(b_w, b_h3.to(b_w.dtype), input_precision=PREC)
        if K > 3 * BK:
            b_w = load_tile(base_w, r0, 3 * BK, seq_len, K, H * K, 1, BT, BK)
            b_v -= tl.dot(b_w, b_h4.to(b_w.dtype), input_precision=PREC)
        store_tile(v_new + (bos * H + i_h) * V, b_v, r0, c0, seq_len, V, H * V, 1, BT, BV)

        o_t = r0 + o_i
        m_t = o_t < seq_len
        last = tl.minimum(r0 + BT, seq_len) - 1
        b_G = tl.load(gcum + (bos + o_t) * H + i_h, mask=m_t, other=0.0)
        b_G_last = tl.load(gcum + (bos + last) * H + i_h)
        to_end = tl.exp(tl.where(m_t, b_G_last - b_G, 0.0))
        b_vd = tl.where(m_t[:, None], b_v * to_end[:, None], 0.0).to(k.dtype.element_ty)
        chunk_decay = tl.exp(b_G_last)
        b_kt = load_tile(base_k, 0, r0, K, seq_len, 1, H * K, BK, BT)
        b_h1 = b_h1 * chunk_decay + tl.dot(b_kt, b_vd, input_precision=PREC)
        if K > BK:
            b_kt = load_tile(base_k, BK, r0, K, seq_len, 1, H * K, BK, BT)
            b_h2 = b_h2 * chunk_decay + tl.dot(b_kt, b_vd, input_precision=PREC)
        if K > 2 * BK:
            b_kt = load_tile(base_k, 2 * BK, r0, K, seq_len, 1, H * K, BK, BT)
            b_h3 = b_h3 * chunk_decay + tl.dot(b_kt, b_vd, input_precision=PREC)
        if K > 3 * BK:
            b_kt = load_tile(base_k, 3 * BK, r0, K, seq_len, 1, H * K, BK, BT)
            b_h4 = b_h4 * chunk_decay + tl.dot(b_kt, b_vd, input_precision=PREC)

    if STORE_HT:
        base_ht = ht + i_nh.to(tl.int64) * K * V
        store_tile(base_ht, b_h1, 0, c0, K, V, V, 1, BK, BV)
        if K > BK:
            store_tile(base_ht, b_h2, BK, c0, K, V, V, 1, BK, BV)
        if K > 2 * BK:
            store_tile(base_ht, b_h3, 2 * BK, c0, K, V, V, 1, BK, BV)
        if K > 3 * BK:
            store_tile(base_ht, b_h4, 3 * BK, c0, K, V, V, 1, BK, BV)


@triton.jit(do_not_specialize=["T"])
def _output_kernel(
    q,
    k,
    v_new,
    h,
    gcum,
    o,
    scale,
    cu_seqlens,
    chunk_table,
    T,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    PREC: tl.constexpr,
):
    i_c, i_h, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_t, bos, seq_len = chunk_position(i_c, cu_seqlens, chunk_table, T, IS_VARLEN, BT)
    if i_n < 0:
        return
    o_i = tl.arange(0, BT)
    r0 = i_t * BT
    c0 = i_v * BV
    m_t = r0 + o_i < seq_len
    b_G = tl.load(gcum + (bos + r0 + o_i) * H + i_h, mask=m_t, other=0.0)

    base_q = q + (bos * H + i_h) * K
    base_k = k + (bos * H + i_h) * K
    base_h = h + (i_c.to(tl.int64) * H + i_h) * K * V
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_s = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        b_q = load_tile(base_q, r0, i_k * BK, seq_len, K, H * K, 1, BT, BK)
        b_kt = load_tile(base_k, i_k * BK, r0, K, seq_len, 1, H * K, BK, BT)
        b_h = load_tile(base_h, i_k * BK, c0, K, V, V, 1, BK, BV).to(b_q.dtype)
        b_o += tl.dot(b_q, b_h, input_precision=PREC)
        b_s += tl.dot(b_q, b_kt, input_precision=PREC)
    causal = (o_i[:, None] >= o_i[None, :]) & m_t[:, None]
    b_s = tl.where(causal, b_s * tl.exp(tl.where(causal, b_G[:, None] - b_G[None, :], 0.0)), 0.0)
    b_o = b_o * tl.exp(b_G)[:, None]
    b_vn = load_tile(v_new + (bos * H + i_h) * V, r0, c0, seq_len, V, H * V, 1, BT, BV)
    b_o += tl.dot(b_s.to(b_vn.dtype), b_vn, input_precision=PREC)
    store_tile(o + (bos * H + i_h) * V, b_o * scale, r0, c0, seq_len, V, H * V, 1, BT, BV)


def prepare(
    k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, index: ChunkIndex
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chunk-local cumsum G [Tp, H] fp32, Ai [Tp, H, 64] fp32, w [Tp, H, K], u [Tp, H, V] (k's dtype)."""
    Tp, H, K = k.shape
    V = v.shape[-1]
    gcum = buffers.empty(Tp, H, dtype=torch.float32, device=k.device)
    Ai = buffers.empty(Tp, H, CHUNK_SIZE, dtype=torch.float32, device=k.device)
    w = buffers.empty_like(k)
    u = buffers.empty_like(v)
    cu_seqlens, _, chunk_table, T = index.launch_args()
    _prepare_kernel[(index.num_chunks, H)](
        k, v, g, beta, gcum, Ai, w, u, cu_seqlens, chunk_table, T,
        H=H, K=K, V=V, BT=CHUNK_SIZE, BK=block_k(K), BV=tile(V, MAX_BLOCK_V),
        IS_VARLEN=index.is_varlen, PREC=dot_precision(k.dtype), num_warps=4,
        num_stages=pipeline_stages(k.dtype, 3),
    )  # fmt: skip
    return gcum, Ai, w, u


def state_pass(
    k: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    gcum: torch.Tensor,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    index: ChunkIndex,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Start state of every chunk h [num_chunks, H, K, V] (fp32 for fp32 inputs, else k's
    dtype), pseudo-values v' [Tp, H, V] (k's dtype) and the final states [N, H, K, V] fp32."""
    _, H, K = k.shape
    V = u.shape[-1]
    h_dtype = torch.float32 if k.dtype == torch.float32 else k.dtype
    h = buffers.empty(index.num_chunks, H, K, V, dtype=h_dtype, device=k.device)
    v_new = buffers.empty_like(u)
    ht = None
    if output_final_state:
        ht = buffers.empty(index.num_seqs, H, K, V, dtype=torch.float32, device=k.device)
    cu_seqlens, chunk_offsets, _, T = index.launch_args()
    narrow = is_narrow(K, V)
    BV = tile(V, MAX_BLOCK_V_STATE_PASS if narrow else MAX_BLOCK_V_SERIAL)
    _state_pass_kernel[(triton.cdiv(V, BV), index.num_seqs * H)](
        k, w, u, gcum, initial_state, h, v_new, ht, cu_seqlens, chunk_offsets, T,
        H=H, K=K, V=V, BT=CHUNK_SIZE, BK=block_k(K), BV=BV,
        USE_H0=initial_state is not None, STORE_HT=output_final_state,
        IS_VARLEN=index.is_varlen, PREC=dot_precision(k.dtype), num_warps=4,
        num_stages=pipeline_stages(k.dtype, 3 if narrow else 2),
    )  # fmt: skip
    return h, v_new, ht


def output(
    q: torch.Tensor,
    k: torch.Tensor,
    v_new: torch.Tensor,
    h: torch.Tensor,
    gcum: torch.Tensor,
    scale: float,
    index: ChunkIndex,
) -> torch.Tensor:
    """o [Tp, H, V] in q's dtype."""
    _, H, K = q.shape
    V = v_new.shape[-1]
    o = buffers.empty_like(v_new)
    cu_seqlens, _, chunk_table, T = index.launch_args()
    narrow = is_narrow(K, V)
    BV = tile(V, MAX_BLOCK_V_OUTPUT if narrow else MAX_BLOCK_V)
    _output_kernel[(index.num_chunks, H, triton.cdiv(V, BV))](
        q, k, v_new, h, gcum, o, scale, cu_seqlens, chunk_table, T,
        H=H, K=K, V=V, BT=CHUNK_SIZE, BK=block_k(K), BV=BV,
        IS_VARLEN=index.is_varlen, PREC=dot_precision(q.dtype), num_warps=4,
        num_stages=pipeline_stages(q.dtype, 3 if narrow else 2),
    )  # fmt: skip
    return o
