"""The GPU conformance suite: random cases drawn from the run's seed (printed in the header),
a summary table of cases, failures and the worst error per family and dtype at the end.

    make test-gpu                                  # = pytest -m gpu tests/gpu -n <cores>
    pytest -m gpu tests/gpu --conformance-seed 123 -k gdn_chunk-17   # one case again
"""

from __future__ import annotations

import gc
import json
import os
from collections import defaultdict
from collections.abc import Callable

import pytest
import torch

from tests.conformance.check import Measure
from tests.conformance.draw import Draw, case_seed, palette_seed

_rows: dict[tuple[str, str], dict] = defaultdict(lambda: {"cases": 0, "failed": 0, "worst": None})


def run_seed() -> int:
    return int(os.environ["MEMLAB_TEST_SEED"])


def case_params(config: pytest.Config, families: dict, per_family: int) -> list:
    """pytest.param((family, index, spec)) for ``per_family`` cases of every family, drawn
    from the run's seed over ``--conformance-shapes`` compiled shapes per family (see
    ``palette_seed``); ids name the family, the index and the shape. The cases of one compiled
    shape form one xdist group, so that under ``--dist loadgroup`` one worker compiles each
    shape once instead of several workers racing to compile it."""
    shapes = config.getoption("conformance_shapes")
    params = []
    for name, family in families.items():
        for i in range(per_family):
            draw = Draw(palette_seed(run_seed(), name, i, shapes), case_seed=case_seed(run_seed(), name, i))
            spec = family.draw(draw)
            shape = ",".join(f"{k}={v}" for k, v in spec.items()).replace(" ", "")
            group = pytest.mark.xdist_group(f"{name}-{i % shapes}")
            params.append(pytest.param((name, i, spec), id=f"{name}-{i}-{shape}", marks=group))
    return params


@pytest.fixture(autouse=True)
def _release_memory():
    """Hand a case's cached GPU memory back after it: up to 16 workers share one GPU, and one
    worker's allocator keeping a large case's blocks starves the others into out-of-memory."""
    yield
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[[str, dict, list[Measure]], None]:
    """Attach a case's family, dtype and measures to its report, for the summary table."""

    def attach(family: str, spec: dict, measures: list[Measure]) -> None:
        worst = max(measures, key=lambda m: m.ratio)
        entry = {"family": family, "dtype": spec.get("dtype", "-"), "worst": str(worst), "ratio": worst.ratio}
        request.node.user_properties.append(("conformance", json.dumps(entry)))

    return attach


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> None:
    """A CUDA error (an illegal access, say) leaves the process's context unusable: end the
    worker, so that pytest-xdist replaces it and later cases run on a fresh context."""
    if (
        call.excinfo is not None
        and "CUDA error" in str(call.excinfo.value)
        and "PYTEST_XDIST_WORKER" in os.environ
    ):
        print(f"\n{item.nodeid}: {call.excinfo.value}", flush=True)
        os._exit(3)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" and not (report.when == "setup" and report.failed):
        return
    times = os.environ.get("MEMLAB_CONFORMANCE_TIMES")
    if times:  # one line per case as it ends, so that a run cut short still says where time went
        with open(times, "a") as f:
            why = report.longreprtext.strip().splitlines()[-1:] if report.failed else []
            f.write(" ".join([f"{report.duration:.2f}", report.outcome, report.nodeid, *why]) + "\n")
    for key, value in report.user_properties:
        if key == "conformance":
            entry = json.loads(value)
            row = _rows[entry["family"], entry["dtype"]]
            row["cases"] += 1
            row["failed"] += report.failed
            if row["worst"] is None or entry["ratio"] > row["worst"][0]:
                row["worst"] = (entry["ratio"], entry["worst"])
            return
    if report.failed:  # failed before measuring (an exception): count it under its family
        family = report.nodeid.rsplit("[", 1)[-1].split("-", 1)[0]
        row = _rows[family, "?"]
        row["cases"] += 1
        row["failed"] += 1


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _rows:
        return
    lines = ["| family | dtype | cases | failed | worst (error / bound) |", "|---|---|---|---|---|"]
    for (family, dtype), row in sorted(_rows.items()):
        worst = f"{row['worst'][1]} = {row['worst'][0]:.2f} of bound" if row["worst"] else "-"
        lines.append(f"| {family} | {dtype} | {row['cases']} | {row['failed']} | {worst} |")
    terminalreporter.write_sep("=", f"conformance summary, seed {run_seed()}")
    terminalreporter.write_line("\n".join(lines))
    path = os.environ.get("MEMLAB_CONFORMANCE_JSON")
    if path:
        rows = [{"family": f, "dtype": d, **r} for (f, d), r in sorted(_rows.items())]
        with open(path, "w") as f:
            json.dump({"seed": run_seed(), "rows": rows}, f, indent=1)
