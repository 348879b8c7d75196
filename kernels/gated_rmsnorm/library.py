"""The Triton path of ``gated_rmsnorm`` as torch.library custom ops, the form torch.compile
takes it in (see kernels/causal_conv1d/library.py): the forward also returns the rows'
reciprocal RMS, which its backward reads."""

import torch
from torch import Tensor


@torch.library.custom_op("memlab::gated_rmsnorm", mutates_args=())
def gated_rmsnorm_op(rows: Tensor, gates: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """triton_gated_rmsnorm.norm_forward: y [R, D] and rstd fp32 [R]."""
    from memlab.kernels.gated_rmsnorm.triton_gated_rmsnorm import norm_forward

    return norm_forward(rows, gates, weight, eps)


@gated_rmsnorm_op.register_fake
def _(rows: Tensor, gates: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return rows.new_empty(rows.shape), rows.new_empty(rows.shape[0], dtype=torch.float32)


@torch.library.custom_op("memlab::gated_rmsnorm_backward", mutates_args=())
def gated_rmsnorm_backward_op(
    dy: Tensor, rows: Tensor, gates: Tensor, weight: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """triton_gated_rmsnorm.norm_backward: d rows, d gates, d weight."""
    from memlab.kernels.gated_rmsnorm.triton_gated_rmsnorm import norm_backward

    return norm_backward(dy, rows, gates, weight, rstd)


@gated_rmsnorm_backward_op.register_fake
def _(dy: Tensor, rows: Tensor, gates: Tensor, weight: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return rows.new_empty(rows.shape), gates.new_empty(gates.shape), weight.new_empty(weight.shape)


def _setup_context(ctx, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
    rows, gates, weight, _ = inputs
    ctx.save_for_backward(rows, gates, weight, output[1])


def _backward(ctx, dy: Tensor, _drstd: Tensor | None) -> tuple:
    return (*gated_rmsnorm_backward_op(dy, *ctx.saved_tensors), None)


gated_rmsnorm_op.register_autograd(_backward, setup_context=_setup_context)
