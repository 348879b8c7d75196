"""Token-by-token gated delta rule, the form used for decoding (T small).

The PyTorch twin applies each token as a rank-one correction of the decayed state,
S ← αS;  S ← S + β k (v − Sᵀk)ᵀ, which is O(KV) per token instead of the O(K²V) of
multiplying by the explicit transition matrix.
"""

from __future__ import annotations

import torch

from memlab.kernels.backend import HAS_TRITON, opaque, resolve_fp32_backend
from memlab.kernels.gated_delta_rule.checks import check_inputs
from memlab.kernels.gated_delta_rule.common import run_twin

OP = "fused_recurrent_gated_delta_rule"


def _recurrent_dense(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, H, K = q.shape
    V = v.shape[-1]
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state
    outputs = []
    for t in range(T):
        k_t = k[:, t, :, :, None]
        S = torch.exp(g[:, t])[:, :, None, None] * S
        residual = v[:, t] - (S * k_t).sum(-2)
        S = S + k_t * (beta[:, t, :, None] * residual)[:, :, None, :]
        outputs.append((S * q[:, t, :, :, None]).sum(-2))
    o = torch.stack(outputs, dim=1) if outputs else v.new_zeros(B, 0, H, V)
    return o, S


def fused_recurrent_gated_delta_rule_torch(
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
    """PyTorch twin of the fused recurrent kernel; arguments as fused_recurrent_gated_delta_rule.

    Inputs are not validated here (the dispatcher does that), except the cu_seqlens values.
    """
    return run_twin(
        OP,
        _recurrent_dense,
        q,
        k,
        v,
        g,
        beta,
        scale,
        initial_state,
        output_final_state,
        cu_seqlens,
        use_qk_l2norm_in_kernel,
    )


def fused_recurrent_gated_delta_rule_triton(*args, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The Triton kernel (forward only), imported on first use like the chunked one."""
    from memlab.kernels.gated_delta_rule.triton_fused_recurrent import fused_recurrent_gated_delta_rule_triton

    return fused_recurrent_gated_delta_rule_triton(*args, **kwargs)


# Backend name -> implementation.
_IMPLEMENTATIONS = {"torch": fused_recurrent_gated_delta_rule_torch}
if HAS_TRITON:
    _IMPLEMENTATIONS["triton"] = fused_recurrent_gated_delta_rule_triton


@opaque
def fused_recurrent_gated_delta_rule(
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
    """Gated delta rule evaluated token by token (decoding: T small, state carried in fp32).

    S_t = exp(g_t) (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ;  o_t = scale · S_tᵀ q_t.

    Args:
        q, k: [B, T, H, K] and v: [B, T, H, V], one float dtype; K, V <= 256.
        g: [B, T, H] log-space decay (<= 0); beta: [B, T, H]; any float dtype.
        scale: defaults to K ** -0.5.
        initial_state: [N, H, K, V] float, N = B, or the number of sequences in cu_seqlens.
        output_final_state: also return the state after the last token.
        cu_seqlens: int32/int64 [N + 1] offsets of sequences packed along T (B must be 1).
        use_qk_l2norm_in_kernel: L2-normalise q and k over K inside the op (differentiably).
        backend: "auto" | "triton" | "torch"; default from $MEMLAB_KERNEL_BACKEND, else "auto"
            (the Triton kernel on CUDA tensors, except fp64 ones; the PyTorch twin otherwise).
            The Triton kernel is forward only: with grad enabled on an input that requires
            grad it raises KernelInputError (train through chunk_gated_delta_rule).

    Returns:
        o [B, T, H, V] in q's dtype, and the final states [N, H, K, V] in fp32 (fp64 for
        fp64 inputs) if output_final_state, else None.

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
