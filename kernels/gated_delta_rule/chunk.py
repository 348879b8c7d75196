"""Public entry point of the chunked gated delta rule (training and prefill)."""

from __future__ import annotations

import torch

from memlab.kernels.backend import HAS_TRITON, opaque, resolve_fp32_backend
from memlab.kernels.gated_delta_rule.checks import check_inputs
from memlab.kernels.gated_delta_rule.torch_chunk import OP, chunk_gated_delta_rule_torch


def chunk_gated_delta_rule_triton(*args, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The Triton kernels, imported on first use: Triton reads TRITON_INTERPRET when a
    kernel is defined, so importing memlab.kernels must not define them."""
    from memlab.kernels.gated_delta_rule.triton_chunk import chunk_gated_delta_rule_triton

    return chunk_gated_delta_rule_triton(*args, **kwargs)


# Backend name -> implementation. torch.compile traces the op's checks and its Triton path
# (custom ops: library.py); the twin stays a graph break, as it always was.
_IMPLEMENTATIONS = {"torch": opaque(chunk_gated_delta_rule_torch)}
if HAS_TRITON:
    _IMPLEMENTATIONS["triton"] = chunk_gated_delta_rule_triton


def chunk_gated_delta_rule(
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
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule over whole sequences, evaluated chunk by chunk (chunk size 64).

    S_t = exp(g_t) (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ;  o_t = scale · S_tᵀ q_t.

    Args:
        q, k: [B, T, H, K] and v: [B, T, H, V], one float dtype; any T; K, V <= 256.
            q and k should be L2-normalised (or pass use_qk_l2norm_in_kernel=True): the
            chunked form is only well conditioned for unit-norm keys.
        g: [B, T, H] log-space decay (<= 0); beta: [B, T, H] in (0, 1); any float dtype.
        scale: defaults to K ** -0.5.
        initial_state: [N, H, K, V] float, N = B, or the number of sequences in cu_seqlens.
        output_final_state: also return the state after the last token.
        cu_seqlens: int32/int64 [N + 1] offsets of sequences packed along T (B must be 1).
        use_qk_l2norm_in_kernel: L2-normalise q and k over K inside the op (differentiably).
        backend: "auto" | "triton" | "torch"; default from $MEMLAB_KERNEL_BACKEND, else "auto"
            (the Triton kernels on CUDA tensors, except fp64 ones; the PyTorch twin otherwise).

    Returns:
        o [B, T, H, V] in q's dtype, and the final states [N, H, K, V] in fp32 (fp64 for
        fp64 inputs) if output_final_state, else None. Differentiable with respect to q, k,
        v, g, beta and initial_state.

    Raises:
        KernelInputError: for inputs the op cannot take or a backend it does not have.
    """
    check_inputs(OP, q, k, v, g, beta, scale, initial_state, cu_seqlens)
    implementation = _IMPLEMENTATIONS[resolve_fp32_backend(backend, q, OP, (q,))]
    return implementation(
        q,
        k,
        v,
        g,
        beta,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        cu_seqlens=cu_seqlens,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
    )
