"""The Triton path of ``combine_routed`` as torch.library custom ops, the form torch.compile
takes it in (see kernels/causal_conv1d/library.py)."""

import torch
from torch import Tensor


@torch.library.custom_op("memlab::combine_routed", mutates_args=())
def combine_routed_op(values: Tensor, index: Tensor, weights: Tensor) -> Tensor:
    """triton_combine.combine_forward: out [R, F]."""
    from memlab.kernels.combine_routed.triton_combine import combine_forward

    return combine_forward(values, index, weights)


@combine_routed_op.register_fake
def _(values: Tensor, index: Tensor, weights: Tensor) -> Tensor:
    return values.new_empty(index.shape[0], values.shape[1])


@torch.library.custom_op("memlab::combine_routed_backward", mutates_args=())
def combine_routed_backward_op(
    dout: Tensor, values: Tensor, index: Tensor, weights: Tensor
) -> tuple[Tensor, Tensor]:
    """triton_combine.combine_backward: d values [N, F], d weights [R, S]."""
    from memlab.kernels.combine_routed.triton_combine import combine_backward

    return combine_backward(dout, values, index, weights)


@combine_routed_backward_op.register_fake
def _(dout: Tensor, values: Tensor, index: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    return values.new_empty(values.shape), weights.new_empty(weights.shape)


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, dout: Tensor) -> tuple:
    dvalues, dweights = combine_routed_backward_op(dout, *ctx.saved_tensors)
    return dvalues, None, dweights


combine_routed_op.register_autograd(_backward, setup_context=_setup_context)
