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


def test_scan_cases_are_grouped_by_compiled_shape_and_length_class(monkeypatch: pytest.MonkeyPatch) -> None:
    # the scan kernels compile again for another length class: one worker per shape and class
    from types import SimpleNamespace

    from tests.conformance.ops import FAMILIES
    from tests.gpu.conftest import case_params, length_class

    monkeypatch.setenv("MEMLAB_TEST_SEED", "7")
    config = SimpleNamespace(getoption=lambda name: 4)
    params = case_params(config, {"selective_scan": FAMILIES["selective_scan"]}, 40)
    for p in params:
        _, i, spec = p.values[0]
        (group,) = [m.args[0] for m in p.marks if m.name == "xdist_group"]
        assert group == f"selective_scan-{i % 4}-{length_class(spec['L'])}"
    classes = [length_class(n) for n in (1, 2, 15, 16, 17, 64, 256, 1000)]
    assert classes == ["L1su", "L2su", "L1s", "L16su", "L1", "L16", "L16x", "L8"]


def test_long_groups_are_queued_first_and_not_behind_each_other() -> None:
    # pytest-xdist hands a worker on a one-test group the next group at once: the queue puts
    # a short group there, so that the third long group goes to the worker that is free first
    from tests.gpu.conftest import dispatch_order

    units = [[1.0], [60.0], [1.0, 1.0, 1.0], [50.0], [40.0], [1.0]]
    order = dispatch_order(units, workers=2)
    assert sorted(order) == list(range(len(units)))
    assert order[:2] == [1, 3]  # longest first
    assert order.index(4) > order.index(0) and order.index(4) > order.index(5)


def test_case_times_are_written_once_under_xdist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a worker logs its report and the controller logs it again: only the controller writes
    from types import SimpleNamespace

    from tests.gpu.conftest import pytest_runtest_logreport

    times = tmp_path / "times"
    monkeypatch.setenv("MEMLAB_CONFORMANCE_TIMES", str(times))
    report = SimpleNamespace(when="call", duration=1.5, outcome="passed", failed=False, nodeid="t@g")
    report.user_properties = []
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    pytest_runtest_logreport(report)
    assert not times.exists()
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    pytest_runtest_logreport(report)
    assert times.read_text() == "1.50 passed t@g\n"
