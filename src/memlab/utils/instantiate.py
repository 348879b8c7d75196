"""Objects built from a run's config, the same way by the training and the evaluation pipeline."""

from __future__ import annotations

from hydra.utils import instantiate
from lightning import LightningModule
from omegaconf import DictConfig

# The groups handed to the LightningModule as callables (Hydra partials).
_PARTS = ("optimizer", "scheduler")


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a callbacks/logger group that has a ``_target_``."""
    if not group:
        return []
    return [
        instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node
    ]


def instantiate_module(cfg: DictConfig) -> LightningModule:
    """The LightningModule of ``cfg.module`` around the network of ``cfg.model``, given the
    ``cfg.optimizer`` and ``cfg.scheduler`` partials where the config has them (the module's
    defaults otherwise). Plain Python containers, not OmegaConf ones, reach the objects (and so
    the checkpoints, which load as weights only)."""
    net = instantiate(cfg.model, _convert_="all")
    parts = {
        key: instantiate(cfg[key], _convert_="all") for key in ("optimizer", "scheduler") if cfg.get(key)
    }
    return instantiate(cfg.module, net=net, **parts, _convert_="all")
