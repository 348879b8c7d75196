"""What the suites share in reporting: markdown table lines, a table cell, a suite's rows with
their table, and the output of a suite run alone."""

from __future__ import annotations

from collections.abc import Callable

from memlab.bench.stamp import write_results


def table_header(*columns: str) -> list[str]:
    """A markdown table's first two lines: the column names and the rule under them."""
    return [table_row(*columns), "|" + "---|" * len(columns)]


def table_row(*cells: object) -> str:
    """One markdown table line: ``cells`` as ``str`` gives them, between pipes."""
    return "| " + " | ".join(map(str, cells)) + " |"


def cell(value: float | None, fmt: str, missing: str = "-") -> str:
    """``value`` in format ``fmt``, or ``missing`` where there is none (not run, out of memory)."""
    return missing if value is None else format(value, fmt)


def with_table(rows: list[dict], format_table: Callable[[list[dict]], str]) -> tuple[list[dict], str]:
    """``rows`` and ``format_table(rows)``: what a suite's ``run`` returns."""
    return rows, format_table(rows)


def report(suite: str, rows: list[dict], table: str, json_path: str | None) -> None:
    """A suite's own command line: print its table and, given a path, save its rows as
    ``scripts/bench.py --json`` does (stamped, under the suite's name)."""
    if json_path:
        write_results(json_path, {suite: rows})
    print(table)
