"""Passkey accuracy on a length × depth grid far beyond the training length, in the test phase."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from memlab.data.passkey import PasskeyDataModule
from memlab.data.tasks.passkey import min_passkey_length
from memlab.errors import ConfigError


@torch.no_grad()
def greedy_answer(net: nn.Module, prompts: torch.Tensor, num_tokens: int, prefill_chunk: int) -> torch.Tensor:
    """Greedy continuation int64 [B, num_tokens] of prompts int64 [B, T] by a memlab
    LanguageModel, whose prompt goes through its decoding caches ``prefill_chunk`` tokens at a
    time (a recurrent model's memory then stays flat in T), logits only at the last position."""
    param = next(net.parameters())
    B, T = prompts.shape
    states = net.init_states(B, param.device, param.dtype)
    for start in range(0, T, prefill_chunk):
        piece = prompts[:, start : start + prefill_chunk]
        last = torch.zeros_like(piece, dtype=torch.bool)
        last[:, -1] = start + prefill_chunk >= T
        logits = net(piece, states=states, logits_mask=last).logits
    answer = []
    for step in range(num_tokens):
        token = logits.float().argmax(-1, keepdim=True)  # [B, 1]
        answer.append(token)
        if step + 1 < num_tokens:
            logits = net(token, states=states).logits[:, -1]
    return torch.cat(answer, dim=1)


class PasskeyGrid(Callback):
    """At the end of testing, the exact-match passkey accuracy of greedy answers on a grid of
    context lengths (multiples of the training length) × needle depths.

    Logs ``test/passkey_acc/len{n}`` (mean over depths) and ``test/passkey_acc`` (mean over
    the grid), the heatmap as the TensorBoard figure ``test/passkey_heatmap``, and writes it
    to ``passkey_heatmap.png`` in the run folder (``trainer.default_root_dir``). Needs a
    ``PasskeyDataModule``; the prompts come from its ``generate("grid", ...)``, so every model
    trained with the same data seed is asked the same questions. Under fast_dev_run only the
    shortest length, the first and last depth and one batch of 2 run.

    Args:
        length_multiples: context lengths as multiples of ``data.seq_len``.
        depths: needle depths in [0, 1].
        num_samples: prompts per grid cell.
        batch_size: prompts per forward pass.
        prefill_chunk: tokens per prefill pass (see ``greedy_answer``).
    """

    def __init__(
        self,
        length_multiples: Sequence[float] = (1, 2, 4, 8, 16, 32),
        depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
        num_samples: int = 32,
        batch_size: int = 32,
        prefill_chunk: int = 1024,
    ) -> None:
        if not length_multiples or any(m <= 0 for m in length_multiples):
            raise ConfigError(
                f"callbacks.passkey_grid.length_multiples must be > 0 (got {list(length_multiples)})"
            )
        if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
            raise ConfigError(f"callbacks.passkey_grid.depths must lie in [0, 1] (got {list(depths)})")
        for key, value in (
            ("num_samples", num_samples),
            ("batch_size", batch_size),
            ("prefill_chunk", prefill_chunk),
        ):
            if int(value) < 1:
                raise ConfigError(f"callbacks.passkey_grid.{key} must be >= 1 (got {value})")
        self.length_multiples = [float(m) for m in length_multiples]
        self.depths = [float(d) for d in depths]
        self.num_samples, self.batch_size, self.prefill_chunk = (
            int(num_samples),
            int(batch_size),
            int(prefill_chunk),
        )

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
        n = data.needle_len
        accuracy = []
        with trainer.precision_plugin.forward_context():
            for i, length in enumerate(lengths):
                row = []
                for j, depth in enumerate(depths):
                    correct = 0
                    for start in range(0, samples, self.batch_size):
                        count = min(self.batch_size, samples - start)
                        ids, labels, _ = data.generate(
                            "grid", (i * len(depths) + j) * samples + start, count, length, depth
                        )
                        prompts = torch.from_numpy(ids[:, : length - n + 1]).to(pl_module.device)
                        answer = greedy_answer(pl_module.net, prompts, n, self.prefill_chunk).cpu()
                        correct += int((answer == torch.from_numpy(labels[:, length - n :])).all(-1).sum())
                    row.append(correct / samples)
                accuracy.append(row)
                pl_module.log(f"test/passkey_acc/len{length}", sum(row) / len(row))
        pl_module.log("test/passkey_acc", sum(map(sum, accuracy)) / (len(lengths) * len(depths)))
        if trainer.is_global_zero:
            self._plot(trainer, accuracy, lengths, depths, data.seq_len)

    def _plot(
        self,
        trainer: Trainer,
        accuracy: list[list[float]],
        lengths: list[int],
        depths: list[float],
        train_len: int,
    ) -> None:
        from memlab.eval.heatmap import plot_heatmap

        path = Path(trainer.default_root_dir) / "passkey_heatmap.png"
        fig = plot_heatmap(accuracy, lengths, depths, f"passkey exact match (trained at L={train_len})", path)
        tensorboard = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        for logger in tensorboard:
            logger.experiment.add_figure(
                "test/passkey_heatmap", fig, global_step=trainer.global_step, close=False
            )
        import matplotlib.pyplot as plt

        plt.close(fig)
