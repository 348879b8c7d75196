"""What a checkpoint must share with the run that loads it: the network's parameter names and shapes
and, to resume, the optimizer and schedule settings its optimizer state was built with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from memlab.errors import ConfigError
from memlab.utils.moved_keys import upgraded_hparams

_SHOWN = 3


def check_same_network(ckpt: Mapping[str, Any], module: nn.Module, path: str) -> None:
    """ConfigError unless the checkpoint's ``state_dict`` has exactly ``module``'s entries and shapes
    (instead of the traceback ``load_state_dict`` raises once fit has started)."""
    saved, here = ckpt["state_dict"], module.state_dict()
    problems = []
    mismatched = [
        f"{key} ({list(saved[key].shape)} in the checkpoint, {list(value.shape)} here)"
        for key, value in here.items()
        if key in saved and tuple(saved[key].shape) != tuple(value.shape)
    ]
    if mismatched:
        problems.append(f"size mismatch for {_some(mismatched)}")
    missing = [key for key in here if key not in saved]
    if missing:
        problems.append(f"missing {_some(missing)}")
    unexpected = [key for key in saved if key not in here]
    if unexpected:
        problems.append(f"unexpected {_some(unexpected)}")
    if problems:
        raise ConfigError(
            f"ckpt_path={path}: the checkpoint holds another network: {'; '.join(problems)} "
            "(was it trained with other model settings?)"
        )


def check_same_optimiser(ckpt: Mapping[str, Any], hparams: Mapping[str, Any], path: str) -> None:
    """ConfigError if an ``optimizer.*`` or ``scheduler.*`` setting differs from the checkpoint's: a
    resume restores the optimizer and scheduler state, so a new value would be recorded but not
    applied. ``hparams`` are the module's, as ``CausalLMModule`` records them."""
    saved = _flat(upgraded_hparams(ckpt.get("hyper_parameters") or {}))
    changed = [
        f"{key}={_plain(value)!r} differs from the checkpoint's {_plain(saved[key])!r}"
        for key, value in _flat(hparams).items()
        if key in saved and _plain(value) != _plain(saved[key])
    ]
    if changed:
        raise ConfigError(
            f"ckpt_path={path}: {'; '.join(changed)}: a resume continues the checkpoint's optimizer "
            "and schedule; resume with the same value, or start a new run"
        )


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


def _some(items: list[str]) -> str:
    more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more
