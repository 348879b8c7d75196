"""The sweep summary over fabricated job folders: arms named as their TensorBoard runs, each
arm at its best learning rate, a metric against the state size."""

import csv
import itertools
import json
import shutil
from pathlib import Path

import pytest
import yaml

from memlab.utils.state_size import STATE_SIZE
from memlab.utils.sweep_axes import best_lr_records, lower_is_better, state_size_lines
from memlab.utils.sweep_summary import collect, default_metrics, summarize, write_summary

from .cli import error_line, run_cli

# model × d_model × lr × seed; mom wins at lr 3e-3, gdn at 1e-3
STATE = {("mom", 32): 4096, ("mom", 64): 8192, ("gdn", 32): 1024, ("gdn", 64): 2048}
BEST_LR = {"mom": "3e-3", "gdn": "1e-3"}


def _job(sweep: Path, num: int, overrides: list[str], metrics: dict) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "metrics.json").write_text(json.dumps(metrics))


def _sweep(tmp_path: Path, lr_key: str = "optimizer.lr") -> Path:
    grid = itertools.product(("mom", "gdn"), (32, 64), ("1e-3", "3e-3"), (0, 1))
    for num, (model, width, lr, seed) in enumerate(grid):
        acc = width / 100 + (0.2 if lr == BEST_LR[model] else 0.0) + seed / 100
        overrides = [
            f"model={model}",
            f"model.d_model={width}",
            f"{lr_key}={lr}",
            f"seed={seed}",
            "data=mqar",
        ]
        _job(tmp_path, num, overrides, {"val/acc": acc, "val/loss": 1 - acc, STATE_SIZE: STATE[model, width]})
    return tmp_path


def test_arms_are_named_as_their_tensorboard_runs(tmp_path: Path) -> None:
    records = collect(_sweep(tmp_path))
    assert records[0]["arm"] == "model=mom,d_model=32,lr=1e-3"
    assert records[0]["swept"] == {"model": "mom", "model.d_model": "32", "optimizer.lr": "1e-3"}
    rows = summarize(records, default_metrics(records, "val/acc"))
    assert len(rows) == 8 and all(r["seeds"] == 2 for r in rows)


def test_each_arm_keeps_its_best_lr(tmp_path: Path) -> None:
    records = collect(_sweep(tmp_path))
    rows = summarize(best_lr_records(records, "val/acc"), ["val/acc", STATE_SIZE])
    assert [(r["arm"], r["lr"]) for r in rows] == [
        ("model=mom,d_model=32", "3e-3"),
        ("model=mom,d_model=64", "3e-3"),
        ("model=gdn,d_model=32", "1e-3"),
        ("model=gdn,d_model=64", "1e-3"),
    ]
    assert rows[0]["val/acc"] == pytest.approx(0.32 + 0.2 + 0.005) and rows[0]["seeds"] == 2
    # a loss is minimised: the same winners
    by_loss = summarize(best_lr_records(records, "val/loss"), ["val/loss"])
    assert [r["lr"] for r in by_loss] == [r["lr"] for r in rows]
    assert lower_is_better("val/loss") and lower_is_better("test/ppl") and not lower_is_better("val/acc")


def test_old_lr_key_and_sweeps_without_lr(tmp_path: Path) -> None:
    records = collect(_sweep(tmp_path / "old", lr_key="module.lr"))
    assert {r["lr"] for r in best_lr_records(records, "val/acc")} == {"1e-3", "3e-3"}
    _job(tmp_path / "nolr", 0, ["model=mom", "seed=0"], {"val/acc": 0.5})
    _job(tmp_path / "nolr", 1, ["model=gdn", "seed=0"], {"val/acc": 0.4})
    records = collect(tmp_path / "nolr")
    assert best_lr_records(records, "val/acc") == records


def test_lines_against_state_size_are_the_architectures(tmp_path: Path) -> None:
    records = best_lr_records(collect(_sweep(tmp_path)), "val/acc")
    rows = summarize(records, ["val/acc", STATE_SIZE])
    lines = state_size_lines(records, rows, None)
    assert {k: [r[STATE_SIZE] for r in v] for k, v in lines.items()} == {
        "model=mom": [4096, 8192],
        "model=gdn": [1024, 2048],
    }
    assert list(state_size_lines(records, rows, ["model.d_model"])) == ["d_model=32", "d_model=64"]


def test_write_summary_with_best_lr_and_state_size(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path)
    rows = write_summary(sweep, "val/acc", best_lr=True, by_state_size=True)
    assert len(rows) == 4
    assert (sweep / "summary_state_size.png").stat().st_size > 0
    table = list(csv.DictReader((sweep / "summary.csv").open()))
    assert (table[0]["arm"], table[0]["lr"]) == ("model=mom,d_model=32", "3e-3")
    md = (sweep / "summary.md").read_text().splitlines()
    assert md[0] == f"| arm | seeds | lr | val/acc | {STATE_SIZE} |"
    assert md[2].startswith("| model=mom,d_model=32 | 2 | 3e-3 | 0.5250 ± 0.0050 |")
    assert md[2].endswith("| 4096 |")


def test_state_size_plot_needs_the_metric(tmp_path: Path, capsys) -> None:
    _job(tmp_path, 0, ["model=mom"], {"val/acc": 0.5})
    _job(tmp_path, 1, ["model=gdn"], {"val/acc": 0.4})
    assert len(write_summary(tmp_path, "val/acc", by_state_size=True)) == 2
    assert not (tmp_path / "summary_state_size.png").exists()
    assert f"no job of {tmp_path} logged {STATE_SIZE}" in capsys.readouterr().err


def test_a_sweep_run_in_slices_summarizes_as_one(tmp_path: Path) -> None:
    """A study run as one multirun per group of arms reads, from its folders, as one sweep."""
    whole = collect(_sweep(tmp_path / "whole"))
    slices = [tmp_path / "mom", tmp_path / "gdn"]
    for record in whole:  # mom's jobs 0-7 to one folder, gdn's 8-15 to another, as 0-7
        folder = slices[record["swept"]["model"] == "gdn"]
        shutil.copytree(tmp_path / "whole" / record["job"], folder / str(int(record["job"]) % 8))
    joined = collect(*slices)
    assert [(r["arm"], r["seed"]) for r in joined] == [(r["arm"], r["seed"]) for r in whole]
    assert joined[0]["job"] == "mom/0" and joined[-1]["job"] == "gdn/7"

    res = run_cli(*map(str, slices), "--best-lr", "--out", str(tmp_path / "study"), script="summarize.py")
    assert res.returncode == 0, res.stderr[-2000:]
    table = (tmp_path / "study" / "summary.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == [
        "| model=mom,d_model=32",
        "| model=mom,d_model=64",
        "| model=gdn,d_model=32",
        "| model=gdn,d_model=64",
    ]
    missing = run_cli(str(slices[0]), str(tmp_path / "nowhere"), script="summarize.py")
    assert missing.returncode != 0 and error_line(missing) == f"error: {tmp_path / 'nowhere'} is not a folder"


def test_the_curves_are_read_from_each_jobs_tensorboard_run(tmp_path: Path) -> None:
    """summary_curves.png: the metric against the step, seeds averaged, from the folders the
    jobs' TensorBoard loggers wrote (named by arm, seed included); a job without events is left out."""
    from torch.utils.tensorboard import SummaryWriter

    from memlab.utils.sweep_curves import row_curves

    sweeps = {"params": {"seed": "0,1"}}
    multirun = {"hydra": {"sweeper": sweeps, "overrides": {"task": ["model=mom,gdn", "model.d_model=32,64"]}}}
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    for num, (model, width, seed) in enumerate(itertools.product(("mom", "gdn"), (32, 64), (0, 1))):
        _job(tmp_path, num, [f"model={model}", f"model.d_model={width}", f"seed={seed}"], {"val/acc": 0.5})
        if (model, width, seed) == ("gdn", 64, 1):
            continue
        writer = SummaryWriter(str(tmp_path / f"model={model},d_model={width},seed={seed}"))
        for step in (100, 200, 300)[: 2 + seed]:  # seed 1 trains one validation longer
            writer.add_scalar("val/acc", step / 1000 + width / 100 + seed / 10, step)
        writer.close()
    curves = row_curves(collect(tmp_path), "val/acc")
    assert curves.keys() == {f"model={m},d_model={w}" for m in ("mom", "gdn") for w in (32, 64)}
    steps, means = curves["model=mom,d_model=32"]
    assert steps == [100, 200, 300] and means == pytest.approx([0.47, 0.57, 0.72])
    assert curves["model=gdn,d_model=64"] == ([100, 200], pytest.approx([0.74, 0.84]))

    write_summary(tmp_path, "val/acc", group_by=["model"])
    assert (tmp_path / "summary_curves.png").read_bytes().startswith(b"\x89PNG")
    (tmp_path / "multirun.yaml").unlink()  # no way back to the jobs' runs: no curves, no error
    (tmp_path / "summary_curves.png").unlink()
    write_summary(tmp_path, "val/acc")
    assert not (tmp_path / "summary_curves.png").exists()
