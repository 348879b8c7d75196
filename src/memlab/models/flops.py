"""Training FLOPs of a language model, for tokens/s → MFU.

A token costs about 6 FLOPs per parameter it passes through (2 forward, 4 backward), the
count of the scaling-law papers (Kaplan et al. 2020, arXiv 2001.08361) and of the MoM
paper's throughput figures. Attention's and the recurrences' own FLOPs, which grow with the
context, are left out, so MFU compares models by the same yardstick.
"""

from __future__ import annotations

from torch import nn


def active_parameters(model: nn.Module) -> int:
    """Parameters that work on every token: all of them but the input embedding (a lookup,
    counted once as the LM head when tied), less what each mixer says idles per token
    (``idle_parameters()``: a MoM layer's memories a token is not routed to)."""
    total = sum(p.numel() for p in model.parameters())
    embed, head = getattr(model, "embed", None), getattr(model, "lm_head", None)
    if embed is not None and (head is None or head.weight is not embed.weight):
        total -= embed.weight.numel()
    for module in model.modules():
        idle = getattr(module, "idle_parameters", None)
        if callable(idle):
            total -= idle()
    return total


def training_flops_per_token(model: nn.Module) -> int:
    """6 · active parameters: one forward and one backward pass over a token."""
    return 6 * active_parameters(model)
