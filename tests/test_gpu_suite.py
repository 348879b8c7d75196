"""The GPU conformance suite on a machine without CUDA: collected, skipped, its seed printed."""

from __future__ import annotations

import itertools
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


def _palette(monkeypatch: pytest.MonkeyPatch, families: dict, cases: int, shapes: int) -> list:
    """case_params at seed 7 over ``shapes`` compiled shapes: [(family, index, spec, group)]."""
    from types import SimpleNamespace

    from tests.gpu.conftest import case_params

    monkeypatch.setenv("MEMLAB_TEST_SEED", "7")
    config = SimpleNamespace(getoption=lambda name: shapes)  # --conformance-shapes
    params = case_params(config, families, cases)
    return [(*p.values[0], *(m.args[0] for m in p.marks if m.name == "xdist_group")) for p in params]


def _scanned_families() -> dict:
    from tests.conformance.layers import LAYER_FAMILIES
    from tests.conformance.ops import FAMILIES

    layers = {n: LAYER_FAMILIES[n] for n in ("mamba", "memmamba")}
    return {"selective_scan": FAMILIES["selective_scan"], **layers}


def test_length_classes_are_what_the_scan_kernels_specialise_on() -> None:
    # gcd(L, 16) and L <= 16 (STATE_EVERY) are constexprs; L / gcd(L, 16) is not specialised on
    from tests.conformance.draw import class_lengths, length_class, length_classes

    classes = [length_class(n) for n in (1, 2, 15, 16, 17, 64, 256, 1000)]
    assert classes == ["L1s", "L2s", "L1s", "L16s", "L1", "L16", "L16", "L8"]
    assert len(length_classes(1000)) == len(length_classes(300)) == 10
    assert class_lengths("L16s", 1000) == (16,) and class_lengths("L4s", 300) == (4, 12)


def test_cases_of_a_palette_shape_share_the_scans_length_class(monkeypatch: pytest.MonkeyPatch) -> None:
    # a shape of a scanned family is one length class: its cases (and, in packed documents,
    # which a Mamba layer scans one by one, each document) compile the scan kernels once
    from tests.conformance.draw import length_class
    from tests.gpu.conftest import scan_lengths

    classes: dict[str, set] = {}
    for family, i, spec, group in _palette(monkeypatch, _scanned_families(), 60, 8):
        assert group == f"{family}-{i % 8}"
        classes.setdefault(group, set()).update(map(length_class, scan_lengths(family, spec)))
    assert len(classes) == 3 * 8 and all(len(c) == 1 for c in classes.values())


def test_every_length_class_and_odd_document_stays_in_the_palette(monkeypatch: pytest.MonkeyPatch) -> None:
    # the shapes take the classes in turn: each occurs in every run, as do T = 1, lengths at
    # chunk edges, and packed documents that are empty or one token long
    from tests.conformance.draw import length_class, length_classes
    from tests.gpu.conftest import scan_lengths

    for family, draw in _scanned_families().items():
        cases, cap = (500, 1000) if family == "selective_scan" else (100, 300)
        cases = _palette(monkeypatch, {family: draw}, cases, 64)
        lengths = {n for f, _, spec, _ in cases for n in scan_lengths(f, spec)}
        assert {length_class(n) for n in lengths} == set(length_classes(cap)), family
        assert {1, 2, 4, 8, 12, 16} <= lengths, family  # the classes of a single length
        edges = {n % 16 for n in lengths if n > 16}
        assert {0, 1, 15} <= edges, family  # chunk edges and non-multiples of 16 beyond 16
        if family != "selective_scan":
            docs = [spec["docs"] for _, _, spec, _ in cases if spec.get("docs")]
            sizes = {e - s for d in docs for s, e in itertools.pairwise(d)}
            assert {0, 1} <= sizes and max(sizes) > 16, family


def test_documents_of_a_length_class() -> None:
    from tests.conformance.draw import Draw, length_class, length_classes

    for cap in (40, 300):
        for cls in length_classes(cap):
            for seed in range(20):
                docs = Draw(seed).class_documents(cls, cap)
                lengths = [e - s for s, e in itertools.pairwise(docs)]
                assert docs[0] == 0 and min(lengths) >= 0 and docs[-1] <= cap
                assert {length_class(n) for n in lengths if n} == {cls}, (cls, docs)


def test_a_scan_shape_is_compiled_once_in_the_cost_model() -> None:
    # the queue's estimate of a group counts one compilation of the scan: its first case's
    from types import SimpleNamespace

    from tests.gpu.conftest import SCAN_COMPILE_SECONDS, unit_seconds

    def item(L: int) -> SimpleNamespace:
        spec = {"N": 256, "L": L}
        return SimpleNamespace(callspec=SimpleNamespace(params={"case": ("selective_scan", 0, spec)}))

    seconds = unit_seconds([item(17), item(63), item(129)])
    assert seconds[0] > SCAN_COMPILE_SECONDS[256] > 10 * max(seconds[1:])


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


def test_failures_outside_the_cases_have_a_row_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    # a case that raised counts under its family; any other failed test under "(other tests)"
    from collections import defaultdict
    from types import SimpleNamespace

    import tests.gpu.conftest as gpu

    rows = defaultdict(lambda: {"cases": 0, "failed": 0, "worst": None})
    monkeypatch.setattr(gpu, "_rows", rows)
    monkeypatch.delenv("MEMLAB_CONFORMANCE_TIMES", raising=False)
    for nodeid in ("tests/gpu/test_ops.py::test_op[l2norm-3-dtype=fp32]@l2norm-1", "t.py::test_x[attention]"):
        report = SimpleNamespace(when="call", failed=True, nodeid=nodeid, user_properties=[])
        gpu.pytest_runtest_logreport(report)
    failed = {key: row["failed"] for key, row in rows.items()}
    assert failed == {("l2norm", "?"): 1, ("(other tests)", "-"): 1}
