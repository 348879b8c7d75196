"""The training pipeline behind ``scripts/train.py``: config in, trained and tested model out."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from memlab.errors import ConfigError, NonFiniteError, Terminated
from memlab.lit.callbacks import ExceptionCheckpoint
from memlab.utils.checkpoint_match import check_same_network, check_same_optimiser
from memlab.utils.checkpoints import load_checkpoint, resolve_ckpt_path
from memlab.utils.config_tree import print_config_tree
from memlab.utils.hparams import log_hparams
from memlab.utils.instantiate import instantiate_group, instantiate_module
from memlab.utils.preflight import check_training_config
from memlab.utils.requeue import checkpoint_folders, drop_hpc_checkpoints, requeued_checkpoint
from memlab.utils.results_table import print_results_table
from memlab.utils.state_size import state_size_metric


def _log_config(loggers: list[Logger], cfg: DictConfig) -> None:
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            text = OmegaConf.to_yaml(cfg, resolve=True)
            # four-space indentation renders as a code block in TensorBoard's markdown
            logger.experiment.add_text("config", "\n".join("    " + ln for ln in text.splitlines()))


def _scalar_metrics(raw: dict) -> dict[str, float]:
    """Logged values as floats; a NaN stays NaN (a diverged run must show it, not hide it)."""
    return {name: float(v.item() if isinstance(v, torch.Tensor) else v) for name, v in raw.items()}


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (``cfg.train``) and test (``cfg.test``) the configured model; return the final metrics.

    Objects are built from the config: ``data`` (a LightningDataModule), ``model`` (the network),
    ``module`` (the LightningModule, given the network), ``callbacks``, ``logger``, ``trainer``.
    Everything that can be checked before training is (``memlab.utils.preflight``, the resumed
    checkpoint). A run that diverges raises NonFiniteError after writing its metrics (NaN
    included); one terminated by SIGTERM raises Terminated; both keep their checkpoints.
    """
    ckpt_path = _prepare(cfg)
    # plain Python containers, not OmegaConf ones, reach the objects (and their checkpoints)
    datamodule = instantiate(cfg.data, _convert_="all")
    module = instantiate_module(cfg)
    if ckpt_path is not None:
        _check_checkpoint(ckpt_path, module, resuming=bool(cfg.get("train")))
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if trainer.is_global_zero:
        _log_config(trainer.loggers, cfg)

    diverged = _fit(trainer, module, datamodule, ckpt_path) if cfg.get("train") else None
    if cfg.get("train"):
        drop_hpc_checkpoints(trainer.default_root_dir)
        trainer.strategy.barrier("memlab.drop_hpc_checkpoints")
    metrics = _scalar_metrics(trainer.callback_metrics)
    if diverged is not None and diverged.loss is not None:
        metrics["train/loss"] = diverged.loss  # the step it stopped at never published its metrics
    if cfg.get("test") and diverged is None:
        test_ckpt = None if cfg.get("train") else ckpt_path
        with _sigterm_as_terminated(trainer):
            trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt, weights_only=True)
        metrics.update(_scalar_metrics(trainer.callback_metrics))
    metrics.update(state_size_metric(getattr(module, "net", None), datamodule))

    if trainer.is_global_zero:
        _report(trainer, cfg, metrics, failed=diverged is not None)
    if diverged is not None:
        raise NonFiniteError(
            f"training diverged: {diverged}; {_kept(trainer)}; lower optimizer.lr, or let "
            "callbacks.nonfinite.max_skips=N skip up to N such steps"
        ) from diverged
    return metrics


def _prepare(cfg: DictConfig) -> str | None:
    """What comes before any object is built: the warning filters, the config tree, the checks
    of the config (``memlab.utils.preflight``) and the seed. Returns the checkpoint to start
    from (a requeued job's newest, else ``cfg.ckpt_path`` resolved), or None."""
    if cfg.extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
    output_dir = Path(cfg.paths.output_dir)
    # one tree per run, not one per process of a multi-GPU run (ranks are known from the environment)
    if cfg.extras.get("print_config") and rank_zero_only.rank == 0:
        print_config_tree(cfg, save_to=output_dir / "config_tree.log")
    if cfg.get("train"):
        # a job the cluster requeued continues from the newest checkpoint of its own folder
        requeued = requeued_checkpoint(checkpoint_folders(cfg))
        if requeued is not None:
            cfg.ckpt_path = requeued
    for warning in check_training_config(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    runs = Path(cfg.paths.log_dir) / cfg.task_name / "runs" / cfg.run_name / "*"
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), [str(runs)], output_dir)
    seed = cfg.get("seed")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise ConfigError(f"seed must be an integer in [0, 2**32) or null (got {seed!r})")
        L.seed_everything(seed, workers=True)
    return ckpt_path


def _check_checkpoint(ckpt_path: str, module: LightningModule, resuming: bool) -> None:
    """The checkpoint holds this network and, for a resume, was trained with this optimiser."""
    ckpt = load_checkpoint(ckpt_path)
    check_same_network(ckpt, module, ckpt_path)
    if resuming:
        check_same_optimiser(ckpt, module.hparams, ckpt_path)


def _report(trainer: Trainer, cfg: DictConfig, metrics: dict[str, float], failed: bool) -> None:
    """metrics.json, the hparams with the final metrics, and the table of final metrics."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    for logger in trainer.loggers:
        log_hparams(logger, cfg, metrics, failed)
        logger.finalize("failed" if failed else "success")
    print_results_table(metrics, title=cfg.run_name, caption=str(output_dir))


def _fit(
    trainer: Trainer, module: LightningModule, datamodule: LightningDataModule, ckpt_path: str | None
) -> NonFiniteError | None:
    """trainer.fit, loading the checkpoint as weights only; a divergence is returned (the caller
    still reports the metrics)."""
    try:
        with _sigterm_as_terminated(trainer):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except NonFiniteError as exc:
        return exc
    return None


@contextmanager
def _sigterm_as_terminated(trainer: Trainer) -> Iterator[None]:
    """A fit or test that SIGTERM ended raises Terminated (Lightning ends it with SystemExit(None),
    exit code 0, which a scheduler would record as a success)."""
    try:
        yield
    except SIGTERMException:
        raise _terminated(trainer) from None
    except Exception as exc:
        # a scheduler signals the job's whole process group: loader workers that die of it end
        # the step under way with an error (the checkpoint holds the step before)
        if trainer.received_sigterm:
            raise _terminated(trainer) from exc
        raise


def _terminated(trainer: Trainer) -> Terminated:
    return Terminated(
        f"terminated by SIGTERM after step {trainer.global_step}; {_kept(trainer)}: resume it with "
        "ckpt_path=last"
    )


def _kept(trainer: Trainer) -> str:
    """Which checkpoint holds the latest trained state, in words."""
    for callback in trainer.callbacks:
        if isinstance(callback, ExceptionCheckpoint) and callback.saved is not None:
            path, step = callback.saved
            return f"step {step} is saved in {path}"
    last = getattr(trainer.checkpoint_callback, "last_model_path", "")
    return f"the last checkpoint is {last}" if last else "no checkpoint was written"


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
