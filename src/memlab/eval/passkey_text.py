"""Passkey retrieval in text form: a 5-digit key hidden at a chosen depth of generated filler text;
correct iff the greedy continuation of the question is exactly the key."""

from __future__ import annotations

import functools
import numbers
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from memlab.data.text.tokenizer import TextTokenizer
from memlab.errors import ConfigError
from memlab.eval.passkey import Questions, grid_accuracy

TASK = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there."
)
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
_DIGITS = re.compile(r"\s*(\d+)")


@dataclass
class PasskeyResult:
    """accuracy[i][j]: share of trials answered exactly at lengths[i] tokens, needle depth depths[j]
    (NaN where the length did not fit in memory)."""

    lengths: list[int]
    depths: list[float]
    accuracy: list[list[float]]
    trials: int

    def metrics(self) -> dict[str, float]:
        """``passkey/acc`` (mean over the grid cells that ran) and ``passkey/acc/<length>/<depth %>``."""
        cells = np.array(self.accuracy, dtype=float)
        out = {"passkey/acc": float(np.nanmean(cells)) if np.isfinite(cells).any() else float("nan")}
        for i, length in enumerate(self.lengths):
            for j, depth in enumerate(self.depths):
                out[f"passkey/acc/{length}/{round(100 * depth)}"] = self.accuracy[i][j]
        return out


def passkey_prompt(tokenizer: TextTokenizer, length: int, depth: float, key: int) -> np.ndarray:
    """The prompt of ``length`` tokens at most: task line, filler, the key line after ``depth``
    (0..1) of the filler sentences, filler, question. int32 [<= length]."""
    (task, filler, needle, question) = tokenizer.encode_batch(
        [TASK, FILLER, NEEDLE.format(key=key), QUESTION]
    )
    budget = length - len(task) - len(needle) - len(question)
    if budget < 0:
        raise ConfigError(
            f"passkey.lengths: {length} tokens cannot hold the task, key and question "
            f"({length - budget} tokens with tokenizer {tokenizer.name})"
        )
    repeats = budget // len(filler)
    before = round(depth * repeats)
    return np.concatenate(
        [task, np.tile(filler, before), needle, np.tile(filler, repeats - before), question]
    ).astype(np.int32)


def answer_is_key(text: str, key: int) -> bool:
    """The continuation starts (after spaces) with exactly the key's digits."""
    match = _DIGITS.match(text)
    return match is not None and match.group(1) == str(key)


def evaluate_passkey(
    net: nn.Module,
    tokenizer: TextTokenizer,
    lengths: Sequence[int],
    depths: Sequence[float],
    trials: int = 5,
    seed: int = 0,
    chunk_size: int | None = None,
    autocast: torch.dtype | None = None,
) -> PasskeyResult:
    """Accuracy on the lengths × depths grid, ``trials`` random keys per cell (the same keys in
    every cell), one prompt at a time. Prompts are read ``chunk_size`` tokens at a time with
    carried state, so a recurrent model's memory stays flat at any length; a length that runs out
    of CUDA memory is left blank, with the longer ones."""
    for depth in depths:
        if isinstance(depth, bool) or not isinstance(depth, numbers.Real) or not 0.0 <= depth <= 1.0:
            raise ConfigError(f"passkey.depths: {depth!r} is not a fraction in [0, 1]")
    keys = np.random.default_rng(seed).integers(10_000, 100_000, trials).tolist()
    new_tokens = max(len(tokenizer.encode_batch([f" {k}"])[0]) for k in keys) + 1

    def cell(length: int, depth: float) -> Iterator[Questions]:
        for key in keys:
            prompt = torch.from_numpy(passkey_prompt(tokenizer, length, float(depth), key).astype(np.int64))
            yield Questions(prompt[None], new_tokens, functools.partial(_marks, tokenizer, key))

    device = next(net.parameters()).device
    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        accuracy = grid_accuracy(net, lengths, depths, cell, chunk_size, skip_out_of_memory=True)
    return PasskeyResult([int(n) for n in lengths], [float(d) for d in depths], accuracy, trials)


def _marks(tokenizer: TextTokenizer, key: int, answers: torch.Tensor) -> torch.Tensor:
    """answers int64 [B, new_tokens] -> bool [B]: each decodes to exactly ``key``."""
    return torch.tensor([answer_is_key(tokenizer.decode(row.tolist()), key) for row in answers])
