"""The selective scan forward's exponentials alone: a second reference time, beside the
bandwidth floor.

The forward evaluates exp2(dt·A) once per (batch, channel, step, state): batch·dim·L·N
exponentials, N per value of u it reads. On a GPU these run on the special-function units,
whose rate is a small fraction of the fused multiply-adds'. This kernel computes exactly those
exponentials (dt read once, one sum per (channel, step) written) and nothing of the scan: an
estimate of the least time a forward that evaluates them on those units can take (one that
computed some as polynomials on the multiply-add units, as ``_softplus_poly`` does for log1p,
could go below it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from memlab.bench.timing import time_ms

_BLOCK_T, _BLOCK_D = 64, 8


@triton.jit
def _exp2_sum_kernel(
    dt_ptr, A_ptr, out_ptr, dim, L, N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr
):
    """Grid (cdiv(L, BLOCK_T), dim / BLOCK_D, batch): out[b, d, t] = Σ_n exp2(dt[b, d, t]·A[d, n])
    over [BLOCK_T, BLOCK_D] tiles read along time."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs = (tl.program_id(2).to(tl.int64) * dim + d)[None, :] * L + t[:, None]
    mask = t[:, None] < L
    dt = tl.load(dt_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for n in tl.static_range(N):
        acc += tl.exp2(dt * tl.load(A_ptr + d * N + n)[None, :])
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def exp2_sums(delta: torch.Tensor, A: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """out[b, d, t] = Σ_n exp2(delta[b, d, t]·A[d, n]) in delta's dtype, summed in fp32.
    delta: [batch, dim, L], contiguous, dim a multiple of 8; A: [dim, N] fp32."""
    batch, dim, L = delta.shape
    if dim % _BLOCK_D:
        raise ValueError(f"exp2_sums: dim must be a multiple of {_BLOCK_D}, got {dim}")
    out = torch.empty_like(delta) if out is None else out
    grid = (triton.cdiv(L, _BLOCK_T), dim // _BLOCK_D, batch)
    _exp2_sum_kernel[grid](
        delta, A, out, dim, L, N=A.shape[1], BLOCK_T=_BLOCK_T, BLOCK_D=_BLOCK_D, num_warps=4
    )
    return out


def exponentials_ms(delta: torch.Tensor, A: torch.Tensor) -> float:
    """Milliseconds of ``exp2_sums`` (the N exponentials per element of ``delta``)."""
    out = torch.empty_like(delta)
    return time_ms(lambda: exp2_sums(delta, A, out))
