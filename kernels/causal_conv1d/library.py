"""The Triton path of ``causal_conv1d`` as torch.library custom ops, the form torch.compile
takes it in: one node of the traced graph each way (no graph break), with the shapes of its
outputs known without running it (the fake kernels) and its backward a custom op too. Eager
calls run the same launches through an autograd.Function (triton_conv.py), which costs less
host time per call."""

import torch
from torch import Tensor


@torch.library.custom_op("memlab::causal_conv1d", mutates_args=())
def causal_conv1d_op(
    x: Tensor, weight: Tensor, bias: Tensor | None, start: Tensor | None, silu: bool
) -> Tensor:
    """triton_conv.conv_forward: y [B, T, C] for x [B, T, C], weight [C, W] contiguous."""
    from memlab.kernels.causal_conv1d.triton_conv import conv_forward

    return conv_forward(x, weight, bias, start, silu)


@causal_conv1d_op.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None, start: Tensor | None, silu: bool) -> Tensor:
    return x.new_empty(x.shape)


@torch.library.custom_op("memlab::causal_conv1d_backward", mutates_args=())
def causal_conv1d_backward_op(
    dy: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, start: Tensor | None, silu: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """triton_conv.conv_backward: dx, dweight and dbias (empty without bias)."""
    from memlab.kernels.causal_conv1d.triton_conv import conv_backward

    dx, dw, db = conv_backward(dy, x, weight, bias, start, silu)
    return dx, dw.contiguous(), (dw.new_empty(0) if db is None else db)  # as the fake kernel says


@causal_conv1d_backward_op.register_fake
def _(
    dy: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, start: Tensor | None, silu: bool
) -> tuple[Tensor, Tensor, Tensor]:
    db = weight.new_empty(0) if bias is None else bias.new_empty(bias.shape)
    return x.new_empty(x.shape), weight.new_empty(weight.shape), db


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    x, weight, bias, start, silu = inputs
    ctx.save_for_backward(x, weight, bias, start)
    ctx.silu, ctx.has_bias = silu, bias is not None


def _backward(ctx, dy: Tensor) -> tuple:
    dx, dw, db = causal_conv1d_backward_op(dy, *ctx.saved_tensors, ctx.silu)
    return dx, dw, (db if ctx.has_bias else None), None, None


causal_conv1d_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("memlab::causal_conv1d_update", mutates_args=("tail",))
def causal_conv1d_update_op(
    x: Tensor, tail: Tensor, weight: Tensor, bias: Tensor | None, silu: bool
) -> Tensor:
    """triton_update.causal_conv1d_update_triton: y [B, C] in x's dtype; ``tail`` [B, C, W−1]
    shifted in place (a decoding step: forward only)."""
    from memlab.kernels.causal_conv1d.triton_update import causal_conv1d_update_triton

    return causal_conv1d_update_triton(x, tail, weight, bias, silu)


@causal_conv1d_update_op.register_fake
def _(x: Tensor, tail: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
    return x.new_empty(x.shape)
