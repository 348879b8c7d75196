"""A job the cluster requeued continues from the checkpoints its earlier attempt left behind.

SLURM restarts a requeued job (preempted, or requeued before its time limit by Lightning's
auto-requeue) with the same job id and ``SLURM_RESTART_COUNT`` >= 1; memlab's SLURM launcher
reruns the same Hydra job, so the run writes into the same folder again. There it finds
``checkpoints/`` (periodic, ``last.ckpt``, ``on_exception.ckpt``) and Lightning's
``hpc_ckpt_<n>.ckpt`` (written on the requeue signal) and resumes from the newest.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig

from memlab.errors import ConfigError
from memlab.utils.checkpoints import load_checkpoint

log = logging.getLogger(__name__)

# Lightning's name for the checkpoint its SLURM auto-requeue writes into trainer.default_root_dir
HPC_PATTERN = "hpc_ckpt_*.ckpt"


def restart_count() -> int:
    """How many times the cluster restarted this job (0 outside SLURM or on its first attempt)."""
    value = os.environ.get("SLURM_RESTART_COUNT", "")
    return int(value) if value.isdigit() else 0


def checkpoint_folders(cfg: DictConfig) -> list[str]:
    """Where a training run writes checkpoints: its callbacks' ``dirpath`` and the trainer's
    ``default_root_dir`` (Lightning's requeue checkpoints)."""
    callbacks = cfg.get("callbacks") or {}
    folders = [
        node.dirpath for node in callbacks.values() if isinstance(node, DictConfig) and node.get("dirpath")
    ]
    root = cfg.trainer.get("default_root_dir")
    return [*folders, root] if root else folders


def requeued_checkpoint(folders: Iterable[str | Path]) -> str | None:
    """For a requeued job, the newest ``*.ckpt`` in ``folders`` that loads (one cut short by the
    kill is passed over for the next newest); None for a job on its first attempt, or when the
    earlier attempt left no checkpoint."""
    if restart_count() < 1:
        return None
    found = {path for folder in folders for path in Path(folder).glob("*.ckpt") if path.is_file()}
    for path in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            load_checkpoint(path)
        except ConfigError as exc:
            log.warning("requeued job: passing over %s (%s)", path, exc)
            continue
        log.info("requeued job (restart %d): resuming from %s", restart_count(), path)
        return str(path)
    return None


def drop_hpc_checkpoints(folder: str | Path) -> None:
    """Delete Lightning's requeue checkpoints once a fit has ended: under SLURM, Lightning would
    otherwise load the newest of them for ``trainer.test(ckpt_path=None)``, in place of the weights
    just trained. Every rank may call it; call the strategy's barrier after."""
    for path in Path(folder).glob(HPC_PATTERN):
        path.unlink(missing_ok=True)
