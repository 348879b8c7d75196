"""Long inputs through a language model in chunks, each continuing from the per-layer states the
previous chunks left (recurrent state, or the KV cache of attention), so that peak activation
memory follows the chunk, not the input; the result equals one pass over the whole input."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
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


@torch.no_grad()
def token_nll(net: nn.Module, tokens: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Negative log-likelihood of each next token: tokens int64 [B, L + 1] -> fp32 [B, L], where
    [:, t] is -log p(tokens[:, t + 1] | tokens[:, :t + 1])."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    out = torch.empty(targets.shape, dtype=torch.float32, device=tokens.device)
    for start, logits in chunks(net, inputs, chunk_size):
        stop = start + logits.shape[1]
        out[:, start:stop] = F.cross_entropy(
            logits.float().transpose(1, 2), targets[:, start:stop], reduction="none"
        )
    return out


@torch.no_grad()
def greedy_continuation(
    net: nn.Module, prompt: torch.Tensor, new_tokens: int, chunk_size: int | None
) -> torch.Tensor:
    """Greedy decoding after a prompt int64 [B, T] read chunk by chunk: -> int64 [B, new_tokens]."""
    param = next(net.parameters())
    states = net.init_states(prompt.shape[0], param.device, param.dtype)
    # Only the last chunk's logits matter; the earlier chunks only fill the states. Keeping
    # just the last one bounds memory by one chunk's logits (B · chunk · V), not the prompt's.
    ((_, logits),) = deque(chunks(net, prompt, chunk_size, states), maxlen=1)
    out = []
    for step in range(new_tokens):
        nxt = logits[:, -1].float().argmax(dim=-1, keepdim=True)
        out.append(nxt)
        if step + 1 < new_tokens:
            logits = net(nxt, states=states).logits
    return torch.cat(out, dim=1)
