"""Public routed combine: input checks, backend choice, dispatch."""

from __future__ import annotations

import torch

from memlab.kernels.backend import KernelInputError, opaque, resolve_fp32_backend
from memlab.kernels.combine_routed.torch_combine import combine_routed_torch
from memlab.kernels.limits import MAX_COMBINE_SLOTS, check_size

OP = "combine_routed"
# torch.compile traces the op's checks and its Triton path (custom ops: library.py); the twin
# stays a graph break, as it always was
_combine_routed_twin = opaque(combine_routed_torch)


def combine_routed(
    values: torch.Tensor, index: torch.Tensor, weights: torch.Tensor, backend: str | None = None
) -> torch.Tensor:
    """out[r] = Σ_s weights[r, s] · values[index[r, s]].

    Args:
        values: [N, F] float, the packed rows (each routed visit's output).
        index: int [R, S] (S <= 64), the rows of ``values`` each output row combines. The entries must be
            distinct (each packed row belongs to one visit), which lets the backward write
            each row's gradient without atomics; rows no entry names get a zero gradient.
            Not checked: that would cost a host sync.
        weights: [R, S] float, the routing weights.
        backend: "auto" | "triton" | "torch"; default from $MEMLAB_KERNEL_BACKEND, else
            "auto" (the Triton kernels on CUDA tensors unless an input is float64).

    Returns:
        [R, F] in values' dtype, computed in fp32 (fp64 for fp64 inputs); differentiable with
        respect to values and weights.

    Raises:
        KernelInputError: for inputs the op cannot take or a backend it does not have.
    """
    for name, t in (("values", values), ("weights", weights)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 2:
            raise KernelInputError(f"{OP}: {name} must be a 2-D floating-point torch.Tensor, got {t!r:.60}")
    if not isinstance(index, torch.Tensor) or index.is_floating_point() or index.shape != weights.shape:
        raise KernelInputError(f"{OP}: index must be an integer tensor of the weights' shape [R, S]")
    check_size(OP, "S", index.shape[1], MAX_COMBINE_SLOTS, "slots per output row")
    if index.device != values.device or weights.device != values.device:
        raise KernelInputError(f"{OP}: values, index and weights must be on one device")
    if resolve_fp32_backend(backend, values, OP, (values, weights)) == "triton":
        from memlab.kernels.combine_routed.triton_combine import combine_routed_triton

        return combine_routed_triton(values, index, weights)
    return _combine_routed_twin(values, index, weights)
