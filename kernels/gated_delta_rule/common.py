"""Plumbing shared by the reference and the PyTorch twins of the gated delta rule: the
per-sequence loop for packed (cu_seqlens) inputs, and the upcast-run-downcast wrapper around a
dense recurrence."""

from __future__ import annotations

from collections.abc import Callable

import torch

from memlab.kernels.gated_delta_rule.checks import sequence_bounds
from memlab.kernels.l2norm import l2norm_torch

# (q, k, v, g, beta, h0 or None) -> (o, final state); every tensor holds one batch of
# equal-length sequences, q is already scaled.
DenseFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None],
    tuple[torch.Tensor, torch.Tensor],
]


def run_per_sequence(
    op: str,
    dense: DenseFn,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``dense`` on the whole batch, or once per packed sequence when cu_seqlens is given.

    Returns o [B, T, H, V] and the final states [N, H, K, V] (N = B, or the sequence count).
    """
    if cu_seqlens is None:
        return dense(q, k, v, g, beta, initial_state)
    outputs, finals = [], []
    for n, (bos, eos) in enumerate(sequence_bounds(op, cu_seqlens, q.shape[1])):
        h0 = None if initial_state is None else initial_state[n : n + 1]
        seq = slice(bos, eos)
        o_n, h_n = dense(q[:, seq], k[:, seq], v[:, seq], g[:, seq], beta[:, seq], h0)
        outputs.append(o_n)
        finals.append(h_n)
    return torch.cat(outputs, dim=1), torch.cat(finals, dim=0)


def run_twin(
    op: str,
    dense: DenseFn,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    cu_seqlens: torch.Tensor | None,
    use_qk_l2norm_in_kernel: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Upcast to the compute dtype, normalise and scale q/k, run ``dense``, cast o back.

    The compute dtype (and the final state's dtype) is fp32, or fp64 for fp64 inputs so
    that the twins can be checked against the fp64 reference at fp64 precision.
    """
    out_dtype = q.dtype
    dtype = torch.promote_types(q.dtype, torch.float32)
    q, k, v, g, beta = (x.to(dtype) for x in (q, k, v, g, beta))
    if initial_state is not None:
        initial_state = initial_state.to(dtype)
    if use_qk_l2norm_in_kernel:
        q, k = l2norm_torch(q), l2norm_torch(k)
    q = q * (q.shape[-1] ** -0.5 if scale is None else scale)
    o, final_state = run_per_sequence(op, dense, q, k, v, g, beta, initial_state, cu_seqlens)
    return o.to(out_dtype), (final_state if output_final_state else None)
