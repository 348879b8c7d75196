"""What memlab takes from a checkpoint: weights only (nothing in it runs), of the same network, and
for a resume the same optimiser settings; ``ckpt_path=last`` finds a training run's checkpoint."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from memlab.errors import ConfigError
from memlab.evaluate import evaluate
from memlab.train import train
from memlab.utils.checkpoints import resolve_ckpt_path

from .cli import error_line, run_cli, tiny_run
from .conftest import TINY, compose_config

QUICK = ["trainer.max_steps=2", "trainer.val_check_interval=2", "test=false"]


class RunsCode:
    """Unpickling this runs a shell command, as a malicious checkpoint would."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """The last.ckpt of a 2-step TINY run, laid out as a CLI run leaves it (with .hydra/config.yaml)."""
    run = tmp_path_factory.mktemp("logs") / "train" / "runs" / "mom_mqar_quick" / "2000-01-01_00-00-00"
    cfg = compose_config([*TINY, *QUICK, "callbacks.model_checkpoint.every_n_train_steps=2"], run)
    train(cfg)
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    return run / "checkpoints" / "last.ckpt"


def test_memlab_checkpoints_hold_weights_only(tiny_ckpt: Path) -> None:
    ckpt = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["hyper_parameters"]["optimizer"]["lr"] == 3e-3


def test_a_checkpoint_that_would_run_code_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "global_step": 1, "payload": RunsCode(f"touch {marker}")}, evil)
    res = run_cli(f"ckpt_path={evil}", f"paths.log_dir={tmp_path}", "extras.print_config=false")
    assert res.returncode == 2
    line = error_line(res)
    assert str(evil) in line and "weights only" in line, line
    # scripts/eval.py takes its checkpoint through the same check
    cfg = compose_config([f"ckpt_path={evil}", "extras.print_config=false"], tmp_path / "eval", "eval")
    with pytest.raises(ConfigError, match="weights only"):
        evaluate(cfg)
    assert not marker.exists(), "unpickling the checkpoint ran its code"


def test_a_checkpoint_of_another_size_is_refused_at_start_up(tiny_ckpt: Path, tmp_path: Path) -> None:
    res = tiny_run(*QUICK, f"ckpt_path={tiny_ckpt}", "model.d_model=64", f"paths.log_dir={tmp_path}")
    assert res.returncode == 2
    line = error_line(res)
    assert "size mismatch for net." in line and str(tiny_ckpt) in line, line
    assert not list(tmp_path.glob("**/*.ckpt")), "a refused resume wrote a checkpoint"


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model=transformer", "the checkpoint holds another network: missing net."),
        ("optimizer.lr=1e-5", "optimizer.lr=1e-05 differs from the checkpoint's 0.003"),
        ("scheduler.warmup_steps=7", "scheduler.warmup_steps=7 differs from the checkpoint's 50"),
    ],
)
def test_a_resume_with_another_model_or_lr_is_refused(
    override: str, needle: str, tiny_ckpt: Path, make_cfg
) -> None:
    """The value would be recorded in the run's config and hparams but not applied."""
    cfg = make_cfg([*QUICK, f"ckpt_path={tiny_ckpt}", override])
    with pytest.raises(ConfigError, match=re.escape(needle)):
        train(cfg)
    assert not list(Path(cfg.paths.output_dir).glob("**/*.ckpt"))


@pytest.fixture
def old_layout_ckpt(tiny_ckpt: Path, tmp_path: Path) -> Path:
    """tiny_ckpt as runs before the optimizer and scheduler config groups left it: module.lr, ...
    in the run's config, and flat in the checkpoint's hyper-parameters."""
    run = tmp_path / "train" / "runs" / "mom_mqar_quick" / "1999-01-01_00-00-00"
    shutil.copytree(tiny_ckpt.parents[1], run)
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    moved = {
        k: v for group in (cfg.optimizer, cfg.scheduler) for k, v in group.items() if not k.startswith("_")
    }
    cfg.module = {"_target_": "memlab.lit.CausalLMModule", **moved}
    del cfg.optimizer, cfg.scheduler
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    hparams = ckpt["hyper_parameters"]
    ckpt["hyper_parameters"] = {
        k: v for group in hparams.values() for k, v in group.items() if k != "_target_"
    }
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    return run / "checkpoints" / "last.ckpt"


def test_a_checkpoint_of_the_old_layout_evaluates_and_resumes(
    old_layout_ckpt: Path, make_cfg, tmp_path: Path
) -> None:
    saved = torch.load(old_layout_ckpt, weights_only=True)["hyper_parameters"]
    assert saved["lr"] == 3e-3 and "module" not in saved and "optimizer" not in saved
    args = [f"ckpt_path={old_layout_ckpt}", "extras.print_config=false"]
    cfg = compose_config(args, tmp_path / "eval", "eval")
    assert "test/acc" in evaluate(cfg)
    cfg = make_cfg([*QUICK, f"ckpt_path={old_layout_ckpt}", "optimizer.lr=1e-5"], run="lr")
    with pytest.raises(
        ConfigError, match=re.escape("optimizer.lr=1e-05 differs from the checkpoint's 0.003")
    ):
        train(cfg)
    every = "callbacks.model_checkpoint.every_n_train_steps=1"
    cfg = make_cfg([*QUICK, f"ckpt_path={old_layout_ckpt}", "trainer.max_steps=3", every], run="same")
    train(cfg)
    resumed = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 3


def test_last_is_the_newest_of_last_and_on_exception_in_other_runs(tmp_path: Path) -> None:
    older, newer = tmp_path / "2000-01-01_00-00-00", tmp_path / "2000-01-02_00-00-00"
    paths = [older / "last.ckpt", newer / "last.ckpt", newer / "on_exception.ckpt"]
    for age, path in enumerate(paths):
        path = path.parent / "checkpoints" / path.name
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": {}}, path)
        os.utime(path, (1000 + age, 1000 + age))
    runs = [str(tmp_path / "*")]
    newest = newer / "checkpoints" / "on_exception.ckpt"
    assert resolve_ckpt_path("last", runs, tmp_path / "now") == str(newest)
    # never the current run's own folder
    assert resolve_ckpt_path("last", runs, newer) == str(older / "checkpoints" / "last.ckpt")


def test_a_run_from_scratch_refuses_a_folder_that_holds_checkpoints(tiny_ckpt: Path) -> None:
    """Lightning would resume from them unasked (fit(ckpt_path=None) takes `last` when it exists)."""
    cfg = compose_config([*TINY, *QUICK], tiny_ckpt.parents[1])
    with pytest.raises(ConfigError, match=r"checkpoints already holds last.ckpt of another run"):
        train(cfg)
