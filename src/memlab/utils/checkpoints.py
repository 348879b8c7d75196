"""Find the checkpoint a run resumes from or evaluates (a path, or ``last``) and load it as weights
only: tensors and plain containers, so that nothing in a checkpoint file ever runs."""

from __future__ import annotations

import glob
import logging
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from memlab.errors import ConfigError

log = logging.getLogger(__name__)

# What `last` may resume: the periodic last.ckpt, or the checkpoint a run that died wrote after it.
LAST_NAMES = ("last.ckpt", "on_exception.ckpt")


def resolve_ckpt_path(ckpt_path: str | None, runs: Sequence[str], current_run: Path) -> str | None:
    """Return the path of a checkpoint that loads as weights only, or None to start from scratch.

    ``last`` picks the most recently written ``last.ckpt`` or ``on_exception.ckpt`` in the
    ``checkpoints/`` folder of a run folder matching one of the globs ``runs``, other than the
    current run's own. Missing, unreadable or unsafe files raise ConfigError.
    """
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        candidates = [
            Path(run) / "checkpoints" / name
            for pattern in runs
            for run in glob.glob(pattern)
            if Path(run).resolve() != current_run.resolve()
            for name in LAST_NAMES
            if (Path(run) / "checkpoints" / name).is_file()
        ]
        if not candidates:
            where = " or ".join(str(Path(pattern).parent) for pattern in runs)
            raise ConfigError(f"ckpt_path=last: no earlier run with a last.ckpt under {where}")
        path = max(candidates, key=lambda p: p.stat().st_mtime)
        log.info("ckpt_path=last: %s", path)
    else:
        path = Path(ckpt_path)
        if not path.is_file():
            raise ConfigError(f"ckpt_path={ckpt_path}: no such file")
    load_checkpoint(path)
    return str(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The contents of a Lightning checkpoint, memory-mapped on the CPU, unpickled as weights only
    (``weights_only=True``). A file that needs any other object is refused unread: unpickling it
    could run arbitrary code."""
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f" (it asks for {found.group(1)})" if found else ""
        raise ConfigError(
            f"ckpt_path={path}: refused: memlab loads checkpoints as weights only, and this one holds "
            f"Python objects that unpickling would have to run{what}"
        ) from exc
    except Exception as exc:
        raise ConfigError(f"ckpt_path={path}: not a readable checkpoint ({exc.__class__.__name__})") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ConfigError(f"ckpt_path={path}: not a Lightning checkpoint (no state_dict)")
    return ckpt
