"""The next token from a language model's last logits: greedy, or sampled at a temperature from
the ``top_k`` most likely tokens and the smallest set holding ``top_p`` of the probability.

Written without host synchronisation (no ``.item()``, no branch on a tensor's values) and with
shapes that depend only on [B, V], so that it can run inside a captured CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memlab.models.schema import Schema, option


@dataclass(frozen=True)
class SamplingConfig(Schema):
    """temperature 0 is greedy (top_k and top_p then change nothing); top_k None or top_p None
    (or 1.0) leave that filter off."""

    PREFIX = "sampling"

    temperature: float = option(0.0, ge=0)
    top_k: int | None = option(None, ge=1)
    top_p: float | None = option(None, gt=0, le=1)


def sample(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids int64 [B, 1] from fp32 logits [B, V] (``generator`` on the logits' device)."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        logits = _nucleus(logits, top_p)
    return _draw(logits.softmax(dim=-1), generator)


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """logits [B, V] with every token outside the nucleus at -inf: the most likely tokens whose
    probabilities, taken in decreasing order, first sum to >= top_p (always at least one)."""
    ordered, order = logits.sort(dim=-1, descending=True)
    probs = ordered.softmax(dim=-1)
    # a token is dropped when the tokens before it already hold top_p
    drop = probs.cumsum(dim=-1) - probs >= top_p
    # back from the sorted order to the vocabulary's
    dropped = torch.zeros_like(drop).scatter(-1, order, drop)
    return logits.masked_fill(dropped, float("-inf"))


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of probs [B, V], drawn with probability probs: argmax of probs / E with
    E ~ Exponential(1) (the Gumbel-max trick), which needs no host synchronisation, unlike
    torch.multinomial on CUDA."""
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / noise).argmax(dim=-1, keepdim=True)
