"""Start-up checks of a training config that no single object can make, run before anything is
built or trained: the step horizon, the kernel backend against the device, the declared types of
the model's and module's arguments, the optimizer's and scheduler's options, the folders
checkpoints go to, and whether the optimized metric can be logged at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from memlab.errors import ConfigError
from memlab.lit.causal_lm import SHARDED_CUDA_GRAPH
from memlab.lit.optim import OPTIONS
from memlab.utils.checkpoints import LAST_NAMES
from memlab.utils.declared_types import check_declared_types


def check_training_config(cfg: DictConfig) -> list[str]:
    """Raise ConfigError for a run that cannot work; return warnings for one that works but would
    not give what was asked."""
    trainer = cfg.trainer
    if cfg.get("train") and not trainer.get("fast_dev_run"):
        _check_horizon(trainer.get("max_steps"))
    check_declared_types(cfg.model, "model")
    check_declared_types(cfg.module, "module")
    for key in ("optimizer", "scheduler"):
        if cfg.get(key):
            _check_options(cfg[key], key)
    _check_backend(cfg.model, trainer.get("accelerator"))
    _check_cuda_graph(cfg.module, trainer)
    _check_checkpoint_dirs(
        cfg.get("callbacks") or {}, fresh=cfg.get("train") and cfg.get("ckpt_path") is None
    )
    return _metric_warnings(cfg)


def _check_horizon(max_steps: object) -> None:
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ConfigError(
            f"trainer.max_steps={max_steps}: training is step-based (endless data) and needs a "
            "horizon: an integer >= 1"
        )


def _check_options(node: DictConfig, key: str) -> None:
    """The options of a target memlab has a schema for (``memlab.lit.optim.OPTIONS``) through
    that schema, those of any other target through the types its signature declares."""
    options = OmegaConf.to_container(node, resolve=True)
    try:
        schema = OPTIONS.get(get_object(options.get("_target_")))
    except Exception:
        schema = None  # a target that cannot be found is reported by instantiating it
    if schema is None:
        check_declared_types(node, key)
        return
    # Hydra's own keys (_target_, _partial_, ...) are not the target's options
    schema.build({k: v for k, v in options.items() if not (k.startswith("_") and k.endswith("_"))}, key)


def _check_backend(model: DictConfig, accelerator: str | None) -> None:
    """backend=triton needs CUDA tensors, or CPU ones under Triton's interpreter."""
    from memlab.kernels.backend import ENV_VAR, HAS_TRITON

    for key, value in _backends(model, "model"):
        choice, where = (
            (value, f"{key}=triton") if value is not None else (os.environ.get(ENV_VAR), f"${ENV_VAR}=triton")
        )
        if choice != "triton":
            continue
        if not HAS_TRITON:
            raise ConfigError(f"{where}: Triton is not installed; use backend=auto or torch")
        if not _on_cuda(accelerator) and os.environ.get("TRITON_INTERPRET") != "1":
            raise ConfigError(
                f"{where} runs Triton kernels, which need a CUDA device (trainer=gpu) or, on the "
                "CPU, Triton's interpreter (TRITON_INTERPRET=1, slow); use backend=auto or torch"
            )


def _check_cuda_graph(module: DictConfig, trainer: DictConfig) -> None:
    """module.cuda_graph replays CUDA graphs: a GPU, and the whole model on each device ("auto":
    where they are)."""
    value = module.get("cuda_graph", False)
    if not (isinstance(value, bool) or value == "auto"):
        raise ConfigError(f"module.cuda_graph={value}: expected true, false or auto")
    if value is not True:
        return
    if not _on_cuda(trainer.get("accelerator")):
        raise ConfigError("module.cuda_graph needs a CUDA device (trainer=gpu)")
    if "FSDP" in str(OmegaConf.select(trainer, "strategy._target_", default="")):
        raise ConfigError(SHARDED_CUDA_GRAPH)


def _on_cuda(accelerator: str | None) -> bool:
    return accelerator in (None, "auto", "gpu", "cuda") and torch.cuda.is_available()


def _backends(node: DictConfig, key: str) -> list[tuple[str, str | None]]:
    found = []
    for name, value in node.items():
        if isinstance(value, DictConfig):
            found += _backends(value, f"{key}.{name}")
        elif name == "backend":
            found.append((f"{key}.{name}", value))
    return found


def _check_checkpoint_dirs(callbacks: DictConfig, fresh: bool) -> None:
    """Every callback folder (checkpoints) takes a file now, not at the first save hours later; for
    a run from scratch (``fresh``) it holds no checkpoint to resume, which Lightning would load
    unasked and unchecked (``fit(ckpt_path=None)`` resumes from ``last`` when there is one)."""
    for name, node in callbacks.items():
        if not isinstance(node, DictConfig) or not node.get("dirpath"):
            continue
        folder = Path(node.dirpath)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise ConfigError(
                f"callbacks.{name}.dirpath={folder}: cannot write there ({exc.strerror or exc})"
            ) from exc
        found = sorted(
            p.name for p in folder.glob("*.ckpt") if p.name in LAST_NAMES or p.name.startswith("last")
        )
        if fresh and found:
            raise ConfigError(
                f"callbacks.{name}.dirpath={folder} already holds {', '.join(found)} of another run: "
                "resume it with ckpt_path=<its path>, or write this run elsewhere"
            )


def _metric_warnings(cfg: DictConfig) -> list[str]:
    name = cfg.get("optimized_metric")
    if not name:
        return []
    trainer = cfg.trainer
    interval, max_steps = trainer.get("val_check_interval"), trainer.get("max_steps")
    reason = None
    if name.startswith("val/"):
        if not cfg.get("train"):
            reason = "train=false: validation does not run"
        elif trainer.get("limit_val_batches") == 0:
            reason = "trainer.limit_val_batches=0"
        elif isinstance(interval, int) and isinstance(max_steps, int) and interval > max_steps:
            reason = f"trainer.val_check_interval={interval} > trainer.max_steps={max_steps}"
    elif name.startswith("test/") and not cfg.get("test"):
        reason = "test=false"
    if reason is None:
        return []
    return [f"optimized_metric={name} will never be logged ({reason}); sweepers will get no value"]
