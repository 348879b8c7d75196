"""Public causal depthwise conv1d: input checks, backend choice, dispatch."""

from __future__ import annotations

import torch

from memlab.kernels.backend import KernelInputError, opaque, resolve_fp32_backend
from memlab.kernels.causal_conv1d.torch_conv import causal_conv1d_torch
from memlab.kernels.limits import MAX_CONV_WIDTH, check_size

OP = "causal_conv1d"
ACTIVATIONS = (None, "silu")
# torch.compile traces the op's checks and its Triton path (custom ops: library.py); the twin
# stays a graph break, as it always was
_causal_conv1d_twin = opaque(causal_conv1d_torch)


def check_float_tensors(op: str, named: dict[str, object], optional: tuple[str, ...] = ()) -> None:
    """Every named value a floating-point tensor on the first one's device (``optional`` ones
    may be None), else one KernelInputError naming it."""
    first_name, first = next(iter(named.items()))
    for name, t in named.items():
        if t is None and name in optional:
            continue
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise KernelInputError(f"{op}: {name} must be a floating-point torch.Tensor, got {t!r:.60}")
        if t.device != first.device:
            raise KernelInputError(f"{op}: {name} is on {t.device} but {first_name} is on {first.device}")


def _check_inputs(x: object, weight: object, bias: object, cu_seqlens: object, activation: object) -> None:
    check_float_tensors(OP, {"x": x, "weight": weight, "bias": bias}, optional=("bias",))
    if x.dim() != 3:
        raise KernelInputError(f"{OP}: x must have shape [B, T, C], got {list(x.shape)}")
    C = x.shape[2]
    if weight.dim() != 2 or weight.shape[0] != C or weight.shape[1] < 1:
        raise KernelInputError(f"{OP}: weight must have shape [C={C}, W >= 1], got {list(weight.shape)}")
    check_size(OP, "W", weight.shape[1], MAX_CONV_WIDTH, "weight's width")
    if bias is not None and tuple(bias.shape) != (C,):
        raise KernelInputError(f"{OP}: bias must have shape [C={C}], got {list(bias.shape)}")
    if activation not in ACTIVATIONS:
        raise KernelInputError(f"{OP}: activation must be None or 'silu', got {activation!r}")
    if cu_seqlens is not None:
        offsets_ok = isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.dim() == 1
        if not offsets_ok or cu_seqlens.is_floating_point():
            raise KernelInputError(f"{OP}: cu_seqlens must be a 1-D integer tensor of sequence offsets")
        if x.shape[0] != 1:
            raise KernelInputError(
                f"{OP}: cu_seqlens packs sequences along T, so B must be 1, got B={x.shape[0]}"
            )


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    activation: str | None = "silu",
    backend: str | None = None,
) -> torch.Tensor:
    """Causal depthwise conv1d: y_t = act(bias + Σ_{s=0}^{W−1} weight[:, W−1−s] · x_{t−s}) per
    channel, with x_{t−s} = 0 before the start of t's sequence.

    Args:
        x: [B, T, C], any strides, float16 / bfloat16 / float32 / float64.
        weight: [C, W], W <= 16 (tap W−1 multiplies the current token); bias: [C] or None.
        cu_seqlens: int [N+1] offsets of sequences packed along T (B == 1); no tap reads
            across a boundary. Its values are trusted (checking them would cost a host sync).
        activation: "silu" or None.
        backend: "auto" | "triton" | "torch"; default from $MEMLAB_KERNEL_BACKEND, else
            "auto" (the Triton kernels on CUDA tensors unless an input is float64).

    Returns:
        y [B, T, C] in x's dtype, computed in fp32 (fp64 for fp64 inputs); differentiable with
        respect to x, weight and bias.

    Raises:
        KernelInputError: for inputs the op cannot take or a backend it does not have.
    """
    _check_inputs(x, weight, bias, cu_seqlens, activation)
    if resolve_fp32_backend(backend, x, OP, (x, weight, bias)) == "triton":
        from memlab.kernels.causal_conv1d.triton_conv import causal_conv1d_triton

        return causal_conv1d_triton(x, weight, bias, cu_seqlens, activation)
    return _causal_conv1d_twin(x, weight, bias, cu_seqlens, activation)
