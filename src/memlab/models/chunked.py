"""Long inputs through a language model in chunks, each continuing from the per-layer states the
previous chunks left (recurrent state, or the KV cache of attention), so that peak activation
memory follows the chunk, not the input; the result equals one pass over the whole input."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def chunks(
    net: nn.Module, input_ids: torch.Tensor, chunk_size: int | None, states: list[Any] | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, logits)`` for consecutive chunks of input_ids int64 [B, T]: logits
    [B, chunk, V] in the model dtype. ``chunk_size`` None is one pass without states. ``states``
    (from ``net.init_states``) are continued and left updated; fresh ones are made if None."""
    if chunk_size is not None and chunk_size < 1:
        # a step <= 0 would yield no chunk at all, leaving the callers' outputs unwritten
        raise ValueError(f"chunks: chunk_size must be >= 1 or None (got {chunk_size})")
    B, T = input_ids.shape
    if states is None and (chunk_size is None or chunk_size >= T):
        yield 0, net(input_ids).logits
        return
    if states is None:
        param = next(net.parameters())
        states = net.init_states(B, param.device, param.dtype)
    step = T if chunk_size is None else chunk_size
    for start in range(0, T, step):
        yield start, net(input_ids[:, start : start + step], states=states).logits


def prefill(
    net: nn.Module, input_ids: torch.Tensor, chunk_size: int | None, states: list[Any]
) -> torch.Tensor:
    """Read prompts input_ids int64 [B, T] into ``states`` (from ``net.init_states``), ``chunk_size``
    tokens at a time (None: in one pass) -> the last position's logits [B, V] in the model dtype."""
    # Only the last chunk's logits matter; the earlier chunks only fill the states. Keeping
    # just the last one bounds memory by one chunk's logits (B · chunk · V), not the prompt's.
    ((_, logits),) = deque(chunks(net, input_ids, chunk_size, states), maxlen=1)
    return logits[:, -1]
