"""One decoding step of the selective scan, updating the recurrent state in place."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memlab.kernels.backend import KernelInputError, opaque, resolve_fp32_backend
from memlab.kernels.limits import MAX_STATE_SIZE, check_size
from memlab.kernels.selective_scan.scan import check_grouped, check_tensor


def _check_inputs(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor | None,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dt_proj: torch.Tensor | None,
    A_log: torch.Tensor | None,
) -> None:
    op = "selective_state_update"
    check_tensor(op, "state", state, (("batch", None), ("dim", None), ("N", None)), state, "state")
    if state.dtype not in (torch.float32, torch.float64):
        raise KernelInputError(f"{op}: state must be float32 (or float64), got {state.dtype}")
    batch, dim, N = state.shape
    check_size(op, "N", N, MAX_STATE_SIZE, "the state's size")
    step = (("batch", batch), ("dim", dim))
    check_tensor(op, "x", x, step, state, "state")
    if dt_proj is None:
        check_tensor(op, "dt", dt, step, state, "state")
    else:
        check_tensor(op, "dt_proj", dt_proj, (("dim", dim), ("R", None)), state, "state")
        check_tensor(op, "dt", dt, (("batch", batch), ("R", dt_proj.shape[1])), state, "state and dt_proj")
    if (A is None) == (A_log is None):
        raise KernelInputError(f"{op}: give exactly one of A and A_log")
    if A is None:
        check_tensor(op, "A_log", A_log, (("dim", dim), ("N", N)), state, "state")
    else:
        check_tensor(op, "A", A, (("dim", dim), ("N", N)), state, "state")
    check_grouped(op, "B", B, batch, dim, N, (), state, "state")
    check_grouped(op, "C", C, batch, dim, N, (), state, "state")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        if t is not None:
            check_tensor(op, name, t, (("dim", dim),), state, "state")
    if z is not None:
        check_tensor(op, "z", z, step, state, "state")


def _per_channel(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """[batch, N] or [batch, groups, N] -> [batch, dim or 1, N]; channel d uses group
    d // (dim / groups)."""
    if BC.dim() == 2:
        return BC.unsqueeze(1)
    return BC.repeat_interleave(dim // BC.shape[1], dim=1)


def _state_update_torch(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
    dt_proj: torch.Tensor | None = None,
    A_log: torch.Tensor | None = None,
) -> torch.Tensor:
    dtype = state.dtype
    dim = state.shape[1]
    with torch.autocast(state.device.type, enabled=False):  # in the state's dtype, as the kernel
        dt = dt.to(dtype) if dt_proj is None else F.linear(dt.to(dtype), dt_proj.to(dtype))
    A = -torch.exp(A_log.to(dtype)) if A is None else A
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    x_c = x.to(dtype)
    decay = torch.exp(dt[..., None] * A.to(dtype))
    state.mul_(decay).add_((dt * x_c)[..., None] * _per_channel(B.to(dtype), dim))
    out = (state * _per_channel(C.to(dtype), dim)).sum(-1)
    if D is not None:
        out = out + D.to(dtype) * x_c
    if z is not None:
        out = out * F.silu(z.to(dtype))
    return out.to(x.dtype)


# torch.compile traces the op's checks and its Triton path (a custom op: library.py); the twin
# stays a graph break, as it always was
_state_update_twin = opaque(_state_update_torch)


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor | None,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    backend: str | None = None,
    *,
    dt_proj: torch.Tensor | None = None,
    A_log: torch.Tensor | None = None,
) -> torch.Tensor:
    """One step of ``selective_scan`` for decoding: updates ``state`` in place, returns out.

    With dt' = softplus(dt + dt_bias) if ``dt_softplus`` else dt + dt_bias:
    state ← exp(dt' A) ⊙ state + dt' B x, out = C · state + D x, out ← out · silu(z).

    Shapes: state: [batch, dim, N], float32 (float64 accepted, for reference checks); x, dt,
    z: [batch, dim]; A: [dim, N]; B, C: [batch, N] or [batch, groups, N] (groups divides
    dim; channel d uses group d // (dim / groups)); D, dt_bias: [dim]. The step is computed
    in the state's dtype; out is [batch, dim] in x's dtype. Starting from the last state of
    ``selective_scan(..., return_last_state=True)`` continues that scan exactly.

    Two of Mamba's per-token products can be left to the op, so that a decoding step does
    not launch them: with ``dt_proj`` [dim, R], dt is Mamba's low-rank [batch, R] and the op
    takes dt · dt_projᵀ (in the state's dtype); with ``A_log`` [dim, N] in place of A (pass
    A=None), it takes A = −exp(A_log).

    ``backend`` and errors as for ``selective_scan`` (KernelInputError naming the argument);
    a float64 state counts as a float64 input.
    """
    _check_inputs(state, x, dt, A, B, C, D, z, dt_bias, dt_proj, A_log)
    tensors = (state, x, dt, A, B, C, D, z, dt_bias)
    if resolve_fp32_backend(backend, x, "selective_state_update", (*tensors, dt_proj, A_log)) == "triton":
        from memlab.kernels.selective_scan.library import selective_state_update_op
        from memlab.kernels.selective_scan.triton_state_update import selective_state_update_triton

        if torch.compiler.is_compiling():  # one node of the compiled graph, not a graph break
            return selective_state_update_op(*tensors, dt_softplus, dt_proj, A_log)
        return selective_state_update_triton(*tensors, dt_softplus=dt_softplus, dt_proj=dt_proj, A_log=A_log)
    return _state_update_twin(*tensors, dt_softplus, dt_proj, A_log)
