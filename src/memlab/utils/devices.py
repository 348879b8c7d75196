"""One GPU per sweep job on a host with several: each job process claims a free place on one GPU
(``jobs_per_gpu`` places per GPU) and sets ``CUDA_VISIBLE_DEVICES`` to it before CUDA starts.

A place is an exclusive lock on a file in a folder shared by every sweep of the user on the host,
held for the life of the process (a process that has started CUDA cannot change GPU; the
operating system releases the lock when the process ends). Places are taken in the order of
:func:`places`, so the first jobs spread over the GPUs before any GPU gets a second one, and two
sweeps run side by side share the GPUs instead of piling onto GPU 0.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, read_write

from memlab.errors import ConfigError

log = logging.getLogger(__name__)

ENV_VAR = "CUDA_VISIBLE_DEVICES"
# the place this process holds: (device, index on it, the open lock file)
_held: tuple[str, int, Any] | None = None


def visible_devices(count: Callable[[], int] | None = None) -> list[str]:
    """The GPUs a job may use: those ``CUDA_VISIBLE_DEVICES`` lists, else ``0 .. count() - 1``
    (``count`` defaults to ``torch.cuda.device_count``)."""
    listed = os.environ.get(ENV_VAR)
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    if count is None:
        import torch

        count = torch.cuda.device_count
    return [str(i) for i in range(count())]


def places(devices: Sequence[str], jobs_per_gpu: int) -> list[tuple[str, int]]:
    """Every (device, index) place, first place of every device first: with devices 0, 1 and two
    jobs per GPU, (0, 0), (1, 0), (0, 1), (1, 1)."""
    return [(device, k) for k in range(jobs_per_gpu) for device in devices]


def lock_dir() -> Path:
    """The folder of the places' lock files: one per user and host."""
    return Path(tempfile.gettempdir()) / f"memlab-gpu-places-{os.getuid()}"


def try_claim(devices: Sequence[str], jobs_per_gpu: int, folder: Path) -> tuple[str, int, Any] | None:
    """The first free place, locked, with its open lock file (keep it open to hold the place);
    None when every place is taken."""
    folder.mkdir(parents=True, exist_ok=True)
    for device, k in places(devices, jobs_per_gpu):
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", device)
        handle = open(folder / f"gpu-{name}.{k}.lock", "w")  # noqa: SIM115 (held for the process's life)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return device, k, handle
    return None


def claim_gpu(
    devices: Sequence[str], jobs_per_gpu: int, folder: Path | None = None, poll_s: float = 5.0
) -> str:
    """Hold a place for this process (waiting while all are taken) and make its device the only
    one CUDA sees; a process that holds one already keeps it. Returns the device."""
    global _held
    if _held is None:
        folder = lock_dir() if folder is None else folder
        waited = False
        while (claimed := try_claim(devices, jobs_per_gpu, folder)) is None:
            if not waited:
                log.info("all %d GPU places are taken; waiting for one", len(devices) * jobs_per_gpu)
                waited = True
            time.sleep(poll_s)
        _held = claimed
    log.info("this job runs on GPU %s (place %d of it)", _held[0], _held[1])
    os.environ[ENV_VAR] = _held[0]
    return _held[0]


def release_gpu() -> None:
    """Give this process's place back (its process ending does the same)."""
    global _held
    if _held is not None:
        _held[2].close()
        _held = None


class GpuPool(Callback):
    """Hydra callback of ``hydra/launcher=gpu_pool``: at the start of a multirun it counts the GPUs
    (and sets the launcher's ``n_jobs``, when 0, to GPUs × ``jobs_per_gpu``); each job then
    claims a place (:func:`claim_gpu`) before its task starts. Single runs are left alone."""

    def __init__(self, jobs_per_gpu: int = 1) -> None:
        if isinstance(jobs_per_gpu, bool) or not isinstance(jobs_per_gpu, int) or jobs_per_gpu < 1:
            raise ConfigError(
                f"hydra.callbacks.gpu_pool.jobs_per_gpu must be an integer >= 1 (got {jobs_per_gpu!r})"
            )
        self.jobs_per_gpu = jobs_per_gpu
        self.devices: list[str] | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.devices = visible_devices()
        launcher = config.hydra.launcher
        if launcher.get("n_jobs") == 0:
            with read_write(launcher):
                launcher.n_jobs = max(1, len(self.devices) * self.jobs_per_gpu)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.devices:  # set by on_multirun_start, in the process that launched this job
            claim_gpu(self.devices, self.jobs_per_gpu)
