"""Triton implementation of ``chunk_gated_delta_rule`` (the "triton" backend).

Forward: triton_chunk_fwd (prepare, state pass, output). Backward recomputes the forward's
intermediates (G, Ai, w, u, h, v') instead of keeping them, then runs triton_chunk_bwd.
Only q, k, v, g, beta (and initial_state) are saved for backward. The optional q/k L2 norm
and the reshaping of the batch into one packed time axis happen in PyTorch around it.
"""

from __future__ import annotations

import torch

from memlab.kernels.backend import KernelInputError
from memlab.kernels.gated_delta_rule.common import l2norm
from memlab.kernels.gated_delta_rule.torch_chunk import OP
from memlab.kernels.gated_delta_rule.triton_chunk_bwd import dqkw, intra_dv, state_grad_pass, wy_backward
from memlab.kernels.gated_delta_rule.triton_chunk_fwd import output, prepare, state_pass
from memlab.kernels.gated_delta_rule.triton_chunk_index import ChunkIndex, build_chunk_index

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _forward_states(
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    index: ChunkIndex,
) -> tuple[torch.Tensor, ...]:
    """(G, Ai, w, h, v', final state) of the forward, shared by forward and backward."""
    gcum, Ai, w, u = prepare(k, v, g, beta, index)
    h, v_new, final_state = state_pass(k, w, u, gcum, initial_state, output_final_state, index)
    return gcum, Ai, w, h, v_new, final_state


class _ChunkGatedDeltaRule(torch.autograd.Function):
    """q, k [Tp, H, K], v [Tp, H, V], g, beta [Tp, H] packed along Tp, scale already chosen."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, initial_state, scale, output_final_state, index):
        gcum, _, _, h, v_new, final_state = _forward_states(
            k, v, g, beta, initial_state, output_final_state, index
        )
        o = output(q, k, v_new, h, gcum, scale, index)
        ctx.save_for_backward(q, k, v, g, beta, initial_state)
        ctx.scale, ctx.index = scale, index
        if final_state is not None:
            return o, final_state
        return o, None

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, beta, initial_state = ctx.saved_tensors
        scale, index = ctx.scale, ctx.index
        gcum, Ai, w, h, v_new, _ = _forward_states(k, v, g, beta, initial_state, False, index)
        do = do.contiguous()
        dv_local = intra_dv(q, k, do, gcum, scale, index)
        dh, dv_new, dh0 = state_grad_pass(
            q, k, w, do, dv_local, gcum, dht, initial_state is not None, scale, index, h.dtype
        )
        dq, dk_part, dw, dG_part = dqkw(q, k, v_new, do, dv_new, h, dh, gcum, scale, index)
        dk, dv, dbeta, dg = wy_backward(k, v, beta, gcum, Ai, dw, dv_new, dk_part, dG_part, index)
        if dh0 is not None:
            dh0 = dh0.to(initial_state.dtype)
        return dq, dk, dv, dg.to(g.dtype), dbeta.to(beta.dtype), dh0, None, None, None


def chunk_gated_delta_rule_triton(
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
    """Triton chunked gated delta rule; arguments as chunk_gated_delta_rule.

    q, k, v in fp16, bf16 or fp32 (fp64 is refused: use backend="torch"); dots accumulate
    in fp32 (3xTF32 for fp32 inputs), the state and G are fp32 throughout. The final
    state is fp32. Inputs are validated by the dispatcher; cu_seqlens values are trusted
    (reading them back to check would cost a host sync per call).
    """
    if q.dtype not in TRITON_DTYPES:
        raise KernelInputError(
            f"{OP}: the Triton kernels take fp16, bf16 or fp32 q/k/v, got {q.dtype}; use backend='torch'"
        )
    B, T, H, K = q.shape
    V = v.shape[-1]
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    scale = K**-0.5 if scale is None else float(scale)
    index = build_chunk_index(B, T, cu_seqlens)
    h0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
    packed = (x.reshape(B * T, H, -1).contiguous() for x in (q, k, v))
    o, final_state = _ChunkGatedDeltaRule.apply(
        *packed,
        g.reshape(B * T, H).contiguous(),
        beta.reshape(B * T, H).contiguous(),
        h0,
        scale,
        output_final_state,
        index,
    )
    return o.reshape(B, T, H, V), final_state
