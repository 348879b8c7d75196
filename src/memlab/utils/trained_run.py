"""A trained run as the scripts that use one (eval, generate, lm-eval) find and rebuild it: the
checkpoint a config names, the run's own config beside it, its network, and the command-line
values they share (device, autocast dtype, whole numbers)."""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from memlab.errors import ConfigError
from memlab.utils.checkpoint_match import check_same_network
from memlab.utils.checkpoints import load_checkpoint, resolve_ckpt_path
from memlab.utils.instantiate import instantiate_module
from memlab.utils.moved_keys import upgraded_run_config

# amp_dtype values: autocast on CUDA only
AMP_DTYPES = {None: None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def trained_run(cfg: DictConfig) -> tuple[str, DictConfig]:
    """(the checkpoint ``cfg.ckpt_path`` names — ``last``: the newest of any training run, single
    or sweep job —, its run's config with the model resolved)."""
    trained = Path(cfg.paths.log_dir) / "train"
    runs = [str(trained / "runs" / "*" / "*"), str(trained / "multiruns" / "*" / "*")]
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, runs, Path(cfg.paths.output_dir))
    return ckpt_path, run_config_of(ckpt_path, f"ckpt_path={cfg.ckpt_path}")


def released_run(cfg: DictConfig) -> tuple[None, DictConfig] | None:
    """For ``model=<name> model.init_from=<folder | Hub name>`` in place of ``ckpt_path`` (a
    released model): no checkpoint, and the run config it stands for (that model, the data config
    given); None where ``model.init_from`` is not set."""
    if not (cfg.get("model") or {}).get("init_from"):
        if cfg.get("model"):
            # the network of a trained run is its own: a model given beside it would be ignored
            raise ConfigError(
                "model=<name> evaluates a released model and needs model.init_from=<folder | Hub "
                "name>; a trained run (ckpt_path) brings its own model"
            )
        return None
    if not OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ConfigError("give ckpt_path (a trained run) or model.init_from (a released model), not both")
    parts = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "data")}
    return None, OmegaConf.create(parts)


def run_config_of(ckpt_path: str, named: str) -> DictConfig:
    """The ``.hydra/config.yaml`` of the run whose ``checkpoints/`` folder holds ``ckpt_path``,
    keys moved since upgraded, the model resolved (its keys interpolate the run's data config,
    which a task may then replace); ``named`` says how the user gave the checkpoint."""
    config = Path(ckpt_path).resolve().parent.parent / ".hydra" / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{named}: no training config at {config}")
    run_cfg = upgraded_run_config(OmegaConf.load(config))
    run_cfg.model = OmegaConf.to_container(run_cfg.model, resolve=True)
    if run_cfg.model.get("init_from"):  # the weights it started from: the checkpoint replaces them
        run_cfg.model.init_from = None
    return run_cfg


def load_network(run_cfg: DictConfig, ckpt_path: str | None, device: torch.device) -> nn.Module:
    """The run's network with the checkpoint's weights, in eval mode on ``device``; without a
    checkpoint, with those of ``model.init_from`` (a released model)."""
    if ckpt_path is None:
        return instantiate(run_cfg.model, _convert_="all").to(device).eval()
    module = instantiate_module(run_cfg)
    ckpt = load_checkpoint(ckpt_path)
    check_same_network(ckpt, module, ckpt_path)
    module.load_state_dict(ckpt["state_dict"])
    return module.net.to(device).eval()


def torch_device(name: str) -> torch.device:
    """``device=`` as a torch device: ``auto`` is CUDA where there is one; ConfigError otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device={name}: not a torch device ({exc})") from exc
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise ConfigError(f"device={name}: no such CUDA device here ({torch.cuda.device_count()} found)")
    return device


def whole_number(key: str, value: Any, minimum: int = 1, optional: bool = False) -> int | None:
    """``value`` as an int >= ``minimum`` (or None where ``optional``); else a ConfigError naming ``key``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        expected = f"an integer >= {minimum}" + (" or null" if optional else "")
        raise ConfigError(f"{key}: expected {expected} (got {value!r})")
    return int(value)
