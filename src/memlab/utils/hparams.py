"""Hyper-parameters for TensorBoard's HPARAMS tab: the resolved config, flattened."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

# groups that say where and how a run is logged rather than what it trains
SKIPPED_GROUPS = ("hydra", "paths", "extras", "callbacks", "logger")


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """{"model.d_model": 128, "module.lr": 0.003, ...}: scalar leaves as they are, anything else
    (None, lists, empty dicts) as its string."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    out: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(value, f"{name}.")
            elif isinstance(value, bool | int | float | str):
                out[name] = value
            else:
                out[name] = str(value)

    walk({k: v for k, v in tree.items() if k not in SKIPPED_GROUPS}, "")
    return out
