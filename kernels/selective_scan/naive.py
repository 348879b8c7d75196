"""Reference selective scan: the Mamba-1 recurrence, one time step at a time.

This is the ground truth the fast paths are tested against (call it in float64): a direct
transcription of the equations, with no reordering of sums. Each step's decay and input are
the same products as in the equations, only computed for a block of steps at once, so the
loop over time launches two operations per step rather than eight (the GPU conformance suite
runs thousands of these loops).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memlab.kernels.precision import compute_dtype


def _per_channel(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """[batch, N, L] or [batch, groups, N, L] -> [batch, dim or 1, N, L]; channel d uses group
    d // (dim / groups)."""
    if BC.dim() == 3:
        return BC.unsqueeze(1)
    return BC.repeat_interleave(dim // BC.shape[1], dim=1)


# Elements of one block's [batch, dim, steps, N] tensors: 32 MiB in fp64.
_BLOCK_ELEMENTS = 1 << 22


def _block_len(state_elements: int) -> int:
    """Steps per block for a state of ``state_elements`` elements (at least one)."""
    return max(_BLOCK_ELEMENTS // max(state_elements, 1), 1)


def naive_selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan by a plain loop over time.

    Shapes: u, delta, z: [batch, dim, L]; A: [dim, N]; B, C: [batch, N, L] or
    [batch, groups, N, L] (groups divides dim); D, delta_bias: [dim].

    With dt = softplus(delta + delta_bias) (or delta + delta_bias without softplus):
    h_t = exp(dt_t A) ⊙ h_{t-1} + dt_t B_t u_t,  y_t = C_t · h_t + D u_t,  y ← y · silu(z).

    Arithmetic runs in the promoted dtype of the inputs, at least float32 (so float64
    inputs give a float64 reference). Returns y [batch, dim, L] in u's dtype and, with
    ``return_last_state``, also h_{L-1} [batch, dim, N] in that compute dtype.
    Inputs are not validated; use ``selective_scan`` for that.
    """
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, _ = u.shape
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    u_c, A_c = u.to(dtype), A.to(dtype)
    B_c, C_c = _per_channel(B.to(dtype), dim), _per_channel(C.to(dtype), dim)

    h = u_c.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t0 in range(0, u.shape[-1], _block_len(h.numel())):
        t1 = t0 + _block_len(h.numel())
        # [batch, dim, steps, N]: exp(dt_t A) and dt_t u_t B_t of every step of the block
        dt_b, u_b = dt[..., t0:t1, None], u_c[..., t0:t1, None]
        decay = torch.exp(dt_b * A_c[:, None])
        inp = (dt_b * u_b) * B_c[..., t0:t1].mT
        states = []
        # unbind, not indexing in the loop: each index's backward would zero-fill the block
        for decay_t, inp_t in zip(decay.unbind(2), inp.unbind(2), strict=True):
            h = decay_t * h + inp_t
            states.append(h)
        ys.append((torch.stack(states, dim=2) * C_c[..., t0:t1].mT).sum(-1))
    y = torch.cat(ys, dim=-1) if ys else u_c.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u_c
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(u.dtype)
    return (y, h) if return_last_state else y
