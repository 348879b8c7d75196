"""Training throughput in tokens per second and peak memory, logged as ``perf/*``."""

from __future__ import annotations

import resource
import sys
import time

import torch
from lightning import Callback, LightningModule, Trainer


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated accelerator memory, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20


class TokenThroughput(Callback):
    """Logs ``perf/tokens_per_s`` (also on the progress bar) and ``perf/peak_mem_gib``.

    Tokens are the input_ids of a training batch times the world size; time is wall time
    between consecutive training batch ends, so data loading counts against throughput.
    The first step (compilation, warm-up) is not reported.
    """

    def __init__(self) -> None:
        self._last: float | None = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: dict, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._last is not None:
            tokens = batch["input_ids"].numel() * trainer.world_size
            pl_module.log("perf/tokens_per_s", tokens / max(now - self._last, 1e-9), prog_bar=True)
            pl_module.log("perf/peak_mem_gib", peak_memory_gib(pl_module.device))
        self._last = now
