"""``model.init_from`` in the training and evaluation configs, and scripts/export.py on a run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from memlab.errors import ConfigError
from memlab.evaluate import evaluate
from memlab.interop import export_pretrained
from memlab.interop.export_run import export_run
from memlab.utils.instantiate import instantiate_module
from memlab.utils.user_errors import user_error
from tests.conftest import compose_config

MAMBA = ["model=mamba", "model.mlp_ratio=0", "model.n_layers=1"]


@pytest.fixture
def trained(make_cfg, tmp_path: Path):
    """A run folder as training leaves it (its config, a checkpoint): (its network, last.ckpt).
    The run itself started from model.init_from, a folder gone since."""
    cfg = make_cfg(MAMBA)
    with open_dict(cfg):
        cfg.model.init_from = str(tmp_path / "gone")
    module = instantiate_module(OmegaConf.merge(cfg, {"model": {"init_from": None}}))
    run = Path(cfg.paths.output_dir)
    for folder in ("checkpoints", ".hydra"):
        (run / folder).mkdir(parents=True)
    torch.save({"state_dict": module.state_dict()}, run / "checkpoints" / "last.ckpt")
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    return module.net, run / "checkpoints" / "last.ckpt"


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_export_script_writes_the_run_and_training_starts_from_it(trained, make_cfg, tmp_path: Path) -> None:
    net, ckpt = trained
    cfg = compose_config([f"ckpt_path={ckpt}", f"out_dir={tmp_path / 'hf'}"], tmp_path / "export", "export")
    export_run(cfg)
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {"config.json", "model.safetensors"}
    started = instantiate(make_cfg([*MAMBA, f"model.init_from={tmp_path / 'hf'}"], run="b").model)
    assert _same_weights(started, net)
    wider = make_cfg([*MAMBA, "model.d_model=48", f"model.init_from={tmp_path / 'hf'}"], run="c")
    with pytest.raises(Exception) as info:  # Hydra wraps what the target raises
        instantiate(wider.model)
    expected = r"model\.d_model=48 does not match model\.init_from=.*: hidden_size=32$"
    assert re.match(expected, str(user_error(info.value)))


def test_eval_takes_a_released_model(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    from tests.data.text_corpus import documents, write_jsonl

    corpus = write_jsonl(tmp_path / "docs.jsonl", documents(12))
    model = ["model=transformer", "model.d_model=32", "model.n_layers=1"]
    net = instantiate(compose_config([*model, "data=text_files"], tmp_path / "net").model)
    export_pretrained(net, tmp_path / "hf")
    overrides = [
        *model,
        f"model.init_from={tmp_path / 'hf'}",
        "data=text_files",
        f"data.files=[{corpus}]",
        "data.val_documents=4",
        "task=ppl_by_length",
        "ppl_by_length.lengths=[16]",
        "ppl_by_length.bucket=16",
        "ppl_by_length.split=val",
        "logger=csv",
        "extras.print_config=false",
    ]
    metrics = evaluate(compose_config(overrides, tmp_path / "eval", "eval"))
    assert 1 < metrics["ppl/length/16"] < 1000
    with pytest.raises(ConfigError, match=r"^give ckpt_path \(a trained run\) or model\.init_from"):
        evaluate(compose_config([*overrides, "ckpt_path=x.ckpt"], tmp_path / "both", "eval"))
    with pytest.raises(ConfigError, match=r"^task=mqar tests a trained run"):
        evaluate(compose_config([*overrides, "task=mqar"], tmp_path / "mqar", "eval"))


def test_a_model_beside_a_trained_run_is_one_error() -> None:
    from omegaconf import OmegaConf

    from memlab.errors import ConfigError
    from memlab.utils.trained_run import released_run

    assert released_run(OmegaConf.create({"model": None, "ckpt_path": "x.ckpt"})) is None
    with pytest.raises(ConfigError, match=r"needs model\.init_from"):
        released_run(OmegaConf.create({"model": {"d_model": 8}, "ckpt_path": "x.ckpt"}))
