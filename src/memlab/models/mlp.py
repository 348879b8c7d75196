"""SwiGLU feed-forward block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _SwiGLU(torch.autograd.Function):
    """silu(gate) ⊙ up from gate_up = [gate ‖ up] [..., 2H] -> [..., H], saving only gate_up:
    the backward recomputes silu(gate) (one elementwise pass) where autograd would keep it, an
    activation of the block's width per token."""

    @staticmethod
    def forward(ctx, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        ctx.save_for_backward(gate_up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (gate_up,) = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        # the ops autograd would run, in its order: the same values
        d_up = grad * F.silu(gate)
        d_gate = torch.ops.aten.silu_backward(grad * up, gate)
        return torch.cat([d_gate, d_up], dim=-1)


class SwiGLU(nn.Module):
    """y = W_down(silu(W_gate x) ⊙ W_up x), hidden width ``int(mlp_ratio · d_model)``.

    x: [..., d_model] -> [..., d_model].
    """

    def __init__(self, d_model: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(mlp_ratio * d_model)
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up(x)
        if torch.is_grad_enabled() and gate_up.requires_grad:
            return self.down(_SwiGLU.apply(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)
