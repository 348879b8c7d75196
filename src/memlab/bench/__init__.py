"""GPU benchmark suites, run by ``scripts/bench.py`` (``make bench``).

A suite is a function ``run() -> (rows, table)`` that times its ops on the current CUDA
device: ``rows`` are JSON-serialisable dicts (written by ``--json``), ``table`` is the text
to print. Add one by importing its module here and naming it in SUITES.
"""

from __future__ import annotations

from collections.abc import Callable

from memlab.bench import gated_delta_rule, selective_scan

SUITES: dict[str, Callable[[], tuple[list[dict], str]]] = {
    "gated_delta_rule": gated_delta_rule.run,
    "selective_scan": selective_scan.run,
}
