"""Triton implementation of ``gemv`` (the "triton" backend).

One program per block of BLOCK_N weight rows, for every row of x at once: it streams its
rows of the weight along K in [BLOCK_N, BLOCK_K] tiles, each read once, and keeps the
[BLOCK_M, BLOCK_N] sums in fp32 registers. BLOCK_N is chosen so that there are a few
programs per SM (a GEMV is bound by reading the weight, so every SM must be reading).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from memlab.kernels import buffers

# Programs to aim for (a few per SM of an H100's 132), and the register budget of the
# [BLOCK_M, BLOCK_N, BLOCK_K] product each iteration forms.
TARGET_PROGRAMS, TILE_ELEMENTS = 512, 8192
MIN_BLOCK_N, MAX_BLOCK_N = 2, 16


@triton.jit
def _gemv_kernel(
    x, w, y, M, N, K, stride_x, stride_y,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    o_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    o_m = tl.arange(0, BLOCK_M)
    m_n, m_m = o_n < N, o_m < M
    rows = w + o_n.to(tl.int64)[:, None] * K
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < K
        b_w = tl.load(rows + o_k[None, :], mask=m_n[:, None] & m_k[None, :], other=0.0).to(tl.float32)
        b_x = tl.load(x + o_m[:, None] * stride_x + o_k[None, :], mask=m_m[:, None] & m_k[None, :], other=0.0)
        acc += tl.sum(b_x.to(tl.float32)[:, None, :] * b_w[None, :, :], 2)
    out = y + o_m[:, None] * stride_y + o_n[None, :]
    tl.store(out, acc.to(y.dtype.element_ty), mask=m_m[:, None] & m_n[None, :])


def blocks(M: int, N: int, K: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K) for x [M, K] and weight [N, K]."""
    block_m = max(2, triton.next_power_of_2(M))
    block_n = triton.next_power_of_2(max(1, N // TARGET_PROGRAMS) + 1) // 2
    block_n = min(max(block_n, MIN_BLOCK_N), MAX_BLOCK_N)
    block_k = max(16, min(triton.next_power_of_2(K), TILE_ELEMENTS // (block_m * block_n)))
    return block_m, block_n, block_k


def gemv_triton(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """As ``gemv`` (inputs already checked): y [M, N] in x's dtype."""
    M, K = x.shape
    N = weight.shape[0]
    if x.stride(1) != 1:
        x = x.contiguous()
    y = buffers.empty(M, N, dtype=x.dtype, device=x.device)
    block_m, block_n, block_k = blocks(M, N, K)
    _gemv_kernel[(triton.cdiv(N, block_n),)](
        x, weight, y, M, N, K, x.stride(0), y.stride(0), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k
    )
    return y
