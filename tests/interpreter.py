"""Triton kernels on the CPU: tests marked ``interpreted`` run under Triton's interpreter.

The interpreter has to be switched on (TRITON_INTERPRET=1) before a kernel is defined, while
the rest of the suite runs without it. So in a normal run those tests are deselected (see
``conftest.py``), and one launcher test per file runs them again in a fresh Python with the
variable set.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.interpreted


def run_under_interpreter(test_file: str, workers: int = 1) -> None:
    """Run the ``interpreted`` tests of ``test_file`` under TRITON_INTERPRET=1; fail with their
    output unless they all pass. ``workers`` > 1 spreads them over that many pytest-xdist
    processes (at most one per core): the interpreter runs on one thread, and the calling
    pytest only waits meanwhile."""
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    env = os.environ | {"TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore"]
    workers = min(workers, os.cpu_count() or 1)
    if workers > 1 and importlib.util.find_spec("xdist") is not None:
        command += ["-n", str(workers)]
    command += ["-m", "interpreted", test_file]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert re.search(r"\b\d+ passed\b", done.stdout) and " skipped" not in done.stdout, done.stdout[-2000:]
