"""Stop (or skip) a training step whose loss or gradients are not finite, before the optimizer
applies it, and refuse to checkpoint non-finite weights."""

from __future__ import annotations

import logging
import math
import numbers
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from torch import nn

from memlab.errors import ConfigError, NonFiniteError

log = logging.getLogger(__name__)


def _all_finite(tensors: Any, device: torch.device | None = None) -> torch.Tensor:
    """A bool tensor on ``device`` (else the tensors'): every floating-point value among ``tensors``
    is finite (of a sharded DTensor, the values this rank holds)."""
    floats = [_local(t.detach()) for t in tensors if t.is_floating_point()]
    if not floats:
        return torch.ones((), dtype=torch.bool, device=device)
    # the largest magnitude of each tensor: inf or NaN exactly when the tensor holds one
    norms = torch.stack([n.float() for n in torch._foreach_norm(floats, math.inf)])
    return norms.isfinite().all().to(device or norms.device)


def _local(t: torch.Tensor) -> torch.Tensor:
    # FSDP2 parameters and gradients are DTensors: each rank checks its own shard
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def finite_tensors(tensors: Any) -> bool:
    """True when every floating-point tensor among ``tensors`` holds only finite values."""
    return bool(_all_finite(tensors))


def finite_weights(module: nn.Module) -> bool:
    """True when every floating-point parameter and buffer of ``module`` is finite."""
    return finite_tensors([*module.parameters(), *module.buffers()])


class NonFiniteGuard(Callback):
    """Checks every optimizer step's loss and gradients before the update.

    A non-finite one stops training with :class:`NonFiniteError` (the weights and optimizer
    state are still those of the previous step; its ``loss`` holds the non-finite loss), unless
    fewer than ``max_skips`` steps were skipped so far in the run: then the step is skipped
    instead — its gradients are dropped, so neither the weights nor the optimizer moments move,
    while the step and its batch still count (as large-scale trainers skip a loss spike).
    ``train/skipped_steps`` logs the count (when skips are allowed), which a resumed run
    continues. A checkpoint whose weights are not finite is never written.

    Under a gradient scaler (fp16) the scaler owns non-finite gradients; the loss is still
    checked. The decision costs one host sync per optimizer step.
    """

    def __init__(self, max_skips: int = 0) -> None:
        if not isinstance(max_skips, numbers.Integral) or isinstance(max_skips, bool) or max_skips < 0:
            raise ConfigError(f"NonFiniteGuard: max_skips must be an integer >= 0 (got {max_skips!r})")
        self.max_skips = int(max_skips)
        self.skipped = 0
        self._bad_loss: torch.Tensor | None = None
        self._loss: torch.Tensor | None = None

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        # or-ed over the micro-batches of an accumulated step, read once at its optimizer step
        self._loss = loss.detach()
        bad = ~torch.isfinite(self._loss)
        self._bad_loss = bad if self._bad_loss is None else self._bad_loss | bad

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        device = pl_module.device
        no = torch.zeros((), dtype=torch.bool, device=device)
        bad_loss = no if self._bad_loss is None else self._bad_loss.to(device)
        # under a scaler, inf gradients are the scaler's to skip
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        bad_grads = no if scaled else ~_all_finite([p.grad for p in params], device)
        bad_loss, bad_grads = torch.stack([bad_loss, bad_grads]).tolist()  # the one host sync
        loss, self._loss, self._bad_loss = self._loss, None, None
        # under DDP every rank must take the same decision (a loss is rank-local)
        if not trainer.strategy.reduce_boolean_decision(bad_loss or bad_grads, all=False):
            return
        what = " and ".join(name for name, bad in (("loss", bad_loss), ("gradients", bad_grads)) if bad)
        what = what or "loss or gradients on another rank"
        step = trainer.global_step + 1
        if self.skipped >= self.max_skips:
            before = (
                f" ({self.skipped} step{'s' * (self.skipped != 1)} skipped before)" if self.skipped else ""
            )
            value = float(loss) if loss is not None else math.nan
            raise NonFiniteError(
                f"non-finite {what} at step {step}{before}", loss=None if math.isfinite(value) else value
            )
        self.skipped += 1
        log.warning("step %d: non-finite %s, skipped (%d of %d)", step, what, self.skipped, self.max_skips)
        for p in params:
            p.grad = None  # the optimizer leaves parameters without a gradient untouched

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.max_skips:  # without skips the count stays 0: the run stops instead
            pl_module.log("train/skipped_steps", float(self.skipped))

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        # raised before the file is opened: the previous checkpoint of that name stays as it was
        if not finite_tensors(checkpoint["state_dict"].values()):
            raise NonFiniteError(
                f"non-finite weights after step {trainer.global_step}: checkpoint not written"
            )

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped = int(state_dict["skipped"])
