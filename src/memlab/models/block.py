"""Pre-norm residual block: x + mixer(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)) unless it has no MLP."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from memlab.models.mixer import MixerOutput
from memlab.models.mlp import SwiGLU


class Block(nn.Module):
    """One layer of the language model. x: [B, T, D] -> MixerOutput with hidden [B, T, D].

    ``mlp_ratio`` 0 means no MLP (and no MLP norm): norm + mixer only, as in a Mamba block.
    """

    def __init__(self, d_model: int, mixer: nn.Module, mlp_ratio: float, norm_eps: float) -> None:
        super().__init__()
        self.mixer_norm = nn.RMSNorm(d_model, eps=norm_eps)
        self.mixer = mixer
        self.mlp_norm = nn.RMSNorm(d_model, eps=norm_eps) if mlp_ratio else None
        self.mlp = SwiGLU(d_model, mlp_ratio) if mlp_ratio else None

    def forward(
        self, x: torch.Tensor, state: Any = None, cu_seqlens: torch.Tensor | None = None, **mixer_kwargs: Any
    ) -> MixerOutput:
        """mixer_kwargs go to the mixer as they are (``layer_memory`` for mixers that read it)."""
        mixed = self.mixer(self.mixer_norm(x), state=state, cu_seqlens=cu_seqlens, **mixer_kwargs)
        h = x + mixed.hidden
        if self.mlp is not None:
            h = h + self.mlp(self.mlp_norm(h))
        return MixerOutput(h, mixed.aux_losses, mixed.stats, mixed.memory)
