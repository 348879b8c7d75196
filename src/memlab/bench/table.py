"""What the suites share in reporting: a table cell, and the output of a suite run alone."""

from __future__ import annotations

from memlab.bench.stamp import write_results


def cell(value: float | None, fmt: str, missing: str = "-") -> str:
    """``value`` in format ``fmt``, or ``missing`` where there is none (not run, out of memory)."""
    return missing if value is None else format(value, fmt)


def report(suite: str, rows: list[dict], table: str, json_path: str | None) -> None:
    """A suite's own command line: print its table and, given a path, save its rows as
    ``scripts/bench.py --json`` does (stamped, under the suite's name)."""
    if json_path:
        write_results(json_path, {suite: rows})
    print(table)
