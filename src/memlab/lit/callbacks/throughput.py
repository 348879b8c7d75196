"""Training throughput in tokens per second, model FLOPs utilisation and peak memory, logged as ``perf/*``."""

from __future__ import annotations

import resource
import sys
import time

import torch
from lightning import Callback, LightningModule, Trainer

from memlab.models.flops import training_flops_per_token
from memlab.utils.gpu_peak import peak_bf16_flops


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated accelerator memory, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s, or None where it is not known (CPUs included)."""
    return peak_bf16_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


class TokenThroughput(Callback):
    """Logs ``perf/tokens_per_s`` (also on the progress bar), ``perf/peak_mem_gib`` and, on a GPU
    whose peak is known, ``perf/mfu`` = 6 · N · tokens/s / (world size · peak bf16 FLOP/s), with
    N the active parameters (memlab.models.flops: a MoM token's unrouted memories left out;
    attention's T² term too).

    Tokens are the input_ids of a training batch times the world size; time is wall time
    between consecutive training batch ends, so data loading counts against throughput.
    The first step (compilation, warm-up) is not reported.
    """

    def __init__(self) -> None:
        self._last: float | None = None
        self._flops_per_token: float | None = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last = None
        peak = peak_flops(pl_module.device)
        net = getattr(pl_module, "net", pl_module)
        self._flops_per_token = (
            None if peak is None else training_flops_per_token(net) / (peak * trainer.world_size)
        )

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: dict, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._last is not None:
            tokens_per_s = batch["input_ids"].numel() * trainer.world_size / max(now - self._last, 1e-9)
            pl_module.log("perf/tokens_per_s", tokens_per_s, prog_bar=True)
            pl_module.log("perf/peak_mem_gib", peak_memory_gib(pl_module.device))
            if self._flops_per_token is not None:
                pl_module.log("perf/mfu", self._flops_per_token * tokens_per_s)
        self._last = now
