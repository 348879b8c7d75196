"""Triton implementation of ``causal_conv1d_update``: one program per (sequence, channel tile);
``conv_taps`` is shared with the gated-delta-rule decoding step."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from memlab.kernels import buffers

CHANNEL_TILE = 256


@triton.jit
def conv_taps(x, tail, weight, m_c, advance, W: tl.constexpr):
    """Σ_w weight[w] · window[w] in fp32 over the window tail ‖ x (0 where not m_c), the tail
    shifted by x in place where ``advance``. tail, weight: pointers to each channel's W−1 and
    W values."""
    acc = x.to(tl.float32) * tl.load(weight + W - 1, mask=m_c, other=0.0).to(tl.float32)
    newer = x  # slot w of the new tail holds what slot w + 1 held (x for the last slot)
    for w in tl.static_range(W - 2, -1, -1):
        t_w = tl.load(tail + w, mask=m_c, other=0.0)
        acc += t_w.to(tl.float32) * tl.load(weight + w, mask=m_c, other=0.0).to(tl.float32)
        tl.store(tail + w, newer, mask=advance)
        newer = t_w
    return acc


@triton.jit
def _update_kernel(
    x, tail, weight, bias, y, stride_x, C,
    W: tl.constexpr, BC: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
):  # fmt: skip
    i_b, i_c = tl.program_id(0), tl.program_id(1)
    c = i_c * BC + tl.arange(0, BC)
    m_c = c < C
    b_x = tl.load(x + i_b * stride_x + c, mask=m_c, other=0.0)
    acc = conv_taps(b_x, tail + (i_b * C + c) * (W - 1), weight + c * W, m_c, m_c, W)
    if HAS_BIAS:
        acc += tl.load(bias + c, mask=m_c, other=0.0).to(tl.float32)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(y + i_b * C + c, acc.to(y.dtype.element_ty), mask=m_c)


def causal_conv1d_update_triton(
    x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool
) -> torch.Tensor:
    """Arguments as ``causal_conv1d_update`` (which checks them)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    B, C = x.shape
    y = buffers.empty(B, C, dtype=x.dtype, device=x.device)
    BC = min(CHANNEL_TILE, triton.next_power_of_2(C))
    _update_kernel[(B, triton.cdiv(C, BC))](
        x, tail, weight.contiguous(), bias, y, x.stride(0), C,
        W=weight.shape[-1], BC=BC, HAS_BIAS=bias is not None, SILU=silu,
    )  # fmt: skip
    return y
