"""A tiny model trained for 2 steps on local text files, with the run config a CLI run leaves:
the checkpoint the evaluation, lm-eval and generation tests load."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from memlab.train import train
from tests.conftest import compose_config


def train_text_run(root: Path, files: list[str], model: str, seq_len: int, *overrides: str) -> Path:
    """Train ``model`` (d_model 32, one layer) on ``files`` under ``root``: its last.ckpt."""
    config = [
        "data=text_files",
        f"data.files=[{','.join(files)}]",
        f"data.seq_len={seq_len}",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.val_windows=2",
        f"model={model}",
        "model.d_model=32",
        "model.n_layers=1",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.accelerator=cpu",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "test=false",
        "extras.print_config=false",
        *overrides,
    ]
    cfg = compose_config(config, root / "run")
    train(cfg)
    (root / "run" / ".hydra").mkdir()
    OmegaConf.save(cfg, root / "run" / ".hydra" / "config.yaml")  # as a CLI run leaves it
    return root / "run" / "checkpoints" / "last.ckpt"
