"""Evaluation over long inputs read in chunks with carried state (``memlab.models.chunked``): the
next-token losses of a text, and the greedy continuation of a prompt."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from memlab.models.chunked import chunks, prefill

if TYPE_CHECKING:
    from memlab.models import LanguageModel


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
    net: LanguageModel, prompt: torch.Tensor, new_tokens: int, chunk_size: int | None
) -> torch.Tensor:
    """Greedy decoding after a prompt int64 [B, T] read chunk by chunk: -> int64 [B, new_tokens]."""
    param = next(net.parameters())
    states = net.init_states(prompt.shape[0], param.device, param.dtype)
    logits = prefill(net, prompt, chunk_size, states)
    out = []
    for step in range(new_tokens):
        nxt = logits.float().argmax(dim=-1, keepdim=True)
        out.append(nxt)
        if step + 1 < new_tokens:
            net.schedule_step(states, prompt.shape[1] + step)  # MemMamba: skip what it can
            logits = net(nxt, states=states).logits[:, -1]
    return torch.cat(out, dim=1)
