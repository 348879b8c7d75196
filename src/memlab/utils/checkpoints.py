"""Find the checkpoint a run resumes from: a path, or ``last`` = the newest run of the same name."""

from __future__ import annotations

from pathlib import Path

import torch

from memlab.errors import ConfigError


def resolve_ckpt_path(ckpt_path: str | None, runs_dir: Path, current_run: Path) -> str | None:
    """Return a checked checkpoint path, or None to start from scratch.

    ``last`` picks the most recent ``<runs_dir>/<timestamp>/checkpoints/last.ckpt`` other than
    the current run's own folder. Missing or unreadable files raise ConfigError.
    """
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        candidates = [
            p
            for p in runs_dir.glob("*/checkpoints/last.ckpt")
            if p.parent.parent.resolve() != current_run.resolve()
        ]
        if not candidates:
            raise ConfigError(f"ckpt_path=last: no earlier run with a last.ckpt under {runs_dir}")
        path = max(candidates, key=lambda p: p.stat().st_mtime)
    else:
        path = Path(ckpt_path)
        if not path.is_file():
            raise ConfigError(f"ckpt_path={ckpt_path}: no such file")
    try:
        torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as exc:
        raise ConfigError(f"ckpt_path={path}: not a readable checkpoint ({exc.__class__.__name__})") from exc
    return str(path)
