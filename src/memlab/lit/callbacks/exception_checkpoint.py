"""The checkpoint a run that dies writes, only when it holds trained steps worth resuming."""

from __future__ import annotations

import logging
from typing import Any

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import OnExceptionCheckpoint

from memlab.lit.callbacks.nonfinite import finite_weights

log = logging.getLogger(__name__)


class ExceptionCheckpoint(OnExceptionCheckpoint):
    """Lightning's ``OnExceptionCheckpoint`` (``<dirpath>/<filename>.ckpt``, removed when fit ends
    normally), written only if this fit took at least one optimizer step and the weights are
    finite: a run failing during setup leaves no untrained checkpoint behind, and a diverged one
    none that would spread its NaNs.

    ``saved`` is ``(path, global_step)`` of the file written at the last exception, else None.
    """

    def __init__(self, dirpath: str, filename: str = "on_exception") -> None:
        super().__init__(dirpath, filename)
        self.saved: tuple[str, int] | None = None
        self._first_step: int | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # the loops are restored by now: a resumed run starts from the checkpoint's step
        self._first_step = trainer.global_step

    def on_exception(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        self.saved = None
        if self._first_step is None or trainer.global_step <= self._first_step:
            return
        # sharded weights (trainer=fsdp) are checked shard by shard: every rank must agree
        finite = trainer.strategy.reduce_boolean_decision(finite_weights(trainer.lightning_module), all=True)
        if not finite:
            log.warning("not writing %s: the weights are not finite", self.ckpt_path)
            return
        super().on_exception(trainer, *args, **kwargs)
        self.saved = (self.ckpt_path, trainer.global_step)
