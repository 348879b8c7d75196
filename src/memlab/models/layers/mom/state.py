"""MoM's decoding cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MoMState:
    """Decoding cache of one MoM layer; its size does not depend on the context length.

    memory: [B, M, H, K, V] fp32 (fp64 for an fp64 model): the E routed memories, then the
        shared one if the layer has it (M = E or E + 1). One tensor, so that a decoding step
        hands it to the kernel without copying.
    q_tail: [B, H·K, W−1]; k_tail: [B, M, H·K, W−1]; v_tail: [B, M, H·V, W−1], model dtype:
        the last W−1 conv inputs of the sequence (q) and of each memory's routed subsequence (k, v).
    num_routed: E.
    """

    memory: torch.Tensor
    q_tail: torch.Tensor
    k_tail: torch.Tensor
    v_tail: torch.Tensor
    num_routed: int

    @property
    def routed(self) -> torch.Tensor:
        """The routed memories' states, [B, E, H, K, V]."""
        return self.memory[:, : self.num_routed]

    @property
    def shared(self) -> torch.Tensor | None:
        """The shared memory's state [B, H, K, V], or None without a shared memory."""
        return self.memory[:, self.num_routed] if self.memory.shape[1] > self.num_routed else None
