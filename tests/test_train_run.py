"""Real short training runs through the real pipeline: TensorBoard events, checkpoints, resume."""

import json
import time
from pathlib import Path

import pytest
import torch
from lightning import Callback
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from memlab.train import train
from memlab.utils.user_errors import one_line, user_error

from .cli import error_line, run_cli, run_cli_all, tiny_run
from .faults import FailAtStart

SHORT = [
    "trainer.max_steps=12",
    "trainer.val_check_interval=6",
    "callbacks.model_checkpoint.every_n_train_steps=6",
]


class StopAtStep(Callback):
    """Ends fit gracefully after a given optimizer step, as an interrupted run would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def tb_tags(run_dir: Path) -> dict[str, set[str]]:
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {kind: set(tags) for kind, tags in acc.Tags().items() if isinstance(tags, list)}


def test_last_checkpoint_holds_the_final_step(make_cfg) -> None:
    """A run that ends between two checkpoint steps still leaves its final weights in last.ckpt."""
    cfg = make_cfg(["trainer.max_steps=5", "callbacks.model_checkpoint.every_n_train_steps=3", "test=false"])
    train(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 5
    assert torch.load(checkpoints / "step_000003.ckpt", weights_only=True)["global_step"] == 3


def test_short_run_writes_events_checkpoints_and_hparams(make_cfg) -> None:
    cfg = make_cfg(SHORT)
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert {"val/acc", "test/acc", "train/loss", "perf/tokens_per_s"} <= set(metrics)
    ckpts = {p.name for p in (run / "checkpoints").iterdir()}
    assert {"step_000006.ckpt", "step_000012.ckpt", "last.ckpt"} <= ckpts
    scalars = tb_tags(run)["scalars"]
    expected = {
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/ppl",
        "perf/tokens_per_s",
        "perf/peak_mem_gib",
        "val/acc_by_pairs/4",
        "val/acc_by_pairs/2",
        "test/acc",
    }
    assert expected <= scalars, expected - scalars
    # the HPARAMS metrics are these scalars' last values, not copies; no epoch for step training
    assert not {t for t in scalars if t.startswith("final/") or t == "epoch"}
    assert "config/text_summary" in tb_tags(run)["tensors"]
    hparams_files = list((run / "tensorboard").glob("events.*"))
    assert any(b"_hparams_/session_start_info" in f.read_bytes() for f in hparams_files)
    assert any(
        b"val/acc" in f.read_bytes() and b"_hparams_/experiment" in f.read_bytes() for f in hparams_files
    )


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_resume_equals_uninterrupted(make_cfg, monkeypatch) -> None:
    straight = make_cfg(SHORT, run="straight")
    train(straight)
    # An interrupted run of the same name, stopped after step 6 (its last.ckpt is at step 6) ...
    cut = make_cfg([*SHORT, "test=false"], run="cut")
    cut_cb = StopAtStep(6)
    monkeypatch.setattr("memlab.train.instantiate_group", _with_extra(cut_cb))
    train(cut)
    monkeypatch.undo()
    assert (
        torch.load(Path(cut.paths.output_dir) / "checkpoints/last.ckpt", weights_only=True)["global_step"]
        == 6
    )
    # ... resumed with ckpt_path=last, which finds the newest run folder of that run name.
    time.sleep(1.1)
    resumed = make_cfg([*SHORT, "ckpt_path=last"], run="resumed")
    resumed.paths.log_dir = str(Path(resumed.paths.output_dir).parent)
    _rename_runs(cut, resumed)
    train(resumed)
    a = _weights(Path(straight.paths.output_dir) / "checkpoints/last.ckpt")
    b = _weights(Path(resumed.paths.output_dir) / "checkpoints/last.ckpt")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)


class CrashAtStep(Callback):
    """Raises inside training after a given optimizer step, as a crashing run would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError("simulated crash")


def test_crashed_run_keeps_its_checkpoints(make_cfg, monkeypatch) -> None:
    cfg = make_cfg(SHORT)
    monkeypatch.setattr("memlab.train.instantiate_group", _with_extra(CrashAtStep(8)))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    ckpts = {p.name for p in (Path(cfg.paths.output_dir) / "checkpoints").iterdir()}
    assert {"step_000006.ckpt", "last.ckpt", "on_exception.ckpt"} <= ckpts
    crashed = torch.load(Path(cfg.paths.output_dir) / "checkpoints/on_exception.ckpt", weights_only=True)
    assert crashed["global_step"] == 8


def test_a_run_failing_before_its_first_step_writes_no_checkpoint(make_cfg, monkeypatch) -> None:
    cfg = make_cfg(SHORT)
    monkeypatch.setattr("memlab.train.instantiate_group", _with_extra(FailAtStart()))
    with pytest.raises(RuntimeError, match="before the first step"):
        train(cfg)
    assert not list(Path(cfg.paths.output_dir).glob("**/*.ckpt"))


def _with_extra(callback: Callback):
    from memlab.train import instantiate_group as original

    def instantiate_group(group):
        objects = original(group)
        return [*objects, callback] if group is not None and "model_checkpoint" in group else objects

    return instantiate_group


def _rename_runs(cut, resumed) -> None:
    """Place the interrupted run where `ckpt_path=last` looks: <log_dir>/train/runs/<run_name>/<ts>/."""
    runs = Path(resumed.paths.log_dir) / "train" / "runs" / resumed.run_name
    runs.mkdir(parents=True, exist_ok=True)
    Path(cut.paths.output_dir).rename(runs / "2000-01-01_00-00-00")


def test_eval_reproduces_the_test_metrics_of_a_run(make_cfg, tmp_path: Path) -> None:
    # laid out as a CLI run leaves it (.hydra/config.yaml), where eval's ckpt_path=last looks
    cfg = make_cfg(SHORT, run="train/runs/mom_mqar_quick/2000-01-01_00-00-00")
    trained = train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    (Path(cfg.paths.output_dir) / ".hydra").mkdir()
    OmegaConf.save(cfg, Path(cfg.paths.output_dir) / ".hydra" / "config.yaml")
    args = "ckpt_path=last", f"paths.log_dir={tmp_path}", "extras.print_config=false"
    res = run_cli(*args, script="eval.py")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"ckpt_path=last: {ckpt}" in res.stdout + res.stderr
    (metrics_file,) = (tmp_path / "eval" / "runs" / "mqar").glob("*/metrics.json")
    evaluated = json.loads(metrics_file.read_text())
    assert evaluated["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)


BAD_INPUTS = [
    (["trainer.nonexistent_key=1"], "nonexistent_key"),
    (["model=no_such_model"], "no_such_model"),
    (["seed=[unbalanced"], "unbalanced"),
    (["seed=abc"], "seed"),
    (["trainer.max_steps=abc"], "max_steps"),
    (["data.batch_size=0"], "batch_size"),
    (["model.d_model=0"], "d_model"),
    (["ckpt_path=/no/such/file.ckpt"], "no such file"),
    (["trainer.max_steps=-1"], "trainer.max_steps=-1"),
    (["optimizer.lr=abc"], "optimizer.lr"),
    (["scheduler.min_lr_ratio=2"], "scheduler.min_lr_ratio"),
    (["model.mixer.shared_mem=maybe"], "model.mixer.shared_mem"),
    (["model.mixer.backend=triton"], "model.mixer.backend=triton"),
    (["module.cuda_graph=true", "trainer.accelerator=cpu"], "module.cuda_graph needs a CUDA device"),
    (["module.cuda_graph=maybe"], "module.cuda_graph=maybe: expected true, false or auto"),
]


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """scripts/train.py with each of BAD_INPUTS, all started at once."""
    log_dir = tmp_path_factory.mktemp("bad_inputs")
    runs = {
        args[0]: (*args, f"paths.log_dir={log_dir / str(i)}", "extras.print_config=false")
        for i, (args, _) in enumerate(BAD_INPUTS)
    }
    return run_cli_all(runs)


@pytest.mark.parametrize("args,needle", BAD_INPUTS)
def test_bad_input_is_one_line_and_nonzero(args: list[str], needle: str, bad_input_runs: dict) -> None:
    res = bad_input_runs[args[0]]
    assert res.returncode == 2
    # the run's own log lines may precede it; the error itself is the one last line
    err = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith(("INFO", "Seed set"))]
    assert len(err) == 1 and err[0].startswith("error: "), res.stderr
    assert needle in err[0]
    assert "Traceback" not in res.stderr + res.stdout


@pytest.mark.parametrize(
    "override,needle",
    [
        ("optimizer.lr=-1", "optimizer.lr must be > 0"),
        ("optimizer.lr=inf", "optimizer.lr must be a finite number > 0"),
        ("optimizer.betas=[0.9,1.5]", "optimizer.betas must be two numbers in [0, 1)"),
        ("scheduler.warmup_steps=-1", "scheduler.warmup_steps must be >= 0"),
        ("scheduler.warmup_steps=1.5", "scheduler.warmup_steps must be an integer"),
    ],
)
def test_optimizer_settings_out_of_range_are_refused_before_training(
    override: str, needle: str, make_cfg
) -> None:
    cfg = make_cfg([*SHORT, override])
    with pytest.raises(Exception) as info:  # the start-up checks refuse it
        train(cfg)
    assert one_line(user_error(info.value)) == needle + f" (got {override.split('=')[1].replace(',', ', ')})"
    assert not list(Path(cfg.paths.output_dir).glob("**/*.ckpt"))


def test_out_of_memory_is_reported_as_a_sizing_mistake() -> None:
    oom = torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 1.95 GiB. GPU 0 has a total capacity of 79.18 GiB"
    )
    try:
        raise RuntimeError("training step failed") from oom
    except RuntimeError as wrapped:
        reported = user_error(wrapped)
    assert reported is not None
    line = one_line(reported)
    assert "Tried to allocate 1.95 GiB" in line and "data.batch_size" in line and "\n" not in line
    assert user_error(RuntimeError("a bug")) is None


@pytest.mark.parametrize("key", ["paths.log_dir", "callbacks.model_checkpoint.dirpath"])
def test_an_unwritable_folder_is_one_line_before_training(key: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    log_dir = [] if key == "paths.log_dir" else [f"paths.log_dir={tmp_path}"]
    res = tiny_run(*SHORT, f"{key}={blocker}/sub", *log_dir)
    assert res.returncode == 2
    line = error_line(res)
    assert f"{blocker}/sub" in line and "Not a directory" in line, line
    assert not list(tmp_path.glob("**/tensorboard/events.*")), "training started"
