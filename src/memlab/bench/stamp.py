"""The JSON a benchmark run writes: its rows per suite under a stamp of where and when they
were measured (GPU, commit, date, versions), the input of ``scripts/bench_page.py``.

    {"stamp": {"source": "measured", "gpu": ..., "commit": ..., "date": ..., ...},
     "suites": {"<suite>": [row, ...], ...},
     "notes": {"<suite>": "free text shown under its table"}}      (optional)
"""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
from pathlib import Path

import torch

# The checkout the running memlab comes from (src/memlab/bench/ -> the repository root).
REPO_ROOT = Path(__file__).resolve().parents[3]


def git_commit(root: Path = REPO_ROOT) -> str:
    """Short hash of HEAD, with ``-dirty`` when tracked files differ from it; ``unknown``
    outside a git checkout (an installed wheel) or without git."""
    try:
        run = dict(cwd=root, capture_output=True, text=True, check=True, timeout=10)
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty.strip() else head


def stamp() -> dict[str, str]:
    """Where and when this process measures: GPU (or ``cpu``), commit, UTC date, versions."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return {
        "source": "measured",
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "triton": triton_version,
        "python": platform.python_version(),
    }


def write_results(path: str, suites: dict[str, list[dict]], stamped: dict[str, str] | None = None) -> None:
    """Write ``suites`` ({suite name: rows}) to ``path`` under ``stamped`` (default: a fresh
    ``stamp()``)."""
    with open(path, "w") as f:
        json.dump({"stamp": stamped or stamp(), "suites": suites}, f, indent=1)
        f.write("\n")
