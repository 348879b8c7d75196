"""Lightning's ModelCheckpoint, with last.ckpt always holding the final step of a finished run."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


class StepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint (every ``every_n_train_steps`` steps, plus ``last.ckpt``) that also writes
    ``last.ckpt`` when training ends between two of those steps: otherwise it would keep the
    last multiple of the interval, and ``ckpt_path=last`` would evaluate or resume from weights
    a few steps older than the run's final ones."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved < trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_global_step_saved = trainer.global_step
        super().on_train_end(trainer, pl_module)
