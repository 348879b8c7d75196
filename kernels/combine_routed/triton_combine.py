"""Triton routed combine (the "triton" backend of ``combine_routed``).

Forward: a program owns BLOCK_R output rows and walks F in BLOCK_F steps, gathering the S
picked rows of each and summing them with their weights in fp32. Backward, the same walk:
each picked row's gradient is its weight times the output row's gradient, written straight to
its own row (the picks are distinct), and each weight's gradient is the dot of its picked row
with the output row's gradient, summed over the F steps in registers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from memlab.kernels import buffers
from memlab.kernels.combine_routed.library import combine_routed_op

_BLOCK_R, _BLOCK_F, _WARPS = 4, 512, 4


@triton.jit
def _combine_fwd_kernel(
    values, index, weights, out, R, F, S: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr
):
    o_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    m_r = o_r < R
    for f0 in range(0, F, BLOCK_F):
        o_f = f0 + tl.arange(0, BLOCK_F)
        m = m_r[:, None] & (o_f < F)[None, :]
        acc = tl.zeros([BLOCK_R, BLOCK_F], dtype=tl.float32)
        for s in tl.static_range(S):
            row = tl.load(index + o_r.to(tl.int64) * S + s, mask=m_r, other=0).to(tl.int64)
            b_w = tl.load(weights + o_r.to(tl.int64) * S + s, mask=m_r, other=0.0).to(tl.float32)
            b_v = tl.load(values + row[:, None] * F + o_f[None, :], mask=m, other=0.0).to(tl.float32)
            acc += b_w[:, None] * b_v
        tl.store(out + o_r.to(tl.int64)[:, None] * F + o_f[None, :], acc.to(out.dtype.element_ty), mask=m)


@triton.jit
def _combine_bwd_kernel(
    values,
    index,
    weights,
    dout,
    dvalues,
    dweights,
    R,
    F,
    S: tl.constexpr,
    S_POW2: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    o_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    m_r = o_r < R
    o_s = tl.arange(0, S_POW2)
    b_dw = tl.zeros([BLOCK_R, S_POW2], dtype=tl.float32)
    for f0 in range(0, F, BLOCK_F):
        o_f = f0 + tl.arange(0, BLOCK_F)
        m = m_r[:, None] & (o_f < F)[None, :]
        b_do = tl.load(dout + o_r.to(tl.int64)[:, None] * F + o_f[None, :], mask=m, other=0.0).to(tl.float32)
        for s in tl.static_range(S):
            row = tl.load(index + o_r.to(tl.int64) * S + s, mask=m_r, other=0).to(tl.int64)
            b_w = tl.load(weights + o_r.to(tl.int64) * S + s, mask=m_r, other=0.0).to(tl.float32)
            b_v = tl.load(values + row[:, None] * F + o_f[None, :], mask=m, other=0.0).to(tl.float32)
            ptrs = dvalues + row[:, None] * F + o_f[None, :]
            tl.store(ptrs, (b_w[:, None] * b_do).to(dvalues.dtype.element_ty), mask=m)
            b_dw += tl.where(o_s[None, :] == s, tl.sum(b_v * b_do, 1)[:, None], 0.0)
    ptrs = dweights + o_r.to(tl.int64)[:, None] * S + o_s[None, :]
    tl.store(ptrs, b_dw.to(dweights.dtype.element_ty), mask=m_r[:, None] & (o_s < S)[None, :])


def combine_forward(values: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """out [R, F] (values' dtype) for values [N, F], index [R, S] and weights [R, S], contiguous."""
    F, (R, S) = values.shape[1], index.shape
    out = buffers.empty(R, F, dtype=values.dtype, device=values.device)
    _combine_fwd_kernel[(triton.cdiv(R, _BLOCK_R),)](
        values, index, weights, out, R, F, S=S, BLOCK_R=_BLOCK_R, BLOCK_F=_BLOCK_F, num_warps=_WARPS
    )
    return out


def combine_backward(
    dout: torch.Tensor, values: torch.Tensor, index: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """d values [N, F] and d weights [R, S] for dout [R, F] and combine_forward's inputs."""
    F, (R, S) = values.shape[1], index.shape
    dvalues = torch.zeros_like(values)
    dweights = buffers.empty_like(weights)
    _combine_bwd_kernel[(triton.cdiv(R, _BLOCK_R),)](
        values, index, weights, dout.contiguous(), dvalues, dweights, R, F,
        S=S, S_POW2=triton.next_power_of_2(S), BLOCK_R=_BLOCK_R, BLOCK_F=_BLOCK_F, num_warps=_WARPS,
    )  # fmt: skip
    return dvalues, dweights


class _CombineRouted(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, index, weights):
        ctx.save_for_backward(values, index, weights)
        return combine_forward(values, index, weights)

    @staticmethod
    def backward(ctx, dout):
        dvalues, dweights = combine_backward(dout, *ctx.saved_tensors)
        return dvalues, None, dweights


def combine_routed_triton(values: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """As ``combine_routed`` (inputs already checked): [R, F] in values' dtype."""
    args = (values.contiguous(), index.contiguous(), weights.contiguous())
    if torch.compiler.is_compiling():  # one node of the compiled graph, not a graph break
        return combine_routed_op(*args)
    return _CombineRouted.apply(*args)
