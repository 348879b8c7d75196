"""Lightning's TensorBoard logger as memlab trains: by steps."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger as _TensorBoardLogger


class TensorBoardLogger(_TensorBoardLogger):
    """Lightning's TensorBoardLogger without the ``epoch`` scalar Lightning adds to every log call
    (memlab counts training in steps over endless streams; ``log_epoch=True`` keeps it)."""

    def __init__(self, *args: Any, log_epoch: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log_epoch = log_epoch

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if not self.log_epoch:
            metrics = {name: value for name, value in metrics.items() if name != "epoch"}
        super().log_metrics(metrics, step)
