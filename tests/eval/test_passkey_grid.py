"""The passkey grid shared by the test-phase callback and the text task: counting exact answers,
and what a length that runs out of memory does."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from memlab.eval import passkey
from memlab.eval.passkey import Questions, grid_accuracy


def test_cells_count_exact_answers_and_out_of_memory_ends_the_grid(monkeypatch) -> None:
    def decoder(net, prompts, new_tokens, chunk_size):
        if prompts.shape[1] >= 30:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return prompts[:, :new_tokens]

    def cell(length: int, depth: float):
        # two batches: 2 right of 2, then 1 right of 2 at depth 1
        yield Questions(torch.zeros(2, length, dtype=torch.long), 1, lambda a: torch.tensor([True, True]))
        yield Questions(
            torch.zeros(2, length, dtype=torch.long), 1, lambda a: torch.tensor([True, depth < 1])
        )

    monkeypatch.setattr(passkey, "greedy_continuation", decoder)
    net = nn.Linear(1, 1)
    accuracy = grid_accuracy(net, [10, 30, 40], [0.0, 1.0], cell, None, skip_out_of_memory=True)
    assert accuracy[0] == [1.0, 0.75]
    assert all(math.isnan(v) for row in accuracy[1:] for v in row)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        grid_accuracy(net, [10, 30], [0.0], cell, None)
