"""Public selective scan: input checks, backend choice, dispatch.

Also holds the argument checks that ``selective_state_update`` shares, so both ops word
their errors the same way.
"""

from __future__ import annotations

import torch

from memlab.kernels.backend import KernelInputError, opaque, resolve_fp32_backend
from memlab.kernels.limits import MAX_STATE_SIZE, check_size
from memlab.kernels.selective_scan.torch_scan import selective_scan_torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(
    op: str,
    name: str,
    t: object,
    dims: tuple[tuple[str, int | None], ...],
    ref: torch.Tensor,
    ref_name: str,
) -> None:
    """Raise KernelInputError unless ``t`` is a floating tensor on ``ref``'s device whose
    shape matches ``dims`` ((label, size) per axis; size None accepts any size)."""
    if not isinstance(t, torch.Tensor):
        raise KernelInputError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise KernelInputError(f"{op}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.device != ref.device:
        raise KernelInputError(
            f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; "
            "all inputs must be on one device"
        )
    if t.dim() != len(dims) or any(s is not None and t.shape[i] != s for i, (_, s) in enumerate(dims)):
        labels = ", ".join(label for label, _ in dims)
        sizes = ", ".join(label if s is None else str(s) for label, s in dims)
        raise KernelInputError(f"{op}: {name} must have shape [{labels}] = [{sizes}], got {list(t.shape)}")


def check_grouped(
    op: str,
    name: str,
    t: object,
    batch: int,
    dim: int,
    N: int,
    tail: tuple[tuple[str, int], ...],
    ref: torch.Tensor,
    ref_name: str,
) -> None:
    """Check B or C: [batch, N, *tail] or [batch, groups, N, *tail] with groups dividing dim."""
    if isinstance(t, torch.Tensor) and t.dim() not in (2 + len(tail), 3 + len(tail)):
        rest = "".join(f", {label}" for label, _ in tail)
        raise KernelInputError(
            f"{op}: {name} must have shape [batch, N{rest}] or [batch, groups, N{rest}], got {list(t.shape)}"
        )
    if isinstance(t, torch.Tensor) and t.dim() == 3 + len(tail):
        groups = t.shape[1]
        if groups < 1 or dim % groups:
            raise KernelInputError(f"{op}: {name} has {groups} groups (axis 1), which must divide dim={dim}")
        dims = (("batch", batch), ("groups", groups), ("N", N), *tail)
    else:
        dims = (("batch", batch), ("N", N), *tail)
    check_tensor(op, name, t, dims, ref, ref_name)


def _check_scan_inputs(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
) -> None:
    op = "selective_scan"
    check_tensor(op, "u", u, (("batch", None), ("dim", None), ("L", None)), u, "u")
    batch, dim, L = u.shape
    if L < 1:
        raise KernelInputError(f"{op}: u has sequence length L=0; L must be at least 1")
    seq = (("batch", batch), ("dim", dim), ("L", L))
    check_tensor(op, "delta", delta, seq, u, "u")
    check_tensor(op, "A", A, (("dim", dim), ("N", None)), u, "u")
    N = A.shape[1]
    check_size(op, "N", N, MAX_STATE_SIZE, "A's state size")
    check_grouped(op, "B", B, batch, dim, N, (("L", L),), u, "u")
    check_grouped(op, "C", C, batch, dim, N, (("L", L),), u, "u")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            check_tensor(op, name, t, (("dim", dim),), u, "u")
    if z is not None:
        check_tensor(op, "z", z, seq, u, "u")


@opaque
def selective_scan(
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
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan.

    With dt = softplus(delta + delta_bias) if ``delta_softplus`` else delta + delta_bias:
    h_t = exp(dt_t A) ⊙ h_{t-1} + dt_t B_t u_t (h_{-1} = 0), y_t = C_t · h_t + D u_t, and
    y ← y · silu(z) when z is given.

    Shapes: u, delta, z: [batch, dim, L]; A: [dim, N] (real; negative for a stable
    recurrence); B, C: [batch, N, L] or [batch, groups, N, L] where groups divides dim and
    channel d uses group d // (dim / groups); D, delta_bias: [dim]. Inputs may be float16,
    bfloat16, float32 or float64, all on one device. The Triton kernels read u, delta and z
    without a copy when they are stored as [batch, dim, L] or as [batch, L, dim] (transposed
    views of a layer's [batch, L, channels] activations; y and their gradients then come in
    that layout too); other strides are copied first.

    Returns y [batch, dim, L] in u's dtype; with ``return_last_state`` also the final state
    [batch, dim, N], float32 (float64 when an input is float64), which
    ``selective_state_update`` continues from. The state is always kept in at least
    float32, whatever the input dtype.

    ``backend``: "auto" | "triton" | "torch", default from $MEMLAB_KERNEL_BACKEND, else
    "auto" (the Triton kernel on CUDA tensors unless an input is float64, which the fp32
    kernel does not take; the PyTorch twin otherwise). Raises KernelInputError naming the
    offending argument for a bad shape, dtype or device, and for an unknown or unavailable
    backend.
    """
    _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    if resolve_fp32_backend(backend, u, "selective_scan", tensors) == "triton":
        from memlab.kernels.selective_scan.triton_scan import selective_scan_triton

        return selective_scan_triton(
            *tensors, delta_softplus=delta_softplus, return_last_state=return_last_state
        )
    return selective_scan_torch(
        u,
        delta,
        A,
        B,
        C,
        D=D,
        z=z,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
    )
