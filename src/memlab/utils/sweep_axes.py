"""What the Zoology / MQAR protocol asks of a sweep summary: each arm at its best learning rate,
and a metric against the recurrent state size.

Records and rows are those of ``memlab.utils.sweep_summary`` (``collect`` and ``summarize``).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from memlab.utils.run_names import arm_name
from memlab.utils.state_size import STATE_SIZE

LR_KEY = "optimizer.lr"
# metrics where lower is better (cross-entropy, perplexity); every other metric is maximised
_LOWER_IS_BETTER = ("loss", "ppl", "perplexity")


def lower_is_better(metric: str) -> bool:
    """``val/loss``, ``test/ppl``: lower is better; accuracies and the rest: higher."""
    return any(word in metric.rsplit("/", 1)[-1] for word in _LOWER_IS_BETTER)


def best_lr_records(records: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Of each group of arms that differ only in ``optimizer.lr``, the records of the lr whose
    mean ``metric`` over seeds is best (a job without it, or NaN, counts as worst). The kept
    records are renamed to the group's arm and carry the winning lr as ``lr``; groups keep
    their first-seen order. Records of a sweep that does not vary the lr come back unchanged."""
    if not any(LR_KEY in r["swept"] for r in records):
        return records
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for record in records:
        rest = {k: v for k, v in record["swept"].items() if k != LR_KEY}
        name = arm_name(rest) if rest else "(all jobs alike)"
        groups.setdefault(name, {}).setdefault(record["swept"].get(LR_KEY, ""), []).append(record)
    sign = -1.0 if lower_is_better(metric) else 1.0
    kept = []
    for name, by_lr in groups.items():
        lr, runs = max(by_lr.items(), key=lambda item: _score(item[1], metric, sign))
        for record in runs:
            swept = {k: v for k, v in record["swept"].items() if k != LR_KEY}
            kept.append({**record, "arm": name, "swept": swept, "lr": lr})
    return kept


def _score(runs: list[dict[str, Any]], metric: str, sign: float) -> float:
    values = [r.get(metric, math.nan) for r in runs]
    mean = statistics.fmean(values) if values else math.nan
    return -math.inf if math.isnan(mean) else sign * mean


def state_size_lines(
    records: list[dict[str, Any]], rows: list[dict[str, Any]], group_by: list[str] | None
) -> dict[str, list[dict[str, Any]]]:
    """The rows with a state size, by line: the arm's values of the ``group_by`` keys (default:
    the swept config groups, keys without a dot such as ``model``), each ordered by state size."""
    swept = {r["arm"]: r["swept"] for r in records}
    if group_by is None:
        group_by = sorted({k for s in swept.values() for k in s if "." not in k})
    lines: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if math.isnan(row.get(STATE_SIZE, math.nan)):
            continue
        label = arm_name({k: v for k, v in swept[row["arm"]].items() if k in group_by})
        lines.setdefault(label or "all arms", []).append(row)
    return {label: sorted(points, key=lambda r: r[STATE_SIZE]) for label, points in lines.items()}


def plot_by_state_size(
    records: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    metric: str,
    group_by: list[str] | None,
    path: Path,
) -> bool:
    """``metric`` (mean ± std over seeds) against the state size, one line per
    ``state_size_lines``; False (and nothing written) where no row has a state size."""
    lines = state_size_lines(records, rows, group_by)
    if not lines:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, points in lines.items():
        ax.errorbar(
            [r[STATE_SIZE] for r in points],
            [r[metric] for r in points],
            yerr=[r[metric + " std"] for r in points],
            marker="o",
            capsize=3,
            label=label,
        )
    ax.set_xscale("log")
    ax.set_xlabel("state size (elements per sequence)")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
