"""Triton L2 norm over the last dim (the "triton" backend of ``l2norm``): one pass over x
forward, keeping 1/‖x‖ per row; one pass over y and dy backward,
dx = r · (dy − (y · dy) y) with r = 1/sqrt(Σ x² + eps) and y = r · x.

The backward reads the output y rather than the input x: the gated delta rule, which takes
y next, keeps y for its own backward anyway, so the norm adds no saved tensor of its own.
In 16 bits that costs some accuracy only where dy is nearly parallel to y (dx then nearly 0):
dx is off by about one rounding of r·|dy|, as large as the rounding dy arrived with.
Rows narrower than FROM_OUTPUT_MIN_D keep x instead: one component can then hold nearly all
of the norm, y rounds to ±1 in 16 bits, and dy − (y · dy) y cancels to nothing."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from memlab.kernels import buffers
from memlab.kernels.l2norm.library import l2norm_op

# Elements of the [rows, D] tile one program handles.
_TILE = 4096
FROM_OUTPUT_MIN_D = 16


@triton.jit
def _l2norm_fwd_kernel(x, y, rstd, R, D, eps, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    o_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    o_d = tl.arange(0, BLOCK_D)
    mask = (o_r < R)[:, None] & (o_d < D)[None, :]
    offsets = o_r.to(tl.int64)[:, None] * D + o_d[None, :]
    b_x = tl.load(x + offsets, mask=mask, other=0.0).to(tl.float32)
    b_r = 1.0 / tl.sqrt(tl.sum(b_x * b_x, 1) + eps)
    tl.store(y + offsets, (b_x * b_r[:, None]).to(y.dtype.element_ty), mask=mask)
    tl.store(rstd + o_r, b_r, mask=o_r < R)


@triton.jit
def _l2norm_bwd_kernel(
    saved, dy, rstd, dx, R, D, FROM_OUTPUT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr
):
    o_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    o_d = tl.arange(0, BLOCK_D)
    mask = (o_r < R)[:, None] & (o_d < D)[None, :]
    offsets = o_r.to(tl.int64)[:, None] * D + o_d[None, :]
    b_r = tl.load(rstd + o_r, mask=o_r < R, other=0.0)
    b_y = tl.load(saved + offsets, mask=mask, other=0.0).to(tl.float32)
    if not FROM_OUTPUT:  # saved holds x
        b_y = b_y * b_r[:, None]
    b_dy = tl.load(dy + offsets, mask=mask, other=0.0).to(tl.float32)
    b_ydy = tl.sum(b_y * b_dy, 1)
    b_dx = (b_dy - b_y * b_ydy[:, None]) * b_r[:, None]
    tl.store(dx + offsets, b_dx.to(dx.dtype.element_ty), mask=mask)


def _blocks(D: int) -> tuple[int, int]:
    block_d = triton.next_power_of_2(D)
    return max(1, _TILE // block_d), block_d


def l2norm_forward(rows: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """y [R, D] (rows' dtype) and rstd fp32 [R] for rows [R, D] contiguous."""
    R, D = rows.shape
    block_r, block_d = _blocks(D)
    y = buffers.empty_like(rows)
    rstd = buffers.empty(R, dtype=torch.float32, device=rows.device)
    _l2norm_fwd_kernel[(triton.cdiv(R, block_r),)](rows, y, rstd, R, D, eps, BLOCK_R=block_r, BLOCK_D=block_d)
    return y, rstd


def l2norm_backward(
    dy: torch.Tensor, saved: torch.Tensor, rstd: torch.Tensor, from_output: bool
) -> torch.Tensor:
    """dx [R, D] for dy [R, D] and the saved rows [R, D]: the output y if ``from_output``
    (see FROM_OUTPUT_MIN_D), else the input x."""
    R, D = saved.shape
    block_r, block_d = _blocks(D)
    dy = dy.contiguous()
    dx = buffers.empty_like(saved)
    _l2norm_bwd_kernel[(triton.cdiv(R, block_r),)](
        saved, dy, rstd, dx, R, D, FROM_OUTPUT=from_output, BLOCK_R=block_r, BLOCK_D=block_d
    )
    return dx


def saves_output(D: int) -> bool:
    """Whether the backward reads the output rather than the input (FROM_OUTPUT_MIN_D)."""
    return D >= FROM_OUTPUT_MIN_D


class _L2Norm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, eps):
        y, rstd = l2norm_forward(rows, eps)
        ctx.from_output = saves_output(rows.shape[1])
        ctx.save_for_backward(y if ctx.from_output else rows, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        return l2norm_backward(dy, *ctx.saved_tensors, ctx.from_output), None


def l2norm_triton(x: torch.Tensor, eps: float) -> torch.Tensor:
    """As ``l2norm`` (x already checked): [..., D] in x's dtype."""
    rows = x.contiguous().view(-1, x.shape[-1])
    if torch.compiler.is_compiling():  # one node of the compiled graph, not a graph break
        y, _ = l2norm_op(rows, float(eps))
    else:
        y = _L2Norm.apply(rows, float(eps))
    return y.view(x.shape)
