"""The token-mixer contract: the one part in which MoM, MemMamba, GDN, Mamba and attention differ.

A mixer is an ``nn.Module`` built as ``mixer(d_model=..., layer_idx=...)`` (Hydra hands the
language model a partial) with

- ``forward(x, state=None, cu_seqlens=None) -> MixerOutput``: x is [B, T, D] in the model
  dtype. With a ``state`` (from ``init_state``) the mixer continues from it and updates it in
  place, which is how decoding works; ``cu_seqlens`` (int [N+1], B == 1) marks packed documents
  whose boundaries no information may cross.
- ``init_state(batch_size, device, dtype, max_len=None)``: an empty per-layer decoding cache;
  with ``max_len`` one whose tensors keep their shapes for up to that many tokens (recurrent
  caches always do), so that a decoding step can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class MixerOutput:
    """What a mixer returns.

    hidden: [B, T, D], same dtype as the input.
    aux_losses: named scalar losses, already weighted; the trainer adds them to the loss.
    stats: the mixer's own statistics for logging, detached: scalars or 1-D tensors under
        short names (``router_load`` [num_memories], ``pool_fill``); the language model lists
        them per layer, and the training module names them for TensorBoard.
    memory: what the layer offers the layers above it in the same pass (MemMamba's note
        pool), or None. The language model hands the list of these, one per earlier layer,
        as ``layer_memory`` to mixers whose ``reads_layer_memory`` attribute is True.
    """

    hidden: torch.Tensor
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    memory: Any = None
