"""TensorBoard runs named by what they are: a multirun's job by its arm (``shared_mem=false,seed=1``).

TensorBoard names a run by its folder relative to ``--logdir``. A single run's events stay in
``<run dir>/tensorboard``; a multirun job's go to ``<sweep dir>/<arm>``, next to the job's own
folder ``<sweep dir>/<job number>`` (checkpoints, metrics, .hydra), so that ``tensorboard
--logdir <sweep dir>`` lists the arms and ``--logdir logs/`` shows ``…/multiruns/<timestamp>/<arm>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from memlab.lit.loggers import TensorBoardLogger


@dataclass(frozen=True)
class Arm:
    """A multirun job: ``swept`` maps each key the sweep varies to this job's value, in sweep order."""

    name: str
    swept: dict[str, Any]
    sweep_dir: Path
    job_num: int


def swept_keys(params: dict[str, Any], overrides: list[str]) -> set[str]:
    """The keys a sweep varies: sweeps among the sweeper's ``params`` and the command line's overrides."""
    lines = [f"{key}={value}" for key, value in params.items()] + list(overrides)
    parsed = OverridesParser.create().parse_overrides(lines)
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def arm_name(swept: dict[str, Any]) -> str:
    """``shared_mem=false,seed=1``: each key by its last component (whole where that is ambiguous)."""
    last = [key.rsplit(".", 1)[-1] for key in swept]
    parts = []
    for key, short, value in zip(swept, last, swept.values(), strict=True):
        text = str(value).lower() if isinstance(value, bool) else str(value)
        parts.append(f"{short if last.count(short) == 1 else key}={text}")
    return ",".join(parts).replace(os.sep, "_")


def multirun_arm() -> Arm | None:
    """This process's arm when it runs a job of a Hydra multirun, else None."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    # a config composed with an experiment's `hydra.mode: MULTIRUN` is no job (it has no number)
    if hydra.mode != RunMode.MULTIRUN or OmegaConf.is_missing(hydra.job, "num"):
        return None
    sweep_dir = Path(hydra.sweep.dir)
    # the sweeper saves the multirun's own config (command line included) before any job starts
    saved = sweep_dir / "multirun.yaml"
    keys = _sweep_keys(OmegaConf.load(saved).hydra) if saved.is_file() else _sweep_keys(hydra, False)
    swept = _job_swept(list(hydra.overrides.task), keys)
    num = int(hydra.job.num)
    return Arm(arm_name(swept) if swept else f"job{num}", swept, sweep_dir, num)


def job_event_dir(job_dir: Path) -> Path | None:
    """The TensorBoard folder that ``tensorboard_logger`` gave the finished multirun job
    ``<sweep dir>/<job number>``: ``<sweep dir>/<arm>`` or ``<arm>,job=<n>``; None where the
    sweep folder has no multirun.yaml or no such folder."""
    sweep_dir, num = job_dir.parent, job_dir.name
    saved, overrides = sweep_dir / "multirun.yaml", job_dir / ".hydra" / "overrides.yaml"
    if not (saved.is_file() and overrides.is_file()):
        return None
    swept = _job_swept(list(OmegaConf.load(overrides)), _sweep_keys(OmegaConf.load(saved).hydra))
    name = arm_name(swept) if swept else f"job{num}"
    return next((d for d in (sweep_dir / f"{name},job={num}", sweep_dir / name) if d.is_dir()), None)


def _sweep_keys(hydra: DictConfig, command_line: bool = True) -> set[str]:
    """The keys a multirun varies, from its Hydra config (the sweeper's params, and the command
    line's overrides where ``command_line``)."""
    params = OmegaConf.to_container(hydra.sweeper.get("params") or DictConfig({}), resolve=False)
    return swept_keys(params, list(hydra.overrides.task) if command_line else [])


def _job_swept(overrides: list[str], keys: set[str]) -> dict[str, Any]:
    """A job's values of the swept ``keys``, from its overrides, in their order."""
    job = OverridesParser.create().parse_overrides(overrides)
    return {o.key_or_group: o.value() for o in job if o.key_or_group in keys}


def tensorboard_logger(
    save_dir: str, name: str = "tensorboard", version: str = "", **kwargs: Any
) -> TensorBoardLogger:
    """memlab's TensorBoard logger at ``save_dir/name/version``, or a multirun job's at
    ``<sweep dir>/<arm>`` (``<arm>,job=<n>`` if another job of the sweep has that name)."""
    arm = multirun_arm()
    if arm is not None:
        taken = (arm.sweep_dir / arm.name).exists()
        save_dir, name, version = str(arm.sweep_dir), "", arm.name + (f",job={arm.job_num}" if taken else "")
    return TensorBoardLogger(save_dir=save_dir, name=name, version=version, **kwargs)
