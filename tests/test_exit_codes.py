"""Exit codes a scheduler can trust: a terminated run is not a success, a finished one is."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import torch

from .cli import error_line, start_cli, tiny_run
from .data.text_corpus import documents, write_parquet

QUICK = ["trainer.max_steps=6", "trainer.val_check_interval=6", "test=false"]


def test_sigterm_writes_a_checkpoint_and_exits_143(tmp_path: Path) -> None:
    signal_at = ["+callbacks.sigterm._target_=tests.faults.SigtermAt", "+callbacks.sigterm.step=3"]
    res = tiny_run(*QUICK, *signal_at, f"paths.log_dir={tmp_path}")
    assert res.returncode == 143, res.stderr[-3000:]
    # the step under way when the signal came is finished, then checkpointed
    line = error_line(res)
    assert "SIGTERM after step 4" in line and "on_exception.ckpt" in line, line
    (ckpt,) = tmp_path.glob("train/runs/*/*/checkpoints/on_exception.ckpt")
    assert torch.load(ckpt, weights_only=True)["global_step"] == 4


def test_sigterm_to_the_job_reaches_the_loader_workers_harmlessly(tmp_path: Path) -> None:
    """A scheduler signals the job's whole process group: the text stream's loader workers too,
    whose death used to end the run with a DataLoader traceback instead of a checkpoint."""
    corpus = write_parquet(tmp_path / "a.parquet", documents(400))
    data = [f"data.files=[{corpus}]", "data.num_workers=2", "data.seq_len=16", "data.batch_size=2"]
    sizes = ["model.d_model=32", "model.n_layers=1", "trainer.accelerator=cpu", "extras.print_config=false"]
    endless = ["trainer.max_steps=100000", "trainer.val_check_interval=100000", "test=false"]
    every = "callbacks.model_checkpoint.every_n_train_steps=5"
    run = start_cli("data=text_files", *data, *sizes, *endless, every, f"paths.log_dir={tmp_path}")
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("train/runs/*/*/checkpoints/step_000005.ckpt")):
            assert run.poll() is None and time.monotonic() < deadline, "the run did not get to step 5"
            time.sleep(0.1)
        os.killpg(run.pid, signal.SIGTERM)
        stdout, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    res = subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)
    assert res.returncode == 143, stderr[-3000:]
    step = int(re.search(r"SIGTERM after step (\d+)", error_line(res)).group(1))
    (ckpt,) = tmp_path.glob("train/runs/*/*/checkpoints/on_exception.ckpt")
    assert torch.load(ckpt, weights_only=True)["global_step"] == step >= 5


def test_an_optimized_metric_that_cannot_be_logged_is_a_start_up_warning(tmp_path: Path) -> None:
    res = tiny_run(
        "trainer.max_steps=2", "trainer.val_check_interval=5", "test=false", f"paths.log_dir={tmp_path}"
    )
    assert res.returncode == 0, res.stderr[-3000:]
    start_up = "warning: optimized_metric=val/acc will never be logged (trainer.val_check_interval=5 > "
    assert res.stderr.startswith(start_up), res.stderr[-3000:]
