"""The GPU conformance suite: random cases drawn from the run's seed (printed in the header),
a summary table of cases, failures and the worst error per family and dtype at the end.

    make test-gpu                                  # = pytest -m gpu tests/gpu -n <cores>
    pytest -m gpu tests/gpu --conformance-seed 123 -k gdn_chunk-17   # one case again
"""

from __future__ import annotations

import gc
import heapq
import itertools
import json
import os
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.conformance.check import Measure
from tests.conformance.draw import Draw, case_seed, length_class, palette_seed, palette_slot

_rows: dict[tuple[str, str], dict] = defaultdict(lambda: {"cases": 0, "failed": 0, "worst": None})
GPU_DIR = Path(__file__).resolve().parent
# Families whose cases the selective scan runs over, and the spec's name for the length it
# scans: a palette shape of theirs includes the scan's length class (``Draw.scan_class``)
SCANNED = {"selective_scan": "L", "mamba": "T", "memmamba": "T"}


def run_seed() -> int:
    return int(os.environ["MEMLAB_TEST_SEED"])


def case_params(config: pytest.Config, families: dict, per_family: int) -> list:
    """pytest.param((family, index, spec)) for ``per_family`` cases of every family, drawn
    from the run's seed over ``--conformance-shapes`` compiled shapes per family (see
    ``palette_seed``); ids name the family, the index and the shape. The cases of one compiled
    shape form one xdist group, so that under ``--dist loadgroup`` one worker compiles each
    shape once instead of several workers racing to compile it (a scan's shape includes the
    length class its kernels are compiled for: see ``length_class``)."""
    shapes = config.getoption("conformance_shapes")
    params = []
    for name, family in families.items():
        for i in range(per_family):
            seed, slot = palette_seed(run_seed(), name, i, shapes), palette_slot(run_seed(), name, i, shapes)
            spec = family.draw(Draw(seed, case_seed=case_seed(run_seed(), name, i), slot=slot))
            shape = ",".join(f"{k}={v}" for k, v in spec.items()).replace(" ", "")
            marks = pytest.mark.xdist_group(f"{name}-{i % shapes}")
            params.append(pytest.param((name, i, spec), id=f"{name}-{i}-{shape}", marks=marks))
    return params


def scan_lengths(family: str, spec: dict) -> list[int]:
    """The lengths the selective scan runs over in a case of a ``SCANNED`` family: a Mamba
    layer (MemMamba's backbone too) scans each non-empty document alone."""
    docs = spec.get("docs") or [0, spec[SCANNED[family]]]
    return [e - s for s, e in itertools.pairwise(docs) if e > s]


# What a test costs, for the order the groups are queued in (pytest_collection_modifyitems).
# Seconds on an H100 shared by 16 workers, fitted to the times of a 500-case run: a case's
# family's (per case, per step of the case's length, per kernel variant it compiles; for the
# scanned families, beside the scan's own SCAN_COMPILE_SECONDS, once per shape: its cases share
# their length class).
CASE_SECONDS = {
    "gdn_chunk": (0.14, 2.3e-3, 16.0),
    "gdn_recurrent": (0.1, 4.7e-3, 0.5),
    "gdn_step": (0.22, 0.0, 0.5),
    "selective_scan": (0.1, 3.7e-4, 0.0),
    "state_update": (0.01, 0.0, 0.5),
    "causal_conv1d": (0.05, 4.4e-4, 3.0),
    "conv_update": (0.01, 0.0, 0.15),
    "l2norm": (0.05, 0.0, 0.2),
    "gated_rmsnorm": (0.07, 0.0, 0.5),
    "combine_routed": (0.25, 0.0, 0.5),
    "topk_route": (0.09, 0.0, 0.9),
    "mom": (0.45, 0.0, 7.5),
    "mamba": (0.5, 0.0, 2.0),
    "memmamba": (1.6, 0.0, 0.0),
}
# The scan's forward unrolls a channel's next_power_of_2(N) / 4 state slots up to 16 (and loops
# over more at run time): its compilation grows with them, from 1.5 s to these seconds (by
# next_power_of_2(N))
SCAN_COMPILE_SECONDS = {16: 2.0, 32: 3.0, 64: 8.0, 128: 3.0, 256: 3.0}
# the tests other than random cases, by function (3 s otherwise): medians of a 500-case run
TEST_SECONDS = {
    "test_logits_match_fla": 130.0,
    "test_first_layer_routes_every_token_alike": 150.0,
    "test_compiled_blocks_train_as_eager": 20.0,
    "test_gated_delta_rule": 6.0,
    "test_mom_published_head_shape": 7.0,
}


def _compiles(family: str, spec: dict) -> tuple[set, float]:
    """The kernel variants a case needs beyond its shape's, and seconds to compile each: a
    scan's length classes (one per shape: see ``Draw.scan_class``), the conv's T as Triton
    specialises it, and one per shape elsewhere."""
    seconds = CASE_SECONDS.get(family, (0.3, 0.0, 2.0))[2]
    if family in SCANNED:
        n = spec["N"] if family == "selective_scan" else spec["d_state"]
        seconds += SCAN_COMPILE_SECONDS.get(1 << (n - 1).bit_length(), 1.5)
        return set(map(length_class, scan_lengths(family, spec))), seconds
    if family == "combine_routed" and spec["S"] >= 64:  # the backward unrolls the 64 slots
        return {None}, 20.0
    if family == "causal_conv1d":
        return {(spec["T"] == 1, spec["T"] % 16 == 0)}, seconds
    return {None}, seconds


def unit_seconds(items: list[pytest.Item]) -> list[float]:
    """Estimated seconds of each test of one xdist group, in order: a case compiles the kernel
    variants its group's earlier cases did not."""
    seconds, compiled = [], set()
    for item in items:
        case = item.callspec.params.get("case") if hasattr(item, "callspec") else None
        if not isinstance(case, tuple):  # not a random case (test_interop's "case" is a name)
            seconds.append(TEST_SECONDS.get(item.originalname, 3.0))
            continue
        family, _, spec = case
        per_case, per_step, _ = CASE_SECONDS.get(family, (0.3, 0.0, 2.0))
        variants, compile_seconds = _compiles(family, spec)
        length = spec.get("L", spec.get("T", 0))
        seconds.append(per_case + per_step * length + compile_seconds * len(variants - compiled))
        compiled |= variants
    return seconds


def dispatch_order(units: list[list[float]], workers: int) -> list[int]:
    """The order to queue work units in (each its tests' estimated seconds) for ``workers``
    workers of ``--dist loadgroup``, which hands each worker a unit and then the next one in
    the queue whenever it has at most two tests pending: a worker on a one-test unit holds the
    next one already. Replaying that with the estimates, a worker that starts what it is handed
    within half the run's expected length gets the longest unit left (longest processing time
    first), any other the shortest, which it runs after its long one."""
    left = sorted(range(len(units)), key=lambda u: sum(units[u]))
    wait = sum(map(sum, units)) / workers / 2
    order: list[int] = []
    pending: list[deque] = [deque() for _ in range(workers)]

    def hand_out(w: int) -> None:
        if left:
            u = left.pop() if sum(pending[w]) <= wait else left.pop(0)
            order.append(u)
            pending[w].extend(units[u])

    for w in range(workers):
        hand_out(w)
    for w in range(workers):
        if len(pending[w]) <= 2:
            hand_out(w)
    ends = [(pending[w][0], w) for w in range(workers) if pending[w]]
    heapq.heapify(ends)
    while ends:
        now, w = heapq.heappop(ends)
        pending[w].popleft()
        if len(pending[w]) <= 2:
            hand_out(w)
        if pending[w]:
            heapq.heappush(ends, (now + pending[w][0], w))
    return order


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` (as ``make test-gpu`` runs), queue the tests under tests/gpu
    in ``dispatch_order`` of their groups, each group's tests together, so that no worker is
    still compiling a large shape once the others are done. pytest-xdist would otherwise hand
    out the groups largest first by number of tests, in collection order among equals (tests/
    conftest.py turns that off); every worker orders its collection alike."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers < 2 or not getattr(config.option, "loadgroup", False):  # a worker's --dist loadgroup
        return
    units: dict[str, list[pytest.Item]] = {}
    others = []
    for item in items:
        if GPU_DIR not in item.path.parents:
            others.append(item)
            continue
        mark = item.get_closest_marker("xdist_group")
        units.setdefault(mark.args[0] if mark else item.nodeid, []).append(item)
    groups = list(units.values())
    order = dispatch_order([unit_seconds(g) for g in groups], workers)
    items[:] = [item for u in order for item in groups[u]] + others


def pytest_collection_finish(session: pytest.Session) -> None:
    """The collected cases live until the run ends: out of the garbage collector's sight, each
    case's gc.collect() (``_release_memory``) does not walk them again (about 0.4 s a test with
    500 cases a family)."""
    gc.collect()
    gc.freeze()


def pytest_unconfigure(config: pytest.Config) -> None:
    gc.unfreeze()  # for the interpreter's own clean-up at exit


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
    # one line per case as it ends, so that a run cut short still says where time went; under
    # pytest-xdist by the controller alone, which logs every worker's reports again
    if times and "PYTEST_XDIST_WORKER" not in os.environ:
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
    if report.failed:  # a case failed before measuring (an exception), or another test failed
        case = "::test_op[" in report.nodeid or "::test_layer[" in report.nodeid
        family = report.nodeid.rsplit("[", 1)[-1].split("-", 1)[0] if case else "(other tests)"
        row = _rows[family, "?" if case else "-"]
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
