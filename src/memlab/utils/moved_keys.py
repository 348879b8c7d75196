"""Config keys that moved, and the old spellings memlab still reads: in command-line overrides, in
the config of an earlier run (``scripts/eval.py`` rebuilds its model from it) and in the
hyper-parameters of its checkpoints (which a resume compares with its own)."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

# The optimizer and its schedule were settings of the LightningModule before they became the
# `optimizer` and `scheduler` config groups.
MOVED = {
    "module.lr": "optimizer.lr",
    "module.weight_decay": "optimizer.weight_decay",
    "module.betas": "optimizer.betas",
    "module.warmup_steps": "scheduler.warmup_steps",
    "module.min_lr_ratio": "scheduler.min_lr_ratio",
}
# What the runs of those days were built with.
_GROUPS = {
    "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True},
    "scheduler": {"_target_": "memlab.lit.optim.warmup_cosine_schedule", "_partial_": True},
}
# An override: optional +, ++ or ~, the key, then = and a value (or nothing, for ~key).
_OVERRIDE = re.compile(r"(?P<sign>\+\+|\+|~)?(?P<key>[\w.]+)(?P<rest>=.*)?", re.DOTALL)


def renamed_overrides(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Command-line arguments with the overrides of moved keys (``module.lr=1e-3``, sweeps
    ``module.lr=1e-3,3e-3``, ``+``/``~`` forms) renamed, and one warning per renamed key."""
    out, warnings = [], []
    for arg in args:
        match = _OVERRIDE.fullmatch(arg)
        if match and match["key"] in MOVED:
            new = MOVED[match["key"]]
            arg = f"{match['sign'] or ''}{new}{match['rest'] or ''}"
            warnings.append(f"{match['key']} is now {new}: read as {arg}")
        out.append(arg)
    return out, warnings


def upgraded_run_config(cfg: DictConfig) -> DictConfig:
    """An earlier run's config with its moved keys in their places now: ``optimizer`` and
    ``scheduler`` nodes that build what it trained with. A current config is returned as it is."""
    found = {old: new for old, new in MOVED.items() if OmegaConf.select(cfg, old) is not None}
    if not found:
        return cfg
    cfg = copy.deepcopy(cfg)
    for old, new in found.items():
        group, name = new.split(".")
        if cfg.get(group) is None:
            cfg[group] = _GROUPS[group]
        cfg[group][name] = OmegaConf.select(cfg, old)
        del cfg.module[old.split(".")[1]]
    return cfg


def upgraded_hparams(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's hyper-parameters as ``{"optimizer": {...}, "scheduler": {...}}``, also
    those of earlier runs, which kept them flat (``{"lr": 0.003, "warmup_steps": 50, ...}``)."""
    out = {key: dict(value) if isinstance(value, Mapping) else value for key, value in saved.items()}
    for old, new in MOVED.items():
        name = old.split(".")[1]
        if name in out and not isinstance(out[name], Mapping):
            group, key = new.split(".")
            out.setdefault(group, {})[key] = out.pop(name)
    return out
