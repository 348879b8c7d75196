"""The Triton path of ``l2norm`` as torch.library custom ops, the form torch.compile takes it
in (see kernels/causal_conv1d/library.py): the forward also returns the rows' reciprocal norm,
which its backward reads with the output or the input (triton_l2norm.saves_output)."""

import torch
from torch import Tensor


@torch.library.custom_op("memlab::l2norm", mutates_args=())
def l2norm_op(rows: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """triton_l2norm.l2norm_forward: y [R, D] and rstd fp32 [R]."""
    from memlab.kernels.l2norm.triton_l2norm import l2norm_forward

    return l2norm_forward(rows, eps)


@l2norm_op.register_fake
def _(rows: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return rows.new_empty(rows.shape), rows.new_empty(rows.shape[0], dtype=torch.float32)


@torch.library.custom_op("memlab::l2norm_backward", mutates_args=())
def l2norm_backward_op(dy: Tensor, saved: Tensor, rstd: Tensor, from_output: bool) -> Tensor:
    """triton_l2norm.l2norm_backward: dx [R, D]."""
    from memlab.kernels.l2norm.triton_l2norm import l2norm_backward

    return l2norm_backward(dy, saved, rstd, from_output)


@l2norm_backward_op.register_fake
def _(dy: Tensor, saved: Tensor, rstd: Tensor, from_output: bool) -> Tensor:
    return saved.new_empty(saved.shape)


def _setup_context(ctx, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
    from memlab.kernels.l2norm.triton_l2norm import saves_output

    rows, _ = inputs
    y, rstd = output
    ctx.from_output = saves_output(rows.shape[1])
    ctx.save_for_backward(y if ctx.from_output else rows, rstd)


def _backward(ctx, dy: Tensor, _drstd: Tensor | None) -> tuple:
    return l2norm_backward_op(dy, *ctx.saved_tensors, ctx.from_output), None


l2norm_op.register_autograd(_backward, setup_context=_setup_context)
