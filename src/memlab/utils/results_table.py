"""The short table of final metrics a run prints when it ends, and an evaluation's metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import rich
from rich.table import Table


def print_results_table(
    metrics: dict[str, float], title: str = "Results", caption: str | None = None
) -> None:
    """metrics: tag -> value; grouped by stage prefix (train/, val/, test/ …) in sorted order."""
    table = Table(title=title, caption=caption)
    table.add_column("metric", style="cyan")
    table.add_column("value", justify="right")
    for name in sorted(metrics):
        table.add_row(name, f"{metrics[name]:.4f}")
    rich.print(table)


def report_results(
    metrics: dict[str, float], output_dir: Path, title: str, shown: dict[str, float] | None = None
) -> None:
    """An evaluation's end: all ``metrics`` to ``output_dir``/metrics.json, and the table of
    ``shown`` (default: all of them) to the terminal."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    print_results_table(metrics if shown is None else shown, title=title, caption=str(output_dir))
