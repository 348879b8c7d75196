"""Training FLOPs of a language model, for tokens/s → MFU.

A token costs about 6 FLOPs per parameter it passes through (2 forward, 4 backward), the
count of the scaling-law papers (Kaplan et al. 2020, arXiv 2001.08361) and of the MoM
paper's throughput figures. Attention's and the recurrences' own FLOPs, which grow with the
context, are left out, so MFU compares models by the same yardstick.
"""

from __future__ import annotations

from torch import nn


def active_parameters(model: nn.Module) -> int:
    """Parameters that work on every token: all of them but embedding tables (a lookup, unless
    tied to a projection such as the LM head), less what each module says idles per token
    (``idle_parameters()``: a MoM layer's memories a token is not routed to)."""
    modules = list(model.modules())
    lookups = {id(m.weight) for m in modules if isinstance(m, nn.Embedding)}
    lookups -= {id(m.weight) for m in modules if isinstance(m, nn.Linear)}
    total = sum(p.numel() for p in model.parameters() if id(p) not in lookups)
    return total - sum(m.idle_parameters() for m in modules if callable(getattr(m, "idle_parameters", None)))


def training_flops_per_token(model: nn.Module) -> int:
    """6 · active parameters: one forward and one backward pass over a token."""
    return 6 * active_parameters(model)
