"""PyTorch twin of the chunked gated delta rule (docs/kernel-design.md, chunk size 64).

Within a chunk with start state h and chunk-local cumulative log decay G, the state after
token t is S_t = e^{G_t} h + Σ_{j≤t} e^{G_t − G_j} k_j v'_jᵀ, where the pseudo-values v'
solve the unit lower-triangular system (I + L) v' = βV − (β e^G K) h with
L_tj = β_t e^{G_t − G_j} k_t·k_j (j < t). Solving once for both right-hand sides gives
u = (I + L)⁻¹ βV and w = (I + L)⁻¹ (β e^G K) for all chunks in parallel (the UT
transform); only v' = u − w h and the state update depend on the previous chunk, so the
serial loop over chunks is a few matmuls. Backward is plain autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memlab.kernels.gated_delta_rule.common import run_twin

OP = "chunk_gated_delta_rule"
CHUNK_SIZE = 64


def _to_chunks(x: torch.Tensor, num_chunks: int) -> torch.Tensor:
    """[B, T, H, *D] -> [B, H, num_chunks, CHUNK_SIZE, *D], zero-padded at the end of T."""
    x = x.movedim(1, 2)
    pad = num_chunks * CHUNK_SIZE - x.shape[2]
    if pad:
        # Zero k, v and beta make a padded token write nothing, and g = 0 decays nothing,
        # so the final state is unchanged by padding.
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
    return x.reshape(*x.shape[:2], num_chunks, CHUNK_SIZE, *x.shape[3:])


def _chunk_dense(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, H, K = q.shape
    V = v.shape[-1]
    h = q.new_zeros(B, H, K, V) if initial_state is None else initial_state
    if T == 0:
        return v.new_zeros(B, 0, H, V), h
    num_chunks = -(-T // CHUNK_SIZE)
    q, k, v, g, beta = (_to_chunks(x, num_chunks) for x in (q, k, v, g, beta))

    G = g.cumsum(-1)  # [B, H, NC, C], chunk-local, in the compute dtype (>= fp32)
    strictly_lower = torch.ones(CHUNK_SIZE, CHUNK_SIZE, dtype=torch.bool, device=q.device).tril(-1)
    # e^{G_i − G_j} for j < i only; masking before exp keeps every exponent <= 0 (no inf,
    # no 0·inf). The exponent is summed directly, Σ_{j<l≤i} g_l, as a running sum down each
    # column: the difference G_i − G_j of two large cumsums loses |G|·eps of absolute
    # accuracy (2e-5 in fp32 after a few strong gates), and its gradient is a cancellation.
    # For the same reason the diagonal (e^0 = 1) is added as a constant below.
    between = (g[..., :, None] * strictly_lower).cumsum(-2)
    decay = between.masked_fill(~strictly_lower, float("-inf")).exp()
    eye = torch.eye(CHUNK_SIZE, dtype=q.dtype, device=q.device)

    L = beta[..., None] * (k @ k.transpose(-1, -2)) * decay
    rhs = torch.cat([beta[..., None] * v, (beta * G.exp())[..., None] * k], dim=-1)
    # unitriangular: the solver takes the diagonal as ones, so L (zero diagonal) stands for I + L.
    u, w = torch.linalg.solve_triangular(L, rhs, upper=False, unitriangular=True).split([V, K], dim=-1)

    # Decay from each token to the end of its chunk, G_last − G_j = Σ_{i>j} g_i, summed
    # directly: the difference form is exactly 0 at the last real token of a padded chunk
    # yet its gradient would again be a cancellation of O(1) terms.
    after = F.pad(g.flip(-1).cumsum(-1).flip(-1)[..., 1:], (0, 1))
    k_to_end = (k * after.exp()[..., None]).transpose(-1, -2)  # [B, H, NC, K, C]
    chunk_decay = G[..., -1].exp()[..., None, None]  # [B, H, NC, 1, 1]

    starts, pseudo_values = [], []
    # unbind rather than index per chunk: each index's backward would zero-fill a full-size gradient.
    for u_c, w_c, decay_c, k_c in zip(*(x.unbind(2) for x in (u, w, chunk_decay, k_to_end)), strict=True):
        starts.append(h)
        v_new = u_c - w_c @ h
        pseudo_values.append(v_new)
        h = decay_c * h + k_c @ v_new
    start_states = torch.stack(starts, dim=2)  # [B, H, NC, K, V]
    v_new = torch.stack(pseudo_values, dim=2)  # [B, H, NC, C, V]

    inter = (q * G.exp()[..., None]) @ start_states
    intra = ((q @ k.transpose(-1, -2)) * (decay + eye)) @ v_new
    o = (inter + intra).reshape(B, H, num_chunks * CHUNK_SIZE, V)[:, :, :T].movedim(2, 1)
    return o, h


def chunk_gated_delta_rule_torch(
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
    """PyTorch twin of the chunked kernel; arguments as chunk_gated_delta_rule.

    Computes in fp32 (fp64 for fp64 inputs) whatever the input dtype. Inputs are not
    validated here (the dispatcher does that), except the cu_seqlens values; packed
    sequences are run one after another.
    """
    return run_twin(
        OP,
        _chunk_dense,
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
