"""AdamW parameter groups and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

from torch import nn


def weight_decay_groups(net: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters into decayed and non-decayed AdamW groups.

    Matrices decay; norms, biases and other vectors, embeddings (and so a head tied to them),
    and parameters flagged ``_no_weight_decay`` (e.g. SSM decay rates) do not.
    """
    embeddings = {id(m.weight) for m in net.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in net.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        skip = p.ndim < 2 or id(p) in embeddings or getattr(p, "_no_weight_decay", False)
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup to 1 over ``warmup_steps``, cosine decay to ``min_lr_ratio``
    at ``total_steps``, then flat."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
