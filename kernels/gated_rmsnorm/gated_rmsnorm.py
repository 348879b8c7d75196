"""Public gated RMSNorm: input checks, backend choice, dispatch."""

from __future__ import annotations

import torch

from memlab.kernels.backend import KernelInputError, opaque, resolve_fp32_backend
from memlab.kernels.gated_rmsnorm.torch_gated_rmsnorm import gated_rmsnorm_torch
from memlab.kernels.limits import MAX_NORM_DIM, check_size

OP = "gated_rmsnorm"
# torch.compile traces the op's checks and its Triton path (custom ops: library.py); the twin
# stays a graph break, as it always was
_gated_rmsnorm_twin = opaque(gated_rmsnorm_torch)


def gated_rmsnorm(
    o: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5, backend: str | None = None
) -> torch.Tensor:
    """y = o / sqrt(mean(o²) + eps) · weight · silu(gate), normalising over the last dim.

    Args:
        o, gate: [..., D], one shape, D <= 8192, float16 / bfloat16 / float32 / float64.
        weight: [D].
        eps: added to the mean square.
        backend: "auto" | "triton" | "torch"; default from $MEMLAB_KERNEL_BACKEND, else
            "auto" (the Triton kernels on CUDA tensors unless an input is float64).

    Returns:
        y [..., D] in o's dtype, computed in fp32 (fp64 for fp64 inputs); differentiable with
        respect to o, gate and weight.

    Raises:
        KernelInputError: for inputs the op cannot take or a backend it does not have.
    """
    for name, t in (("o", o), ("gate", gate), ("weight", weight)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise KernelInputError(f"{OP}: {name} must be a floating-point torch.Tensor, got {t!r:.60}")
    if o.dim() < 1 or gate.shape != o.shape:
        raise KernelInputError(
            f"{OP}: o and gate must have one shape [..., D], got {list(o.shape)} and {list(gate.shape)}"
        )
    check_size(OP, "D", o.shape[-1], MAX_NORM_DIM, "o's last dim")
    if tuple(weight.shape) != (o.shape[-1],):
        raise KernelInputError(f"{OP}: weight must have shape [D={o.shape[-1]}], got {list(weight.shape)}")
    if gate.device != o.device or weight.device != o.device:
        raise KernelInputError(f"{OP}: o, gate and weight must be on one device")
    if resolve_fp32_backend(backend, o, OP, (o, gate, weight)) == "triton":
        from memlab.kernels.gated_rmsnorm.triton_gated_rmsnorm import gated_rmsnorm_triton

        return gated_rmsnorm_triton(o, gate, weight, eps)
    return _gated_rmsnorm_twin(o, gate, weight, eps)
