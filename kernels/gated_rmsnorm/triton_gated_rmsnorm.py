"""Triton gated RMSNorm (the "triton" backend of ``gated_rmsnorm``).

Forward: one pass over o and the gate, keeping r = 1/sqrt(mean(o²) + eps) per row. Backward:
one pass over o, the gate and dy; with n = o·r and a = weight·silu(gate),
do = r (dn − n·mean(dn·n)) for dn = dy·a, d gate = dy·n·weight·silu'(gate), and the weight
gradient Σ dy·n·silu(gate) summed per program into fp32 partials that one sum finishes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from memlab.kernels import buffers
from memlab.kernels.gated_rmsnorm.library import gated_rmsnorm_op

# Elements of the [rows, D] tile one program handles at a time; rows per backward program.
_TILE, _BWD_ROWS = 4096, 256


@triton.jit
def _gated_rmsnorm_fwd_kernel(o, gate, w, y, rstd, R, D, eps, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    o_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    o_d = tl.arange(0, BLOCK_D)
    mask = (o_r < R)[:, None] & (o_d < D)[None, :]
    offsets = o_r.to(tl.int64)[:, None] * D + o_d[None, :]
    b_o = tl.load(o + offsets, mask=mask, other=0.0).to(tl.float32)
    b_g = tl.load(gate + offsets, mask=mask, other=0.0).to(tl.float32)
    b_w = tl.load(w + o_d, mask=o_d < D, other=0.0).to(tl.float32)
    b_r = 1.0 / tl.sqrt(tl.sum(b_o * b_o, 1) / D + eps)
    b_y = b_o * b_r[:, None] * b_w[None, :] * (b_g * tl.sigmoid(b_g))
    tl.store(y + offsets, b_y.to(y.dtype.element_ty), mask=mask)
    tl.store(rstd + o_r, b_r, mask=o_r < R)


@triton.jit
def _gated_rmsnorm_bwd_kernel(
    o,
    gate,
    w,
    rstd,
    dy,
    do,
    dgate,
    dw_part,
    R,
    D,
    ROWS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i_p = tl.program_id(0)
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    b_w = tl.load(w + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_dw = tl.zeros([BLOCK_D], dtype=tl.float32)
    end = min(i_p * ROWS + ROWS, R)
    for r0 in range(i_p * ROWS, end, BLOCK_R):
        o_r = r0 + tl.arange(0, BLOCK_R)
        mask = (o_r < end)[:, None] & m_d[None, :]
        offsets = o_r.to(tl.int64)[:, None] * D + o_d[None, :]
        b_o = tl.load(o + offsets, mask=mask, other=0.0).to(tl.float32)
        b_g = tl.load(gate + offsets, mask=mask, other=0.0).to(tl.float32)
        b_dy = tl.load(dy + offsets, mask=mask, other=0.0).to(tl.float32)
        b_r = tl.load(rstd + o_r, mask=o_r < end, other=0.0)
        b_n = b_o * b_r[:, None]
        sig = tl.sigmoid(b_g)
        silu = b_g * sig
        b_dn = b_dy * b_w[None, :] * silu
        b_do = b_r[:, None] * (b_dn - b_n * (tl.sum(b_dn * b_n, 1) / D)[:, None])
        b_dg = b_dy * b_n * b_w[None, :] * sig * (1.0 + b_g * (1.0 - sig))
        tl.store(do + offsets, b_do.to(do.dtype.element_ty), mask=mask)
        tl.store(dgate + offsets, b_dg.to(dgate.dtype.element_ty), mask=mask)
        b_dw += tl.sum(b_dy * b_n * silu, 0)
    tl.store(dw_part + i_p.to(tl.int64) * D + o_d, b_dw, mask=m_d)


def _blocks(D: int) -> tuple[int, int]:
    block_d = triton.next_power_of_2(D)
    return max(1, _TILE // block_d), block_d


def norm_forward(
    rows: torch.Tensor, gates: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """y [R, D] (rows' dtype) and rstd fp32 [R] for rows, gates [R, D] and weight [D], all
    contiguous."""
    R, D = rows.shape
    block_r, block_d = _blocks(D)
    y = buffers.empty_like(rows)
    rstd = buffers.empty(R, dtype=torch.float32, device=rows.device)
    _gated_rmsnorm_fwd_kernel[(triton.cdiv(R, block_r),)](
        rows, gates, weight, y, rstd, R, D, eps, BLOCK_R=block_r, BLOCK_D=block_d
    )
    return y, rstd


def norm_backward(
    dy: torch.Tensor, rows: torch.Tensor, gates: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """d rows, d gates [R, D] and d weight [D] (weight's dtype) for dy [R, D] and
    norm_forward's inputs and rstd."""
    R, D = rows.shape
    block_r, block_d = _blocks(D)
    dy = dy.contiguous()
    do, dgate = buffers.empty_like(rows), buffers.empty_like(gates)
    programs = triton.cdiv(R, _BWD_ROWS)
    dw_part = buffers.empty(programs, D, dtype=torch.float32, device=rows.device)
    _gated_rmsnorm_bwd_kernel[(programs,)](
        rows, gates, weight, rstd, dy, do, dgate, dw_part, R, D,
        ROWS=_BWD_ROWS, BLOCK_R=min(block_r, triton.next_power_of_2(_BWD_ROWS)), BLOCK_D=block_d,
    )  # fmt: skip
    return do, dgate, dw_part.sum(0).to(weight.dtype)


class _GatedRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, gates, weight, eps):
        y, rstd = norm_forward(rows, gates, weight, eps)
        ctx.save_for_backward(rows, gates, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        return (*norm_backward(dy, *ctx.saved_tensors), None)


def gated_rmsnorm_triton(
    o: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """As ``gated_rmsnorm`` (inputs already checked): [..., D] in o's dtype."""
    D = o.shape[-1]
    rows, gates = o.contiguous().view(-1, D), gate.contiguous().view(-1, D)
    if torch.compiler.is_compiling():  # one node of the compiled graph, not a graph break
        y, _ = gated_rmsnorm_op(rows, gates, weight.contiguous(), float(eps))
    else:
        y = _GatedRMSNorm.apply(rows, gates, weight.contiguous(), float(eps))
    return y.view(o.shape)
