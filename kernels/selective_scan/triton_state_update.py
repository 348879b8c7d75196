"""Triton kernel for one decoding step of the selective scan, updating the state in place.

One program owns a block of channels of one batch element and all N states of each: it
reads the [BLOCK_D, N] slice of the state once, applies the step in fp32 registers, writes it
back where it lives (any strides: the state may be a view into a larger cache) and reduces
over N for the output. Given dt_proj it first projects its channels' dt from the low-rank
one, and given A_log it takes A = −exp(A_log): two launches fewer per Mamba step.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from memlab.kernels import buffers
from memlab.kernels.backend import refuse_grad
from memlab.kernels.selective_scan.triton_scan import program_channels
from memlab.kernels.triton_math import softplus

# Elements of the [BLOCK_D, N] state block per program, at most.
_TILE = 2048
# Programs a launch should have: at decoding's batch 1 a few large blocks leave most SMs idle,
# so the channel block shrinks (to no fewer than _MIN_BLOCK_D channels) until there are this many.
_MIN_PROGRAMS = 256
_MIN_BLOCK_D = 16
# Columns of dt_proj read per iteration when the op projects a low-rank dt itself.
DT_RANK_TILE = 64


@triton.jit
def _state_update_kernel(
    state_ptr,
    x_ptr,
    dt_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    dt_proj_ptr,
    out_ptr,
    dim,
    N,
    R,
    dg,
    gB,
    gC,
    B_div,
    C_div,
    stride_xb,
    stride_dtb,
    stride_zb,
    stride_Bb,
    stride_Bg,
    stride_Cb,
    stride_Cg,
    stride_sb,
    stride_sd,
    stride_sn,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_DT_PROJ: tl.constexpr,
    A_IS_LOG: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """Grid (cdiv(dg, BLOCK_D), G, batch): channels g·dg + [pid0·BLOCK_D, +BLOCK_D) of group g."""
    g, b, d, d_mask = program_channels(dg, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    n_mask = n < N
    dn_mask = d_mask[:, None] & n_mask[None, :]

    # x, dt, z, B and C may be views into wider projections' outputs (unit stride in the
    # last dim): no copies before the launch
    x = tl.load(x_ptr + b * stride_xb + d, mask=d_mask, other=0.0).to(tl.float32)
    if HAS_DT_PROJ:  # dt [batch, R] low-rank: each channel's row of dt_proj [dim, R] against it
        dt = tl.zeros([BLOCK_D], dtype=tl.float32)
        for r0 in range(0, R, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)
            low = tl.load(dt_ptr + b * stride_dtb + r, mask=r < R, other=0.0).to(tl.float32)
            w_mask = d_mask[:, None] & (r < R)[None, :]
            w = tl.load(dt_proj_ptr + d[:, None] * R + r[None, :], mask=w_mask, other=0.0)
            dt += tl.sum(w.to(tl.float32) * low[None, :], axis=1)
    else:
        dt = tl.load(dt_ptr + b * stride_dtb + d, mask=d_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = softplus(dt)
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=dn_mask, other=0.0).to(tl.float32)
    if A_IS_LOG:
        A = -tl.exp(A)
    Bv = tl.load(B_ptr + b * stride_Bb + (g // B_div) * stride_Bg + n, mask=n_mask, other=0.0)
    Cv = tl.load(C_ptr + b * stride_Cb + (g // C_div) * stride_Cg + n, mask=n_mask, other=0.0)
    Bv, Cv = Bv.to(tl.float32), Cv.to(tl.float32)

    s_ptrs = state_ptr + b * stride_sb + d[:, None] * stride_sd + n[None, :] * stride_sn
    h = tl.load(s_ptrs, mask=dn_mask, other=0.0)
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bv[None, :]
    tl.store(s_ptrs, h, mask=dn_mask)

    out = tl.sum(h * Cv[None, :], axis=1)
    if HAS_D:
        out += tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32) * x
    if HAS_Z:
        z = tl.load(z_ptr + b * stride_zb + d, mask=d_mask, other=0.0).to(tl.float32)
        out *= z * tl.sigmoid(z)
    tl.store(out_ptr + b * dim + d, out.to(out_ptr.dtype.element_ty), mask=d_mask)


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def selective_state_update_triton(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_proj: torch.Tensor | None = None,
    A_log: torch.Tensor | None = None,
) -> torch.Tensor:
    """One step of the selective scan with the Triton kernel; updates ``state`` in place.

    Shapes as ``selective_state_update``: state [batch, dim, N] float32 (any strides); x, dt,
    z: [batch, dim] (dt [batch, R] with dt_proj [dim, R]); A or A_log: [dim, N]; B, C:
    [batch, N] or [batch, groups, N]; D, dt_bias: [dim].
    Returns out [batch, dim] in x's dtype. Decoding only: raises KernelInputError when
    gradients are enabled and an input requires grad, rather than dropping its gradient.
    Inputs are otherwise assumed valid (``selective_state_update`` checks them).
    """
    tensors = {"state": state, "x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z, "dt_bias": dt_bias}
    tensors |= {"dt_proj": dt_proj, "A_log": A_log}
    refuse_grad("selective_state_update", tensors, " or use backend='torch'")
    batch, dim, N = state.shape
    Bg, Cg = (_unit_last(t.unsqueeze(1) if t.dim() == 2 else t) for t in (B, C))
    gB, gC = Bg.shape[1], Cg.shape[1]
    G = math.lcm(gB, gC)
    dg = dim // G
    x, dt = _unit_last(x), _unit_last(dt)
    A = (A_log if A is None else A).contiguous()
    R = 0 if dt_proj is None else dt_proj.shape[1]
    dt_proj = None if dt_proj is None else dt_proj.contiguous()
    z = _unit_last(z) if z is not None else None
    out = buffers.empty(batch, dim, dtype=x.dtype, device=x.device)
    block_n = triton.next_power_of_2(N)
    block_d = min(max(_TILE // block_n, 1), triton.next_power_of_2(dg))
    while block_d > _MIN_BLOCK_D and triton.cdiv(dg, block_d) * G * batch < _MIN_PROGRAMS:
        block_d //= 2
    _state_update_kernel[(triton.cdiv(dg, block_d), G, batch)](
        state, x, dt, A, Bg, Cg, D, z, dt_bias, dt_proj, out,
        dim, N, R, dg, gB, gC, G // gB, G // gC, x.stride(0), dt.stride(0),
        0 if z is None else z.stride(0), Bg.stride(0), Bg.stride(1), Cg.stride(0), Cg.stride(1),
        *state.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
        HAS_DT_PROJ=dt_proj is not None, A_IS_LOG=A_log is not None,
        BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_R=min(max(triton.next_power_of_2(R), 16), DT_RANK_TILE),
    )  # fmt: skip
    return out
