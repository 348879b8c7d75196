"""Passkey retrieval accuracy on a length × needle-depth grid, the one evaluation behind both the
test-phase callback (token passkeys, ``memlab.lit.callbacks.PasskeyGrid``) and the text task of
``scripts/eval.py`` (``memlab.eval.passkey_text``): each prompt is read chunk by chunk with carried
state, the answer is decoded greedily, and it counts only if it is exactly right."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from memlab.eval.chunked import greedy_continuation

log = logging.getLogger(__name__)


@dataclass
class Questions:
    """A batch of prompts of one grid cell: ``prompts`` int64 [B, T] (any device), answered with
    ``new_tokens`` greedy tokens; ``correct`` marks the answers, int64 [B, new_tokens] on the
    CPU, as bool [B]."""

    prompts: torch.Tensor
    new_tokens: int
    correct: Callable[[torch.Tensor], torch.Tensor]


def cell_accuracy(net: nn.Module, questions: Iterable[Questions], chunk_size: int | None) -> float:
    """Share of the prompts of ``questions`` answered exactly, prompts read ``chunk_size`` tokens
    at a time (None: in one pass)."""
    device = next(net.parameters()).device
    correct = total = 0
    for batch in questions:
        answers = greedy_continuation(net, batch.prompts.to(device), batch.new_tokens, chunk_size).cpu()
        correct += int(batch.correct(answers).sum())
        total += len(answers)
    return correct / total


def grid_accuracy(
    net: nn.Module,
    lengths: Sequence[int],
    depths: Sequence[float],
    cell: Callable[[int, float], Iterable[Questions]],
    chunk_size: int | None,
    skip_out_of_memory: bool = False,
) -> list[list[float]]:
    """accuracy[i][j]: ``cell_accuracy`` of ``cell(lengths[i], depths[j])``, cell by cell.

    With ``skip_out_of_memory``, a length that runs out of CUDA memory ends the grid: its cells
    not yet done and all later lengths stay NaN (with a warning); otherwise the error is raised.
    """
    accuracy = [[float("nan")] * len(depths) for _ in lengths]
    for i, length in enumerate(lengths):
        try:
            for j, depth in enumerate(depths):
                accuracy[i][j] = cell_accuracy(net, cell(length, depth), chunk_size)
        except torch.cuda.OutOfMemoryError:
            if not skip_out_of_memory:
                raise
            torch.cuda.empty_cache()
            log.warning("passkey: length %d ran out of memory; it and longer lengths are left blank", length)
            break
    return accuracy
