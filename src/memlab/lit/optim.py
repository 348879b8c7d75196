"""Optimizer parameter groups, the warmup + cosine learning-rate schedule, and the schemas of the
``optimizer`` and ``scheduler`` settings memlab checks before a run starts."""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from memlab.models.schema import Schema, option


def weight_decay_groups(net: nn.Module) -> list[dict]:
    """Split parameters into a decayed and a non-decayed optimizer group.

    Matrices decay at the optimizer's ``weight_decay``; norms, biases and other vectors,
    embeddings (and so a head tied to them), and parameters flagged ``_no_weight_decay`` (e.g.
    SSM decay rates) have ``weight_decay`` 0.
    """
    embeddings = {id(m.weight) for m in net.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in net.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        skip = p.ndim < 2 or id(p) in embeddings or getattr(p, "_no_weight_decay", False)
        (no_decay if skip else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup to 1 over ``warmup_steps``, cosine decay to ``min_lr_ratio``
    at ``total_steps``, then flat."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 100, min_lr_ratio: float = 0.1
) -> LambdaLR:
    """The per-optimizer-step scheduler of ``warmup_cosine`` over ``total_steps`` steps."""
    multiplier = functools.partial(
        warmup_cosine, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio
    )
    return LambdaLR(optimizer, multiplier)


@dataclass(frozen=True)
class AdamWOptions(Schema):
    """The keyword arguments of ``torch.optim.AdamW`` as the ``optimizer`` config sets them."""

    PREFIX: ClassVar[str] = "optimizer"
    lr: float = option(1e-3, gt=0)
    betas: object = (0.9, 0.999)
    eps: float = option(1e-8, ge=0)
    weight_decay: float = option(1e-2, ge=0)
    amsgrad: bool = False
    maximize: bool = False
    foreach: bool | None = None
    capturable: bool = False
    differentiable: bool = False
    fused: bool | None = None

    def check(self) -> None:
        self.require("lr", math.isfinite(self.lr), "a finite number > 0")
        self.require("weight_decay", math.isfinite(self.weight_decay), "a finite number >= 0")
        pair = isinstance(self.betas, list | tuple) and len(self.betas) == 2
        self.require("betas", pair and all(_fraction(b) for b in self.betas), "two numbers in [0, 1)")


@dataclass(frozen=True)
class WarmupCosineOptions(Schema):
    """The keyword arguments of ``warmup_cosine_schedule`` as the ``scheduler`` config sets them."""

    PREFIX: ClassVar[str] = "scheduler"
    warmup_steps: int = option(100, ge=0)
    min_lr_ratio: float = option(0.1, ge=0, le=1)


def _fraction(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value < 1


# The schema of each target's options, by the object a config's ``_target_`` names.
OPTIONS: dict[Any, type[Schema]] = {
    torch.optim.AdamW: AdamWOptions,
    warmup_cosine_schedule: WarmupCosineOptions,
}
