"""What the suites share in reporting: a table cell, and the output of a suite run alone."""

from __future__ import annotations

import json


def cell(value: float | None, fmt: str, missing: str = "-") -> str:
    """``value`` in format ``fmt``, or ``missing`` where there is none (not run, out of memory)."""
    return missing if value is None else format(value, fmt)


def report(rows: list[dict], table: str, json_path: str | None) -> None:
    """A suite's own command line: print its table and, given a path, save its rows as JSON."""
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=1)
    print(table)
