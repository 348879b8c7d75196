"""scripts/eval.py's text tasks on a short text_files run: table, plot, heatmap, TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytest.importorskip("datasets")

from memlab.errors import ConfigError
from memlab.evaluate import eval_data_config, evaluate
from memlab.train import train
from tests.eval.text_run import train_text_run

from ..conftest import compose_config
from ..data.text_corpus import documents, write_jsonl, write_parquet


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """A MoM trained for 2 steps on local files: (its last.ckpt, the corpus files)."""
    root = tmp_path_factory.mktemp("text_run")
    docs = documents(80)
    files = [str(write_parquet(root / "a.parquet", docs[:50])), str(write_jsonl(root / "b.jsonl", docs[50:]))]
    return train_text_run(root, files, "mom", 32), files


def run_eval(ckpt: Path, out: Path, *overrides: str) -> dict[str, float]:
    cfg = compose_config(
        [f"ckpt_path={ckpt}", "extras.print_config=false", *overrides], out, config_name="eval"
    )
    return evaluate(cfg)


def tags(out: Path) -> dict[str, list[str]]:
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    return acc.Tags()


def test_ppl_by_length_writes_table_plot_and_events(text_run, tmp_path: Path) -> None:
    ckpt, _ = text_run
    out = tmp_path / "ppl"
    metrics = run_eval(
        ckpt,
        out,
        "task=ppl_by_length",
        "ppl_by_length.lengths=[16,32,64,100000]",
        "ppl_by_length.bucket=16",
        "ppl_by_length.max_blocks=2",
        "ppl_by_length.chunk_size=8",
    )
    assert {"ppl/overall", "ppl/length/16", "ppl/length/64", "ppl/position/48"} <= set(metrics)
    assert "ppl/length/100000" not in metrics and 1 < metrics["ppl/overall"] < 1000
    table = (out / "ppl_by_length.md").read_text()
    assert "Tokenizer: bytes" in table and "| 100000 | 0 |" in table
    assert (out / "ppl_by_length.png").stat().st_size > 0
    assert json.loads((out / "metrics.json").read_text())["ppl/overall"] == metrics["ppl/overall"]
    found = tags(out)
    assert "ppl/overall" in found["scalars"] and "ppl_by_length" in found["images"]


def test_passkey_writes_a_heatmap(text_run, tmp_path: Path) -> None:
    ckpt, files = text_run
    out = tmp_path / "passkey"
    metrics = run_eval(
        ckpt,
        out,
        "task=passkey",
        "passkey.lengths=[400,600]",
        "passkey.depths=[0.0,1.0]",
        "passkey.trials=1",
        "passkey.chunk_size=128",
        # a corpus given on the command line replaces the run's (here: the same files)
        "data=text_files",
        f"data.files=[{','.join(files)}]",
    )
    assert {"passkey/acc", "passkey/acc/400/0", "passkey/acc/600/100"} <= set(metrics)
    assert 0.0 <= metrics["passkey/acc"] <= 1.0
    assert (out / "passkey_heatmap.png").stat().st_size > 0 and "passkey" in tags(out)["images"]


def test_fidelity_writes_table_plot_and_events(text_run, tmp_path: Path) -> None:
    ckpt, _ = text_run
    out = tmp_path / "fidelity"
    metrics = run_eval(ckpt, out, "task=fidelity", "fidelity.length=32", "fidelity.max_blocks=2")
    assert -1 <= metrics["fidelity/etmf/layer0"] <= 1
    assert metrics["fidelity/etmf/mean"] == metrics["fidelity/etmf/layer0"]
    # one layer: no pair of layers G apart
    assert math.isnan(metrics["fidelity/eclmf/g2/mean"])
    assert "ETMF pairing: position; 64 tokens" in (out / "fidelity.md").read_text()
    assert (out / "fidelity.png").stat().st_size > 0 and "fidelity" in tags(out)["images"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("task=fidelity fidelity.pairing=previous", "fidelity.pairing=previous: expected one of position"),
        ("task=ppl_by_length ppl_by_length.split=train", "ppl_by_length.split=train: expected val or test"),
        (
            "task=ppl_by_length ppl_by_length.chunk_size=0",
            "ppl_by_length.chunk_size: expected an integer >= 1",
        ),
        ("task=ppl_by_length ppl_by_length.max_length=8", "ppl_by_length.lengths: no length left under"),
        ("task=passkey passkey.lengths=[1k]", "passkey.lengths: expected an integer >= 1 (got '1k')"),
        ("task=passkey amp_dtype=fp8", "amp_dtype=fp8: expected bfloat16, float16 or null"),
        ("task=passkey device=nodevice", "device=nodevice: not a torch device"),
    ],
)
def test_bad_task_options_are_one_line(text_run, override: str, message: str, tmp_path: Path) -> None:
    ckpt, _ = text_run
    with pytest.raises(ConfigError) as info:
        run_eval(ckpt, tmp_path / "e", *override.split())
    assert str(info.value).startswith(message), info.value


def test_a_corpus_given_for_evaluation_keeps_the_runs_tokenizer(tmp_path: Path) -> None:
    run = compose_config(
        ["data=text_files", "data.tokenizer=some-org/some-tokenizer", "data.vocab_size=32000"], tmp_path / "r"
    )
    given = compose_config(
        ["ckpt_path=x", "data=pg19", "data.seq_len=64"], tmp_path / "e", config_name="eval"
    )
    data = eval_data_config(run.data, given.data)
    assert (data.path, data.seq_len, data.files) == ("emozilla/pg19", 64, None)
    assert (data.tokenizer, data.vocab_size) == ("some-org/some-tokenizer", 32000)
    # keys given alone override the run's own corpus config
    merged = eval_data_config(run.data, OmegaConf.create({"seq_len": 64}))
    assert (merged.files, merged.seq_len, merged.tokenizer) == (run.data.files, 64, "some-org/some-tokenizer")


def test_text_tasks_need_a_text_run(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(["trainer.max_steps=1", "test=false"])
    train(cfg)
    (Path(cfg.paths.output_dir) / ".hydra").mkdir()
    OmegaConf.save(cfg, Path(cfg.paths.output_dir) / ".hydra" / "config.yaml")
    with pytest.raises(ConfigError, match="task=passkey needs a text corpus"):
        run_eval(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", tmp_path / "e", "task=passkey")
