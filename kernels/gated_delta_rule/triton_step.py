"""Triton implementation of ``gated_delta_rule_step`` (the "triton" backend): two launches.

1. ``_conv_step_kernel``, one program per (sequence, row, channel tile), where rows 0..M−1
   are the memories' k‖v channels and row M is the shared q: silu(conv) into an fp32 scratch,
   and the tail shifted in place (a memory's only where it is visited). A separate launch,
   because every V tile of step 2 reads the q and k tails that this shift overwrites.
2. ``_memories_step_kernel``, one program per (V tile, sequence, head): l2-normalised q̃ and k̃,
   the gates, and for each visited memory the [K, BV] slice of its state in fp32 registers,
   decayed, corrected and read out; the outputs summed with the memories' weights.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from memlab.kernels import buffers
from memlab.kernels.causal_conv1d.triton_update import conv_taps
from memlab.kernels.gated_delta_rule.triton_chunk_fwd import tile
from memlab.kernels.l2norm.torch_l2norm import EPS
from memlab.kernels.triton_math import softplus

CHANNEL_TILE = 128


@triton.jit
def _conv_step_kernel(
    q, kv, visited, q_tail, k_tail, v_tail, q_conv, k_conv, v_conv, q_out, kv_out,
    stride_q_b, stride_kv_b, stride_kv_m,
    M, HK: tl.constexpr, HV: tl.constexpr, W: tl.constexpr, BC: tl.constexpr, EVERY: tl.constexpr,
):  # fmt: skip
    i_b, i_r, i_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = i_c * BC + tl.arange(0, BC)
    if i_r == M:  # the shared q: always advances
        m_c = c < HK
        x = tl.load(q + i_b * stride_q_b + c, mask=m_c, other=0.0)
        y = conv_taps(x, q_tail + (i_b * HK + c) * (W - 1), q_conv + c * W, m_c, m_c, W)
        tl.store(q_out + i_b * HK + c, y * tl.sigmoid(y), mask=m_c)
    else:  # memory i_r's k (channels below HK), then its v
        row = i_b * M + i_r
        is_k, is_v = c < HK, (c >= HK) & (c < HK + HV)
        x = tl.load(kv + i_b * stride_kv_b + i_r * stride_kv_m + c, mask=is_k | is_v, other=0.0)
        if EVERY:  # every memory visited
            visits = tl.full([BC], 1, dtype=tl.int1)
        else:
            visits = (tl.zeros([BC], dtype=tl.int32) + tl.load(visited + i_b * M + i_r).to(tl.int32)) != 0
        k_tails, v_tails = k_tail + (row * HK + c) * (W - 1), v_tail + (row * HV + c - HK) * (W - 1)
        y = conv_taps(x, k_tails, k_conv + c * W, is_k, is_k & visits, W)
        y += conv_taps(x, v_tails, v_conv + (c - HK) * W, is_v, is_v & visits, W)
        tl.store(kv_out + row * (HK + HV) + c, y * tl.sigmoid(y), mask=is_k | is_v)


@triton.jit
def _memories_step_kernel(
    q_hat, kv_hat, a, b, weights, visited, state, A_log, dt_bias, o,
    stride_ab_b, stride_ab_m, scale, eps,
    M, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    EVERY: tl.constexpr,
):  # fmt: skip
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    b_q = tl.load(q_hat + i_b * H * K + i_h * K + o_k, mask=m_k, other=0.0)
    b_q = b_q * tl.rsqrt(tl.sum(b_q * b_q) + eps) * scale
    A = tl.exp(tl.load(A_log + i_h).to(tl.float32))
    bias = tl.load(dt_bias + i_h).to(tl.float32)
    b_o = tl.zeros([BV], dtype=tl.float32)
    for i_m in range(M):
        visit = 1 if EVERY else tl.load(visited + i_b * M + i_m)
        if visit != 0:
            w = 1.0 if EVERY else tl.load(weights + i_b * M + i_m).to(tl.float32)
            row = i_b * M + i_m
            b_k = tl.load(kv_hat + row * H * (K + V) + i_h * K + o_k, mask=m_k, other=0.0)
            b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k) + eps)
            b_v = tl.load(kv_hat + row * H * (K + V) + H * K + i_h * V + o_v, mask=m_v, other=0.0)
            gate = i_b * stride_ab_b + i_m * stride_ab_m + i_h
            decay = tl.exp(-A * softplus(tl.load(a + gate).to(tl.float32) + bias))
            beta = tl.sigmoid(tl.load(b + gate).to(tl.float32))
            # an int64 base, int32 offsets within the [K, V] state: fewer registers per element
            tile_at = state + (row.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :]
            b_s = tl.load(tile_at, mask=m_kv, other=0.0) * decay
            b_u = beta * (b_v - tl.sum(b_s * b_k[:, None], 0))
            b_s += b_k[:, None] * b_u[None, :]
            b_o += w * tl.sum(b_s * b_q[:, None], 0)
            tl.store(tile_at, b_s, mask=m_kv)
    tl.store(o + (i_b * H + i_h) * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)


def gated_delta_rule_step_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    weights: torch.Tensor | None,
    visited: torch.Tensor | None,
    state: torch.Tensor,
    q_tail: torch.Tensor,
    k_tail: torch.Tensor,
    v_tail: torch.Tensor,
    q_conv: torch.Tensor,
    k_conv: torch.Tensor,
    v_conv: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Arguments as ``gated_delta_rule_step`` (which checks them): the state and the tails
    contiguous; q read in place with any row stride, and k and v where they are adjacent in one
    row (k ‖ v, as one projection gives them)."""
    B, M, H, K, V = state.shape
    W = q_conv.shape[-1]
    kv = k if v.data_ptr() == k.data_ptr() + H * K * k.element_size() and k.stride() == v.stride() else None
    if kv is None or kv.stride(-1) != 1:
        kv = torch.cat([k, v], dim=-1)
    every = visited is None  # weights None too: every memory at weight 1, nothing to read
    if q.stride(-1) != 1:
        q = q.contiguous()
    if every:
        weights = visited = state  # never read
    else:
        weights, visited = weights.contiguous(), visited.contiguous().view(torch.uint8)
    q_hat = buffers.empty(B, H * K, dtype=torch.float32, device=q.device)
    kv_hat = buffers.empty(B, M, H * (K + V), dtype=torch.float32, device=q.device)
    BC = min(CHANNEL_TILE, triton.next_power_of_2(H * (K + V)))
    _conv_step_kernel[(B, M + 1, triton.cdiv(H * (K + V), BC))](
        q, kv, visited, q_tail, k_tail, v_tail,
        q_conv.contiguous(), k_conv.contiguous(), v_conv.contiguous(), q_hat, kv_hat,
        q.stride(0), kv.stride(0), kv.stride(1), M, HK=H * K, HV=H * V, W=W, BC=BC, EVERY=every,
    )  # fmt: skip
    if a.stride() != b.stride() or a.stride(-1) != 1:  # views of one projection share strides
        a, b = a.contiguous(), b.contiguous()
    o = buffers.empty(B, H, V, dtype=q.dtype, device=q.device)
    BV = tile(V, 32)
    _memories_step_kernel[(triton.cdiv(V, BV), B * H)](
        q_hat, kv_hat, a, b, weights, visited, state, A_log.contiguous(), dt_bias.contiguous(), o,
        a.stride(0), a.stride(1), scale, EPS, M, H=H, K=K, V=V, BK=tile(K, 256), BV=BV, EVERY=every,
    )  # fmt: skip
    return o
