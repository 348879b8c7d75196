"""Public GEMV: input checks, backend choice, dispatch, and the PyTorch twin."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memlab.kernels.backend import KernelInputError, opaque, refuse_grad, resolve_fp32_backend
from memlab.kernels.limits import MAX_GEMV_ROWS, check_size

OP = "gemv"


def gemv_torch(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """PyTorch twin (and, in fp64, the reference); arguments as ``gemv``."""
    compute = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.to(compute), weight.to(compute)).to(x.dtype)


@opaque
def gemv(x: torch.Tensor, weight: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """y = x Wᵀ for at most eight rows of x, accumulated in fp32; forward only.

    Args:
        x: [M, K] float (M <= 8; any row stride, unit stride along K).
        weight: [N, K], x's dtype, contiguous (nn.Linear's layout).
        backend: "auto" | "triton" | "torch" (see memlab.kernels.backend).

    Returns:
        y [M, N] in x's dtype.

    Raises:
        KernelInputError: for inputs the op cannot take, or an input that requires grad while
            grad is enabled (the op serves decoding and has no backward).
    """
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 2:
            raise KernelInputError(f"{OP}: {name} must be a 2-D floating-point torch.Tensor, got {t!r:.60}")
    M, K = x.shape
    if weight.shape[1] != K or K < 1 or weight.shape[0] < 1:
        raise KernelInputError(f"{OP}: x [M, K] and weight [N, K] must share K >= 1, got "
                               f"{list(x.shape)} and {list(weight.shape)}")  # fmt: skip
    if weight.dtype != x.dtype or weight.device != x.device:
        raise KernelInputError(f"{OP}: x and weight must share a dtype and a device")
    if not weight.is_contiguous():  # a copy per call would cost more than the product
        raise KernelInputError(f"{OP}: weight must be contiguous")
    check_size(OP, "M", M, MAX_GEMV_ROWS, "rows of x")
    refuse_grad(OP, {"x": x, "weight": weight})
    if resolve_fp32_backend(backend, x, OP, (x, weight)) == "triton":
        from memlab.kernels.gemv.triton_gemv import gemv_triton

        return gemv_triton(x, weight)
    return gemv_torch(x, weight)
