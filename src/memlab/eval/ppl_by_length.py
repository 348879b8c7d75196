"""Perplexity by context length, PG19 style: test documents concatenated and cut into blocks of L
tokens, one pass per block (or chunk by chunk with carried state); perplexity overall, per
position bucket, and at a table of fixed lengths."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from memlab.data.text.tokenizer import TextTokenizer
from memlab.eval.chunked import token_nll

log = logging.getLogger(__name__)


@dataclass
class PerplexityByLength:
    """Perplexities of one model on one token stream.

    lengths: {L: perplexity over every position of the blocks of L tokens}.
    blocks: {L: number of blocks of L tokens evaluated}.
    buckets: (first position, perplexity) per bucket of positions, for the longest length.
    overall: the perplexity over every position of the longest length's blocks.
    skipped: {L: why it was not evaluated (too few tokens, out of memory)}.
    """

    tokenizer: str
    bucket: int
    lengths: dict[int, float] = field(default_factory=dict)
    blocks: dict[int, int] = field(default_factory=dict)
    buckets: list[tuple[int, float]] = field(default_factory=list)
    overall: float = math.nan
    skipped: dict[int, str] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat metrics: ``ppl/overall``, ``ppl/length/<L>``, ``ppl/position/<first position>``."""
        out = {"ppl/overall": self.overall}
        out.update({f"ppl/length/{length}": ppl for length, ppl in self.lengths.items()})
        out.update({f"ppl/position/{start}": ppl for start, ppl in self.buckets})
        return out

    def table(self) -> str:
        """The fixed-length table and the position buckets as markdown."""
        rows = [f"Tokenizer: {self.tokenizer}", "", "| length | blocks | perplexity |", "|---:|---:|---:|"]
        for n in sorted({*self.lengths, *self.skipped}):
            rows.append(
                f"| {n} | {self.blocks[n]} | {self.lengths[n]:.3f} |"
                if n in self.lengths
                else f"| {n} | 0 | ({self.skipped[n]}) |"
            )
        rows += ["", "| positions (longest length) | perplexity |", "|---:|---:|"]
        rows += [f"| {s}–{s + self.bucket - 1} | {ppl:.3f} |" for s, ppl in self.buckets]
        return "\n".join(rows) + "\n"


def concatenated_tokens(documents: Iterable[str], tokenizer: TextTokenizer, needed: int) -> np.ndarray:
    """The documents' tokens, each document followed by end-of-text, until ``needed`` tokens (or
    the documents run out): int32 [<= needed]."""
    parts, total = [], 0
    for text in documents:
        (ids,) = tokenizer.encode_batch([text])
        parts += [ids, np.array([tokenizer.eos_id], dtype=np.int32)]
        total += len(ids) + 1
        if total >= needed:
            break
    return np.concatenate(parts)[:needed] if parts else np.empty(0, dtype=np.int32)


def evaluate_ppl_by_length(
    net: nn.Module,
    tokens: np.ndarray,
    lengths: Sequence[int],
    tokenizer: str,
    bucket: int = 2048,
    max_blocks: int = 8,
    chunk_size: int | None = None,
    batch_size: int = 1,
    autocast: torch.dtype | None = None,
) -> PerplexityByLength:
    """Cut ``tokens`` (one concatenated stream) into up to ``max_blocks`` consecutive blocks of
    L + 1 tokens for every L in ``lengths`` (L predictions each) and score them with
    :func:`token_nll` in batches of ``batch_size`` blocks. A length with no whole block, or that
    runs out of accelerator memory, is skipped with the reason (and so are the longer ones)."""
    device = next(net.parameters()).device
    result = PerplexityByLength(tokenizer=tokenizer, bucket=bucket)
    longest: torch.Tensor | None = None
    for length in sorted(lengths):
        count = min(max_blocks, len(tokens) // (length + 1))
        if count == 0:
            result.skipped[length] = f"needs {length + 1} tokens, the documents have {len(tokens)}"
            continue
        blocks = torch.from_numpy(tokens[: count * (length + 1)].astype(np.int64)).view(count, length + 1)
        try:
            nll = torch.cat([_nll(net, b.to(device), chunk_size, autocast) for b in blocks.split(batch_size)])
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            result.skipped[length] = "out of memory"
            log.warning("ppl_by_length: length %d ran out of memory; longer lengths skipped", length)
            for rest in lengths:
                if rest > length:
                    result.skipped[rest] = "out of memory"
            break
        result.lengths[length] = math.exp(nll.mean().item())
        result.blocks[length] = count
        longest = nll
    if longest is not None:
        result.overall = math.exp(longest.mean().item())
        for start in range(0, longest.shape[1], bucket):
            result.buckets.append((start, math.exp(longest[:, start : start + bucket].mean().item())))
    return result


def _nll(
    net: nn.Module, blocks: torch.Tensor, chunk_size: int | None, autocast: torch.dtype | None
) -> torch.Tensor:
    with torch.autocast(blocks.device.type, dtype=autocast, enabled=autocast is not None):
        return token_nll(net, blocks, chunk_size).cpu()


def plot_ppl_by_length(result: PerplexityByLength, title: str, path: Path | None = None) -> Any:
    """Perplexity per position bucket (longest length) and per length, side by side; a PNG at
    ``path`` if given; returns the (open) matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_position, by_length) = plt.subplots(1, 2, figsize=(10, 3.6))
    starts = [s + result.bucket / 2 for s, _ in result.buckets]
    by_position.plot(starts, [p for _, p in result.buckets], marker="o" if len(starts) <= 64 else None)
    by_position.set_xlabel(f"position (bucket of {result.bucket} tokens)")
    by_position.set_ylabel("perplexity")
    by_position.set_title("by position")
    by_length.plot(list(result.lengths), list(result.lengths.values()), marker="o")
    by_length.set_xscale("log", base=2)
    by_length.set_xlabel("context length (tokens)")
    by_length.set_title("by length")
    fig.suptitle(f"{title} — tokenizer {result.tokenizer}")
    fig.tight_layout()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig
