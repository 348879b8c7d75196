"""One decoding step of the causal depthwise conv1d: the token against the cached tail of the
W−1 inputs before it, the tail shifted in place (one launch, where the PyTorch form is five)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memlab.kernels.backend import KernelInputError, opaque, refuse_grad, resolve_fp32_backend
from memlab.kernels.causal_conv1d.conv import check_float_tensors
from memlab.kernels.limits import MAX_CONV_WIDTH, check_size

OP = "causal_conv1d_update"


def causal_conv1d_update_torch(
    x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool
) -> torch.Tensor:
    """PyTorch twin (and, in fp64, the reference); arguments as ``causal_conv1d_update``."""
    window = torch.cat([tail, x[..., None]], dim=-1)  # [B, C, W]
    wide = torch.promote_types(x.dtype, torch.float32)
    y = (window.to(wide) * weight.to(wide)).sum(-1)
    if bias is not None:
        y = y + bias.to(wide)
    tail.copy_(window[..., 1:])
    return (F.silu(y) if silu else y).to(x.dtype)


def _check(x: object, tail: object, weight: object, bias: object) -> None:
    check_float_tensors(OP, {"x": x, "tail": tail, "weight": weight, "bias": bias}, optional=("bias",))
    if x.dim() != 2:
        raise KernelInputError(f"{OP}: x must have shape [B, C], got {list(x.shape)}")
    (B, C), W = x.shape, weight.shape[-1]
    if weight.dim() != 2 or weight.shape[0] != C:
        raise KernelInputError(f"{OP}: weight must have shape [C={C}, W], got {list(weight.shape)}")
    check_size(OP, "W", W, MAX_CONV_WIDTH, "weight's width")
    if tuple(tail.shape) != (B, C, W - 1) or tail.dtype != x.dtype:
        raise KernelInputError(
            f"{OP}: tail must be [B, C, W−1] = {[B, C, W - 1]} in x's dtype {x.dtype}, "
            f"got {list(tail.shape)} {tail.dtype}"
        )
    if bias is not None and tuple(bias.shape) != (C,):
        raise KernelInputError(f"{OP}: bias must have shape [C={C}], got {list(bias.shape)}")
    if not tail.is_contiguous():
        raise KernelInputError(f"{OP}: tail must be contiguous (it is updated in place)")
    refuse_grad(OP, {"x": x, "tail": tail, "weight": weight, "bias": bias})


# torch.compile traces the op's checks and its Triton path (a custom op: library.py); the twin
# stays a graph break, as it always was
_update_twin = opaque(causal_conv1d_update_torch)


def causal_conv1d_update(
    x: torch.Tensor,
    tail: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
    backend: str | None = None,
) -> torch.Tensor:
    """y = act(bias + Σ_w weight[:, w] · window[:, w]) over the window tail ‖ x; forward only.

    Args:
        x: [B, C] the token's inputs (any row stride, unit channel stride).
        tail: [B, C, W−1] the W−1 inputs before it, in x's dtype, oldest first, contiguous;
            updated in place to the window's last W−1.
        weight: [C, W] (tap W−1 on x); bias: [C] or None; activation: "silu" or None.
        backend: "auto" | "triton" | "torch" (see memlab.kernels.backend).

    Returns:
        y [B, C] in x's dtype, accumulated in fp32 (fp64 for fp64 inputs).

    Raises:
        KernelInputError: for inputs it cannot take, or an input that requires grad while grad
            is enabled (a decoding step has no backward).
    """
    _check(x, tail, weight, bias)
    if activation not in (None, "silu"):
        raise KernelInputError(f"{OP}: activation must be None or 'silu', got {activation!r}")
    if resolve_fp32_backend(backend, x, OP, (x, tail, weight, bias)) == "triton":
        from memlab.kernels.causal_conv1d.library import causal_conv1d_update_op
        from memlab.kernels.causal_conv1d.triton_update import causal_conv1d_update_triton

        if torch.compiler.is_compiling():  # one node of the compiled graph, not a graph break
            return causal_conv1d_update_op(x, tail, weight, bias, activation == "silu")
        return causal_conv1d_update_triton(x, tail, weight, bias, activation == "silu")
    return _update_twin(x, tail, weight, bias, activation == "silu")
