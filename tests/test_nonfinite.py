"""A non-finite loss or gradient stops the run (or skips the step, up to a limit) before it reaches
the weights; no checkpoint with non-finite weights is ever written; NaN is reported as NaN."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from lightning import Callback

from memlab.errors import NonFiniteError
from memlab.lit import CausalLMModule
from memlab.train import train

from .cli import TINY, error_line, run_cli, tiny_run

SHORT = ["trainer.max_steps=8", "trainer.val_check_interval=8", "test=false"]


def _finite(ckpt: Path) -> bool:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return all(bool(t.isfinite().all()) for t in state.values() if t.is_floating_point())


def test_a_diverging_run_stops_with_one_line_and_keeps_finite_checkpoints(tmp_path: Path) -> None:
    # lr 1e3 from the first step: the loss of step 2 is NaN
    res = tiny_run(
        *SHORT,
        "optimizer.lr=1e3",
        "scheduler.warmup_steps=1",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        f"paths.log_dir={tmp_path}",
    )
    assert res.returncode == 3, res.stderr[-3000:]
    line = error_line(res)
    assert "non-finite loss" in line and "step 2" in line and "optimizer.lr" in line, line
    (run,) = (tmp_path / "train" / "runs" / "mom_mqar_quick").iterdir()
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in ckpts} == {"step_000001.ckpt", "last.ckpt", "on_exception.ckpt"}
    assert all(_finite(p) for p in ckpts)
    on_exception = torch.load(run / "checkpoints" / "on_exception.ckpt", weights_only=True)
    assert on_exception["global_step"] == 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert math.isnan(metrics["train/loss"])
    assert "train/loss" in res.stdout and "nan" in res.stdout


def _nan_loss_at(steps: set[int], monkeypatch) -> None:
    original = CausalLMModule.training_step

    def training_step(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * math.nan if self.trainer.global_step in steps else loss

    monkeypatch.setattr(CausalLMModule, "training_step", training_step)


def test_skipped_steps_leave_the_weights_untouched_up_to_the_limit(make_cfg, monkeypatch) -> None:
    _nan_loss_at({2, 5}, monkeypatch)
    cfg = make_cfg([*SHORT, "callbacks.nonfinite.max_skips=2"])
    metrics = train(cfg)
    assert metrics["train/skipped_steps"] == 2
    assert _finite(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    # one skip more than allowed stops the run at the second bad step
    cfg = make_cfg([*SHORT, "callbacks.nonfinite.max_skips=1"], run="strict")
    with pytest.raises(
        NonFiniteError, match=r"non-finite loss and gradients at step 6 \(1 step skipped before\)"
    ):
        train(cfg)


class PoisonWeightsAfter(Callback):
    """Makes a weight infinite after a given step, as an overflowing update would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = math.inf


def test_non_finite_weights_are_never_written_over_a_good_checkpoint(make_cfg, monkeypatch) -> None:
    from .test_train_run import _with_extra

    monkeypatch.setattr("memlab.train.instantiate_group", _with_extra(PoisonWeightsAfter(3)))
    cfg = make_cfg([*SHORT, "callbacks.model_checkpoint.every_n_train_steps=1"])
    with pytest.raises(NonFiniteError, match="non-finite weights after step 3"):
        train(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    assert not (checkpoints / "step_000003.ckpt").exists()
    assert not (checkpoints / "on_exception.ckpt").exists()
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 and _finite(checkpoints / "last.ckpt")


def test_a_diverged_job_does_not_end_its_sweep(tmp_path: Path) -> None:
    """In a multirun, the diverged job reports its error line and the other jobs still run."""
    quiet = ("callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null")
    args = (*TINY, *quiet, *SHORT, "optimizer.lr=1e3,1e-3", "scheduler.warmup_steps=1")
    res = run_cli("-m", *args, f"paths.log_dir={tmp_path}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "non-finite loss" in res.stderr and "Traceback" not in res.stderr
    metrics = [json.loads(p.read_text()) for p in (tmp_path / "train" / "multiruns").glob("**/metrics.json")]
    assert len(metrics) == 2
    assert sorted(math.isnan(m["train/loss"]) for m in metrics) == [False, True]
