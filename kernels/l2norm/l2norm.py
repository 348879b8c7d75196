"""Public L2 norm: input checks, backend choice, dispatch."""

from __future__ import annotations

import torch

from memlab.kernels.backend import KernelInputError, opaque, resolve_fp32_backend
from memlab.kernels.l2norm.torch_l2norm import EPS, l2norm_torch
from memlab.kernels.limits import MAX_NORM_DIM, check_size

OP = "l2norm"
# torch.compile traces the op's checks and its Triton path (custom ops: library.py); the twin
# stays a graph break, as it always was
_l2norm_twin = opaque(l2norm_torch)


def l2norm(x: torch.Tensor, eps: float = EPS, backend: str | None = None) -> torch.Tensor:
    """x / sqrt(Σ x² + eps) over the last dim.

    Args:
        x: [..., D], D <= 8192, float16 / bfloat16 / float32 / float64.
        eps: added under the square root; keeps all-zero rows finite.
        backend: "auto" | "triton" | "torch"; default from $MEMLAB_KERNEL_BACKEND, else
            "auto" (the Triton kernels on CUDA tensors unless x is float64).

    Returns:
        [..., D] in x's dtype, computed in fp32 (fp64 for fp64 x); differentiable.

    Raises:
        KernelInputError: for a non-float x or a backend the op does not have.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise KernelInputError(f"{OP}: x must be a floating-point torch.Tensor [..., D], got {x!r:.60}")
    check_size(OP, "D", x.shape[-1], MAX_NORM_DIM, "x's last dim")
    if resolve_fp32_backend(backend, x, OP, (x,)) == "triton":
        from memlab.kernels.l2norm.triton_l2norm import l2norm_triton

        return l2norm_triton(x, eps)
    return _l2norm_twin(x, eps)
