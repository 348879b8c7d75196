"""The short table of final metrics a run prints when it ends."""

from __future__ import annotations

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
