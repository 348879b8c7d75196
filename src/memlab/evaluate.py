"""The evaluation pipeline behind ``scripts/eval.py``: a trained checkpoint in, task metrics out."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from memlab.errors import ConfigError
from memlab.train import instantiate_group
from memlab.utils.checkpoints import resolve_ckpt_path
from memlab.utils.config_tree import print_config_tree
from memlab.utils.results_table import print_results_table

TASKS = ("mqar",)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Rebuild the model of the run that wrote ``cfg.ckpt_path`` (from its ``.hydra/config.yaml``),
    load the checkpoint and run ``cfg.task`` on it.

    mqar: the run's own MQAR test split (override any of its keys with ``data.<key>=...``).
    """
    if cfg.task not in TASKS:
        raise ConfigError(f"task={cfg.task} is not one of: {', '.join(TASKS)}")
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, Path(cfg.paths.log_dir), output_dir)
    run_config = Path(ckpt_path).resolve().parent.parent / ".hydra" / "config.yaml"
    if not run_config.is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: no training config at {run_config}")
    run_cfg = OmegaConf.load(run_config)
    if cfg.get("data"):
        run_cfg.data = OmegaConf.merge(run_cfg.data, cfg.data)
    if cfg.extras.get("print_config"):
        print_config_tree(cfg, save_to=output_dir / "config_tree.log")

    datamodule = instantiate(run_cfg.data, _convert_="all")
    module = instantiate(run_cfg.module, net=instantiate(run_cfg.model, _convert_="all"), _convert_="all")
    loggers = instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[])
    results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        print_results_table(metrics, title=f"{cfg.task} — {Path(ckpt_path).name}", caption=str(output_dir))
    return metrics
