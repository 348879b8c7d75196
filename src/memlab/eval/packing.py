"""Scoring requests of different lengths in one forward pass: each (context, continuation) pair is
laid end to end along time with ``cu_seqlens`` (B == 1), so that no padding enters a recurrent
state and attention stays within each request; the LM head runs only where a continuation token
is predicted."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def pack(sequences: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (input_ids int64 [1, total], cu_seqlens int32 [N + 1])."""
    lengths = torch.tensor([0] + [len(s) for s in sequences])
    ids = torch.tensor([t for s in sequences for t in s], dtype=torch.long, device=device)
    return ids[None], lengths.cumsum(0).to(device=device, dtype=torch.int32)


@torch.no_grad()
def score_packed(
    net: nn.Module, requests: Sequence[tuple[Sequence[int], Sequence[int]]]
) -> list[tuple[float, bool]]:
    """(context ids, continuation ids) pairs -> (log p(continuation | context), whether the
    continuation is the greedy one), in one packed pass.

    Each request's input is context + continuation less its last token; the model's logits at
    the last len(continuation) positions of that input predict the continuation. Contexts must
    be non-empty (the caller puts an end-of-text token before an empty one).
    """
    device = next(net.parameters()).device
    inputs = [[*ctx, *cont][:-1] for ctx, cont in requests]
    input_ids, cu_seqlens = pack(inputs, device)
    # the positions whose next token is a continuation token, request after request
    mask = torch.zeros(input_ids.shape, dtype=torch.bool, device=device)
    ends = cu_seqlens[1:].tolist()
    for end, (_, cont) in zip(ends, requests, strict=True):
        mask[0, end - len(cont) : end] = True
    logits = net(input_ids, cu_seqlens=cu_seqlens, logits_mask=mask).logits.float()  # [n, V]
    targets = torch.tensor([t for _, cont in requests for t in cont], device=device)
    logprobs = logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    greedy = logits.argmax(-1) == targets
    out, start = [], 0
    for _, cont in requests:
        stop = start + len(cont)
        out.append((float(logprobs[start:stop].sum()), bool(greedy[start:stop].all())))
        start = stop
    return out
