"""The GPU conformance suite on a machine without CUDA: collected, skipped, its seed printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_collected_and_skipped_without_cuda() -> None:
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-p", "no:cacheprovider"]
    done = subprocess.run([*command, "--conformance-seed", "42"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "conformance seed: 42" in done.stdout
    assert " skipped" in done.stdout and " passed" not in done.stdout and " failed" not in done.stdout
