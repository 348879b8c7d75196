"""The GPU check scripts on a machine without one: a single clear line and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("check_gpu_*.py"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
@pytest.mark.parametrize("script", SCRIPTS)
def test_without_cuda_one_error_line_and_exit_2(script: str) -> None:
    done = subprocess.run(
        [sys.executable, f"scripts/{script}"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr[-2000:]
    assert done.stderr.startswith("error: no CUDA device"), done.stderr[-2000:]


def test_every_check_script_is_found() -> None:
    assert len(SCRIPTS) == 5
