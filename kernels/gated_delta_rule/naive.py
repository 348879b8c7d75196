"""Ground truth for the gated delta rule (docs/kernel-design.md): the recurrence, one token at a time.

Deliberately written straight from the equations (an explicit K×K transition matrix per
token) rather than in the cheaper rank-one form the fused-recurrent twin uses, so the two
token-level implementations check each other as well as the chunked one.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from memlab.kernels.gated_delta_rule.common import run_per_sequence
from memlab.kernels.l2norm import l2norm_torch

# Tokens per recomputed block when gradients are needed: autograd keeps the state and the
# K×K transition of every token otherwise, 34 GB at T = 1000, B = 4, H = 8, K = V = 256 in fp64.
CHECKPOINT_BLOCK = 32


def _steps(
    S: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence over the tokens of q (its dim 1) from state S: (o [B, t, H, V], S)."""
    eye = torch.eye(k.shape[-1], dtype=q.dtype, device=q.device)
    outputs = []
    for t in range(q.shape[1]):
        k_t, v_t, q_t = k[:, t], v[:, t], q[:, t]
        b_t = beta[:, t, :, None, None]
        transition = torch.exp(g[:, t])[:, :, None, None] * (
            eye - b_t * k_t[..., :, None] * k_t[..., None, :]
        )
        S = transition @ S + b_t * k_t[..., :, None] * v_t[..., None, :]
        outputs.append((S.transpose(-1, -2) @ q_t[..., None]).squeeze(-1))
    return torch.stack(outputs, dim=1), S


def _naive_dense(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, H, K = q.shape
    V = v.shape[-1]
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(q.dtype)
    inputs = (q, k, v, g, beta, initial_state)
    recompute = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs)
    outputs = []
    for t0 in range(0, T, CHECKPOINT_BLOCK):
        block = [x[:, t0 : t0 + CHECKPOINT_BLOCK] for x in (q, k, v, g, beta)]
        if recompute:  # the same arithmetic again in the backward pass: the same values
            o, S = checkpoint(_steps, S, *block, use_reentrant=False)
        else:
            o, S = _steps(S, *block)
        outputs.append(o)
    o = torch.cat(outputs, dim=1) if outputs else v.new_zeros(B, 0, H, V)
    return o, S


def naive_recurrent_gated_delta_rule(
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
    """Reference gated delta rule, token by token, computed in the dtype of q.

    S_t = exp(g_t) (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ;  o_t = scale · S_tᵀ q_t.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]; g (log decay), beta: [B, T, H].
        scale: defaults to K ** -0.5.
        initial_state: [N, H, K, V], N = B, or the number of sequences in cu_seqlens.
        cu_seqlens: int [N + 1] offsets of sequences packed along T (B must be 1).
        use_qk_l2norm_in_kernel: L2-normalise q and k over K first.

    Returns:
        o [B, T, H, V] and, if output_final_state, the final states [N, H, K, V], both in
        q's dtype. Differentiable by autograd; slow, meant for tests.
    """
    if use_qk_l2norm_in_kernel:
        q, k = l2norm_torch(q), l2norm_torch(k)
    o, final_state = run_per_sequence(
        "naive_recurrent_gated_delta_rule", _naive_dense, q, k, v, g, beta, initial_state, cu_seqlens
    )
    o = o * (q.shape[-1] ** -0.5 if scale is None else scale)
    return o, (final_state if output_final_state else None)
