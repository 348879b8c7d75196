"""The Triton path of ``chunk_gated_delta_rule`` as torch.library custom ops, the form
torch.compile takes it in (see kernels/causal_conv1d/library.py). Inputs are packed along one
time axis, Tp = batch · seq_len tokens (or seq_len with cu_seqlens); the chunk layout is built
inside each op from (batch, seq_len, cu_seqlens). A final state that was not asked for comes back
empty, as does the initial state's gradient without an initial state."""

import torch
from torch import Tensor


@torch.library.custom_op("memlab::chunk_gated_delta_rule", mutates_args=())
def chunk_gated_delta_rule_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    initial_state: Tensor | None,
    cu_seqlens: Tensor | None,
    batch: int,
    seq_len: int,
    scale: float,
    output_final_state: bool,
) -> tuple[Tensor, Tensor]:
    """triton_chunk.chunk_forward: o [Tp, H, V] (v's dtype) and the final states [N, H, K, V]
    fp32 (empty unless ``output_final_state``)."""
    from memlab.kernels.gated_delta_rule.triton_chunk import chunk_forward
    from memlab.kernels.gated_delta_rule.triton_chunk_index import build_chunk_index

    index = build_chunk_index(batch, seq_len, cu_seqlens)
    o, final_state = chunk_forward(q, k, v, g, beta, initial_state, index, scale, output_final_state)
    return o, (q.new_empty(0, dtype=torch.float32) if final_state is None else final_state)


@chunk_gated_delta_rule_op.register_fake
def _(q, k, v, g, beta, initial_state, cu_seqlens, batch, seq_len, scale, output_final_state):
    if not output_final_state:
        return v.new_empty(v.shape), q.new_empty(0, dtype=torch.float32)
    num_seqs = batch if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return v.new_empty(v.shape), q.new_empty(
        num_seqs, q.shape[1], q.shape[2], v.shape[2], dtype=torch.float32
    )


@torch.library.custom_op("memlab::chunk_gated_delta_rule_backward", mutates_args=())
def chunk_gated_delta_rule_backward_op(
    do: Tensor,
    dht: Tensor | None,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    initial_state: Tensor | None,
    cu_seqlens: Tensor | None,
    batch: int,
    seq_len: int,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """triton_chunk.chunk_backward: dq, dk, dv, dg, dbeta like their inputs, and dh0 (empty
    without an initial state)."""
    from memlab.kernels.gated_delta_rule.triton_chunk import chunk_backward
    from memlab.kernels.gated_delta_rule.triton_chunk_index import build_chunk_index

    index = build_chunk_index(batch, seq_len, cu_seqlens)
    *grads, dh0 = chunk_backward(do, dht, q, k, v, g, beta, initial_state, index, scale)
    return (*grads, q.new_empty(0, dtype=torch.float32) if dh0 is None else dh0)


@chunk_gated_delta_rule_backward_op.register_fake
def _(do, dht, q, k, v, g, beta, initial_state, cu_seqlens, batch, seq_len, scale):
    dh0 = (
        q.new_empty(0, dtype=torch.float32)
        if initial_state is None
        else initial_state.new_empty(initial_state.shape)
    )
    return (*(t.new_empty(t.shape) for t in (q, k, v, g, beta)), dh0)


def _setup_context(ctx, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
    q, k, v, g, beta, initial_state, cu_seqlens, batch, seq_len, scale, output_final_state = inputs
    ctx.save_for_backward(q, k, v, g, beta, initial_state, cu_seqlens)
    ctx.shape, ctx.scale = (batch, seq_len), scale
    ctx.output_final_state, ctx.has_initial_state = output_final_state, initial_state is not None


def _backward(ctx, do: Tensor, dht: Tensor | None) -> tuple:
    q, k, v, g, beta, initial_state, cu_seqlens = ctx.saved_tensors
    dht = dht if ctx.output_final_state else None  # the empty placeholder's gradient
    dq, dk, dv, dg, dbeta, dh0 = chunk_gated_delta_rule_backward_op(
        do, dht, q, k, v, g, beta, initial_state, cu_seqlens, *ctx.shape, ctx.scale
    )
    return dq, dk, dv, dg, dbeta, (dh0 if ctx.has_initial_state else None), None, None, None, None, None


chunk_gated_delta_rule_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op(
    "memlab::gated_delta_rule_step", mutates_args=("state", "q_tail", "k_tail", "v_tail")
)
def gated_delta_rule_step_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    weights: Tensor | None,
    visited: Tensor | None,
    state: Tensor,
    q_tail: Tensor,
    k_tail: Tensor,
    v_tail: Tensor,
    q_conv: Tensor,
    k_conv: Tensor,
    v_conv: Tensor,
    A_log: Tensor,
    dt_bias: Tensor,
    scale: float,
) -> Tensor:
    """triton_step.gated_delta_rule_step_triton: o [B, H, V] in q's dtype; the memories and the
    conv tails updated in place (a decoding step: forward only)."""
    from memlab.kernels.gated_delta_rule.triton_step import gated_delta_rule_step_triton

    return gated_delta_rule_step_triton(
        q, k, v, a, b, weights, visited, state, q_tail, k_tail, v_tail,
        q_conv, k_conv, v_conv, A_log, dt_bias, scale,
    )  # fmt: skip


@gated_delta_rule_step_op.register_fake
def _(q, k, v, a, b, weights, visited, state, q_tail, k_tail, v_tail,
      q_conv, k_conv, v_conv, A_log, dt_bias, scale):  # fmt: skip
    B, _, H, _, V = state.shape
    return q.new_empty(B, H, V)
