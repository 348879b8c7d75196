"""Triton implementation of ``chunk_gated_delta_rule`` (the "triton" backend).

Forward: triton_chunk_fwd (prepare, state pass, output). The forward keeps only its inputs;
the backward runs prepare again (G, Ai, w, u: the size of k and v plus 65 floats per token and
head, which a training step would otherwise hold for every layer until its backward) and the
state pass (the chunk states h, K·V floats per chunk and head), then triton_chunk_bwd. The
optional q/k L2 norm and the reshaping of the batch into one packed time axis happen in
PyTorch around it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memlab.kernels.backend import KernelInputError
from memlab.kernels.gated_delta_rule.library import chunk_gated_delta_rule_op
from memlab.kernels.gated_delta_rule.torch_chunk import OP
from memlab.kernels.gated_delta_rule.triton_chunk_bwd import dqkw, intra_dv, state_grad_pass, wy_backward
from memlab.kernels.gated_delta_rule.triton_chunk_fwd import output, prepare, state_pass
from memlab.kernels.gated_delta_rule.triton_chunk_index import ChunkIndex, build_chunk_index
from memlab.kernels.l2norm import l2norm

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_DIM = 16  # K and V below it are zero-padded to it


def chunk_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None,
    index: ChunkIndex,
    scale: float,
    output_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """o [Tp, H, V] and the final states [N, H, K, V] fp32 (None unless output_final_state)
    for q, k [Tp, H, K], v [Tp, H, V], g, beta [Tp, H] packed along Tp (contiguous), an fp32
    initial state [N, H, K, V] or None, and the chunk layout (build_chunk_index)."""
    gcum, Ai, w, u = prepare(k, v, g, beta, index)
    del Ai  # each buffer is released as soon as its last reader is done: a lower peak
    h, v_new, final_state = state_pass(k, w, u, gcum, initial_state, output_final_state, index)
    del w, u
    return output(q, k, v_new, h, gcum, scale, index), final_state


def chunk_backward(
    do: torch.Tensor,
    dht: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None,
    index: ChunkIndex,
    scale: float,
) -> tuple[torch.Tensor, ...]:
    """dq, dk, dv, dg, dbeta (each like its input) and dh0 (fp32, None without an initial
    state) for the output's and final state's gradients do, dht (or None) and chunk_forward's
    inputs; prepare and the state pass run again rather than being kept from the forward."""
    gcum, Ai, w, u = prepare(k, v, g, beta, index)
    h, v_new, _ = state_pass(k, w, u, gcum, initial_state, False, index)
    del u  # as in chunk_forward, each buffer goes once its last reader is done
    # the kernels read dense rows: a gradient may come broadcast (that of final_state.sum())
    do, dht = do.contiguous(), (None if dht is None else dht.contiguous())
    dv_local = intra_dv(q, k, do, gcum, scale, index)
    dh, dv_new, dh0 = state_grad_pass(
        q, k, w, do, dv_local, gcum, dht, initial_state is not None, scale, index, h.dtype
    )
    del w, dv_local
    dq, dk_part, dw, dG_part = dqkw(q, k, v_new, do, dv_new, h, dh, gcum, scale, index)
    del h, dh, v_new
    dk, dv, dbeta, dg = wy_backward(k, v, beta, gcum, Ai, dw, dv_new, dk_part, dG_part, index)
    if dh0 is not None:
        dh0 = dh0.to(initial_state.dtype)
    return dq, dk, dv, dg.to(g.dtype), dbeta.to(beta.dtype), dh0


class _ChunkGatedDeltaRule(torch.autograd.Function):
    """chunk_forward / chunk_backward for eager calls; the forward keeps only its inputs."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, initial_state, index, scale, output_final_state):
        ctx.save_for_backward(q, k, v, g, beta, initial_state)
        ctx.index, ctx.scale = index, scale
        return chunk_forward(q, k, v, g, beta, initial_state, index, scale, output_final_state)

    @staticmethod
    def backward(ctx, do, dht):
        grads = chunk_backward(do, dht, *ctx.saved_tensors, ctx.index, ctx.scale)
        return (*grads, None, None, None)


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
        q, k = l2norm(q, backend="triton"), l2norm(k, backend="triton")
    scale = K**-0.5 if scale is None else float(scale)
    h0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
    # Heads narrower than MIN_HEAD_DIM run zero-padded to it, in fp32 (zero key and value
    # components leave every output and the state's other entries unchanged). Kernels compiled
    # for K or V of 1 misbehave in bf16 with Triton 3.6 (docs/kernel-design.md).
    pad_k, pad_v = max(MIN_HEAD_DIM - K, 0), max(MIN_HEAD_DIM - V, 0)
    out_dtype = v.dtype
    if pad_k or pad_v:
        q, k = F.pad(q.float(), (0, pad_k)), F.pad(k.float(), (0, pad_k))
        v = F.pad(v.float(), (0, pad_v))
        h0 = None if h0 is None else F.pad(h0, (0, pad_v, 0, pad_k))
    packed = [x.reshape(B * T, H, -1).contiguous() for x in (q, k, v)]
    packed += [x.reshape(B * T, H).contiguous() for x in (g, beta)]
    if torch.compiler.is_compiling():  # one node of the compiled graph, not a graph break
        o, final_state = chunk_gated_delta_rule_op(*packed, h0, cu_seqlens, B, T, scale, output_final_state)
        final_state = final_state if output_final_state else None
    else:
        index = build_chunk_index(B, T, cu_seqlens)
        o, final_state = _ChunkGatedDeltaRule.apply(*packed, h0, index, scale, output_final_state)
    if not (pad_k or pad_v):
        return o.reshape(B, T, H, V), final_state
    o = o.reshape(B, T, H, V + pad_v)[..., :V].to(out_dtype).contiguous()
    return o, (None if final_state is None else final_state[..., :K, :V].contiguous())
