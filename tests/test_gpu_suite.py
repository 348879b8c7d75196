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


def test_cases_of_one_compiled_shape_share_an_xdist_group(monkeypatch: pytest.MonkeyPatch) -> None:
    # `make test-gpu` runs --dist loadgroup: one worker compiles each palette shape
    from types import SimpleNamespace

    from tests.conformance.ops import FAMILIES
    from tests.gpu.conftest import case_params

    monkeypatch.setenv("MEMLAB_TEST_SEED", "7")
    config = SimpleNamespace(getoption=lambda name: 4)  # --conformance-shapes 4
    params = case_params(config, {"l2norm": FAMILIES["l2norm"]}, 10)
    groups = [m.args[0] for p in params for m in p.marks if m.name == "xdist_group"]
    assert groups == [f"l2norm-{i % 4}" for i in range(10)]
