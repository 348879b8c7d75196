"""Passkey accuracy on a length × depth grid far beyond the training length, in the test phase."""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from memlab.data.passkey import PasskeyDataModule
from memlab.data.tasks.passkey import min_passkey_length
from memlab.errors import ConfigError
from memlab.eval.heatmap import plot_heatmap
from memlab.eval.passkey import Questions, grid_accuracy

# Depths key the grid's data streams in millionths, so a cell's prompts depend only on its
# (length, depth), not on the rest of the grid or on the batch size.
_DEPTH_UNITS = 1_000_000


class PasskeyGrid(Callback):
    """At the end of testing, the exact-match passkey accuracy of greedy answers on a grid of
    context lengths (multiples of the training length) × needle depths.

    Logs ``test/passkey_acc/len{n}`` (mean over depths) and ``test/passkey_acc`` (mean over
    the grid), the heatmap as the TensorBoard figure ``test/passkey_heatmap``, and writes it
    to ``passkey_heatmap.png`` in the run folder (``trainer.default_root_dir``). Needs a
    ``PasskeyDataModule``; the prompts of a cell come from its ``generate("grid", (length,
    depth))``, so every model trained with the same data seed is asked the same questions.
    Prompts are read ``prefill_chunk`` tokens at a time through the decoding caches (a
    recurrent model's memory then stays flat in the length), then the needle's digits are
    decoded greedily (``memlab.eval.passkey``, as the text task does). Under fast_dev_run only
    the shortest length, the first and last depth and 2 samples per cell run.

    Args:
        length_multiples: context lengths as multiples of ``data.seq_len``.
        depths: needle depths in [0, 1].
        num_samples: prompts per grid cell.
        batch_size: prompts per forward pass.
        prefill_chunk: tokens per prefill pass.
    """

    def __init__(
        self,
        length_multiples: Sequence[float] = (1, 2, 4, 8, 16, 32),
        depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
        num_samples: int = 32,
        batch_size: int = 32,
        prefill_chunk: int = 1024,
    ) -> None:
        self.length_multiples = _numbers("length_multiples", length_multiples, "> 0", lambda m: m > 0)
        self.depths = _numbers("depths", depths, "in [0, 1]", lambda d: 0.0 <= d <= 1.0)
        self.num_samples = _positive_int("num_samples", num_samples)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.prefill_chunk = _positive_int("prefill_chunk", prefill_chunk)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Refused at start-up rather than after a whole training run.
        if not isinstance(trainer.datamodule, PasskeyDataModule):
            raise ConfigError("callbacks.passkey_grid needs data=passkey")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        data = trainer.datamodule
        shortest = min_passkey_length(data.needle_len)
        lengths = sorted({max(round(m * data.seq_len), shortest) for m in self.length_multiples})
        depths, samples = self.depths, self.num_samples
        if trainer.fast_dev_run:
            lengths, depths, samples = lengths[:1], sorted({depths[0], depths[-1]}), 2
        cell = functools.partial(self._questions, data, samples=samples)
        with trainer.precision_plugin.forward_context():
            accuracy = grid_accuracy(pl_module.net, lengths, depths, cell, self.prefill_chunk)
        for length, row in zip(lengths, accuracy, strict=True):
            pl_module.log(f"test/passkey_acc/len{length}", sum(row) / len(row))
        pl_module.log("test/passkey_acc", sum(map(sum, accuracy)) / (len(lengths) * len(depths)))
        if trainer.is_global_zero:
            self._plot(trainer, accuracy, lengths, depths, data.seq_len)

    def _questions(
        self, data: PasskeyDataModule, length: int, depth: float, samples: int
    ) -> Iterator[Questions]:
        """The ``samples`` prompts of this length and depth, in batches; an answer is right when
        every digit is."""
        n = data.needle_len
        ids, labels, _ = data.generate("grid", (length, round(depth * _DEPTH_UNITS)), samples, length, depth)
        prompts = torch.from_numpy(ids[:, : length - n + 1])  # up to and including QUERY
        answers = torch.from_numpy(labels[:, length - n :])
        for start in range(0, samples, self.batch_size):
            rows = slice(start, start + self.batch_size)
            yield Questions(prompts[rows], n, functools.partial(_all_digits_equal, answers[rows]))

    def _plot(
        self,
        trainer: Trainer,
        accuracy: list[list[float]],
        lengths: list[int],
        depths: list[float],
        train_len: int,
    ) -> None:
        path = Path(trainer.default_root_dir) / "passkey_heatmap.png"
        fig = plot_heatmap(accuracy, lengths, depths, f"passkey exact match (trained at L={train_len})", path)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(
                    "test/passkey_heatmap", fig, global_step=trainer.global_step, close=False
                )
        # pyplot only now: plot_heatmap has picked the headless backend it must load with.
        import matplotlib.pyplot as plt

        plt.close(fig)


def _all_digits_equal(expected: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """answers, expected int64 [B, n] -> bool [B]."""
    return (answers == expected).all(-1)


def _numbers(key: str, values: Any, rule: str, ok: Callable[[float], bool]) -> list[float]:
    """``values`` as a non-empty list of floats that each pass ``ok``, else ConfigError."""
    is_list = isinstance(values, Sequence) and not isinstance(values, (str, bytes)) and len(values) > 0
    if not is_list or any(
        isinstance(v, bool) or not isinstance(v, numbers.Real) or not ok(v) for v in values
    ):
        shown = list(values) if is_list else values
        raise ConfigError(
            f"callbacks.passkey_grid.{key} must be a non-empty list of numbers {rule} (got {shown!r})"
        )
    return [float(v) for v in values]


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"callbacks.passkey_grid.{key} must be an integer >= 1 (got {value!r})")
    return int(value)
