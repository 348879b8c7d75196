"""Triton implementation of ``fused_recurrent_gated_delta_rule`` (the "triton" backend).

One program per (V tile, sequence, head) walks the tokens in order with its [K, BV] slice of
the state in fp32 registers: S ← e^{g} S;  S ← S + k (β (v − Sᵀk))ᵀ;  o = scale Sᵀq. This is
the decoding path (T small), so it is forward only: a call that would need gradients is
refused with a clear error instead of silently running something else.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from memlab.kernels import buffers
from memlab.kernels.backend import KernelInputError
from memlab.kernels.gated_delta_rule.triton_chunk import TRITON_DTYPES
from memlab.kernels.gated_delta_rule.triton_chunk_fwd import tile
from memlab.kernels.l2norm import l2norm

OP = "fused_recurrent_gated_delta_rule"


@triton.jit(do_not_specialize=["T"])
def _fused_recurrent_kernel(
    q,
    k,
    v,
    g,
    beta,
    o,
    h0,
    ht,
    scale,
    cu_seqlens,
    T,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        seq_len = (tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos).to(tl.int32)
    else:
        bos = i_n.to(tl.int64) * T
        seq_len = T
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    state = (i_nh.to(tl.int64) * K + o_k[:, None]) * V + o_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + state, mask=m_kv, other=0.0).to(tl.float32)
    for t in range(seq_len):
        token = (bos + t) * H + i_h
        b_q = tl.load(q + token * K + o_k, mask=m_k, other=0.0).to(tl.float32) * scale
        b_k = tl.load(k + token * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(v + token * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        b_g = tl.load(g + token).to(tl.float32)
        b_beta = tl.load(beta + token).to(tl.float32)
        b_h *= tl.exp(b_g)
        b_v = b_beta * (b_v - tl.sum(b_h * b_k[:, None], 0))
        b_h += b_k[:, None] * b_v[None, :]
        b_o = tl.sum(b_h * b_q[:, None], 0)
        tl.store(o + token * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
    if STORE_HT:
        tl.store(ht + state, b_h, mask=m_kv)


def fused_recurrent_gated_delta_rule_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Triton token-by-token gated delta rule; arguments as fused_recurrent_gated_delta_rule.

    Forward only (decoding): raises KernelInputError when called with grad enabled on an
    input that requires grad; train through chunk_gated_delta_rule or backend="torch".
    q, k, v in fp16, bf16 or fp32; the state is fp32 and so is the final state.
    """
    tensors = (q, k, v, g, beta, initial_state)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors):
        raise KernelInputError(
            f"{OP}: the Triton kernel has no backward (it is the decoding path); call it under "
            "torch.no_grad(), use chunk_gated_delta_rule for training, or backend='torch'"
        )
    if q.dtype not in TRITON_DTYPES:
        raise KernelInputError(
            f"{OP}: the Triton kernels take fp16, bf16 or fp32 q/k/v, got {q.dtype}; use backend='torch'"
        )
    B, T, H, K = q.shape
    V = v.shape[-1]
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q, backend="triton"), l2norm(k, backend="triton")
    scale = K**-0.5 if scale is None else float(scale)
    num_seqs = B if cu_seqlens is None else cu_seqlens.numel() - 1
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    h0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
    o = buffers.empty_like(v)
    ht = (
        buffers.empty(num_seqs, H, K, V, dtype=torch.float32, device=q.device) if output_final_state else None
    )
    BV = tile(V, 32)
    _fused_recurrent_kernel[(triton.cdiv(V, BV), num_seqs * H)](
        q, k, v, g, beta, o, h0, ht, scale, cu_seqlens, T,
        H=H, K=K, V=V, BK=tile(K, 256), BV=BV,
        USE_H0=initial_state is not None, STORE_HT=output_final_state,
        IS_VARLEN=cu_seqlens is not None, num_warps=4,
    )  # fmt: skip
    return o, ht
