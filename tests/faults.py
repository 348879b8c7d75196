"""Faults injected into real runs at a chosen step, by callbacks a CLI run adds with
``+callbacks.<name>._target_=tests.faults.<Class>``."""

from __future__ import annotations

import os
import signal

from lightning import Callback


class SigtermAt(Callback):
    """Sends this process SIGTERM, as a scheduler would, as step ``step + 1`` starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class FailAtStart(Callback):
    """Fails inside fit before the first step, as a broken setup would."""

    def on_train_start(self, trainer, pl_module) -> None:
        raise RuntimeError("failed before the first step")
