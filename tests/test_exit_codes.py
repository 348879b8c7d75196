"""Exit codes a scheduler can trust: a terminated run is not a success, a finished one is."""

from __future__ import annotations

from pathlib import Path

from .cli import tiny_run


def test_an_optimized_metric_that_cannot_be_logged_is_a_start_up_warning(tmp_path: Path) -> None:
    res = tiny_run(
        "trainer.max_steps=2", "trainer.val_check_interval=5", "test=false", f"paths.log_dir={tmp_path}"
    )
    assert res.returncode == 0, res.stderr[-3000:]
    start_up = "warning: optimized_metric=val/acc will never be logged (trainer.val_check_interval=5 > "
    assert res.stderr.startswith(start_up), res.stderr[-3000:]
