"""Every config composes and instantiates; every experiment runs one fast_dev_run step."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from memlab.train import train

from .conftest import CONFIG_DIR, compose_config

GROUPS = [
    "model",
    "optimizer",
    "scheduler",
    "data",
    "trainer",
    "logger",
    "callbacks",
    "debug",
    "hparams_search",
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_config([f"{group}={option}"], tmp_path / "run")
    assert cfg.run_name and cfg.module._target_


@pytest.mark.parametrize("name", options("model"))
def test_every_model_instantiates(name: str, tmp_path: Path) -> None:
    cfg = compose_config([f"model={name}", "data.vocab_size=64"], tmp_path / "run")
    with torch.device("meta"):  # the paper-size configs build without allocating their weights
        net = instantiate(cfg.model)
    assert sum(p.numel() for p in net.parameters()) > 0


def test_mamba_130m_is_the_published_shape(tmp_path: Path) -> None:
    """state-spaces/mamba-130m: 24 blocks of RMSNorm + Mamba mixer (no MLP), 768 wide, vocabulary
    50280, tied embeddings: 129,135,360 parameters."""
    cfg = compose_config(["model=mamba_130m"], tmp_path / "run")
    with torch.device("meta"):
        net = instantiate(cfg.model)
    assert sum(p.numel() for p in net.parameters()) == 129_135_360
    assert not [name for name, _ in net.named_parameters() if "mlp" in name]
    assert net.lm_head.weight is net.embed.weight


def test_eval_config_composes(tmp_path: Path) -> None:
    cfg = compose_config(["ckpt_path=x.ckpt"], tmp_path / "run", config_name="eval")
    assert cfg.task == "mqar" and cfg.ckpt_path == "x.ckpt"


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_runs_a_fast_dev_run(experiment: str, tmp_path: Path) -> None:
    overrides = [
        f"experiment={experiment}",
        "debug=fdr",
        "trainer.accelerator=cpu",
        "extras.print_config=false",
    ]
    cfg = compose_config(overrides, tmp_path / "run")
    # fast_dev_run reads one batch of each split: generating the experiment's full MQAR sets and
    # stepping its full batch on a CPU would test nothing more, at a minute per experiment
    with open_dict(cfg):
        for key in ("batch_size", "eval_batch_size"):
            if cfg.data.get(key):
                cfg.data[key] = min(cfg.data[key], 8)
        for key in ("train_segments", "val_segments"):
            for segment in cfg.data.get(key) or []:
                segment.num_examples = min(segment.num_examples, 32)
    metrics = train(cfg)
    assert "test/acc" in metrics
