"""The training pipeline behind ``scripts/train.py``: config in, trained and tested model out."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning import LightningModule
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from memlab.errors import ConfigError
from memlab.utils.checkpoint_match import check_same_network, check_same_optimiser
from memlab.utils.checkpoints import load_checkpoint, resolve_ckpt_path
from memlab.utils.config_tree import print_config_tree
from memlab.utils.hparams import flat_hparams
from memlab.utils.preflight import check_training_config
from memlab.utils.results_table import print_results_table


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a callbacks/logger group that has a ``_target_``."""
    if not group:
        return []
    return [
        instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node
    ]


def _log_config(loggers: list[Logger], cfg: DictConfig) -> None:
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            text = OmegaConf.to_yaml(cfg, resolve=True)
            # four-space indentation renders as a code block in TensorBoard's markdown
            logger.experiment.add_text("config", "\n".join("    " + ln for ln in text.splitlines()))


def _scalar_metrics(raw: dict) -> dict[str, float]:
    out = {}
    for name, value in raw.items():
        value = float(value.item() if isinstance(value, torch.Tensor) else value)
        if math.isfinite(value):
            out[name] = value
    return out


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (``cfg.train``) and test (``cfg.test``) the configured model; return the final metrics.

    Objects are built from the config: ``data`` (a LightningDataModule), ``model`` (the network),
    ``module`` (the LightningModule, given the network), ``callbacks``, ``logger``, ``trainer``.
    """
    if cfg.extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
    output_dir = Path(cfg.paths.output_dir)
    if cfg.extras.get("print_config"):
        print_config_tree(cfg, save_to=output_dir / "config_tree.log")
    for warning in check_training_config(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    runs = Path(cfg.paths.log_dir) / cfg.task_name / "runs" / cfg.run_name / "*"
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), [str(runs)], output_dir)
    seed = cfg.get("seed")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise ConfigError(f"seed must be an integer in [0, 2**32) or null (got {seed!r})")
        L.seed_everything(seed, workers=True)

    # plain Python containers, not OmegaConf ones, reach the objects (and their checkpoints)
    datamodule = instantiate(cfg.data, _convert_="all")
    module = instantiate(cfg.module, net=instantiate(cfg.model, _convert_="all"), _convert_="all")
    if ckpt_path is not None:
        _check_checkpoint(ckpt_path, module, resuming=bool(cfg.get("train")))
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if trainer.is_global_zero:
        _log_config(trainer.loggers, cfg)

    if cfg.get("train"):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = _scalar_metrics(trainer.callback_metrics)
    if cfg.get("test"):
        test_ckpt = None if cfg.get("train") else ckpt_path
        trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt, weights_only=True)
        metrics.update(_scalar_metrics(trainer.callback_metrics))

    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        for logger in trainer.loggers:
            logger.log_hyperparams(flat_hparams(cfg), {f"final/{k}": v for k, v in metrics.items()})
            logger.finalize("success")
        print_results_table(metrics, title=cfg.run_name, caption=str(output_dir))
    return metrics


def _check_checkpoint(ckpt_path: str, module: LightningModule, resuming: bool) -> None:
    """The checkpoint holds this network and, for a resume, was trained with this optimiser."""
    ckpt = load_checkpoint(ckpt_path)
    check_same_network(ckpt, module, ckpt_path)
    if resuming:
        check_same_optimiser(ckpt, module.hparams, ckpt_path)


def optimized_value(metrics: dict[str, float], name: str | None) -> float | None:
    """The value a sweeper optimises, or None with a warning when it was never logged (the run
    itself succeeded: its exit code must say so)."""
    if not name:
        return None
    if name not in metrics:
        print(
            f"warning: optimized_metric={name} was not logged; logged metrics: {', '.join(sorted(metrics))}",
            file=sys.stderr,
        )
        return None
    return metrics[name]
