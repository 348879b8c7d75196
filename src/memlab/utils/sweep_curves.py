"""A sweep's learning curves: a metric against the training step, one line per row of its
summary (seeds averaged), read back from the jobs' TensorBoard events.

The protocol of a study (Zoology's MQAR, say) trains every arm until its accuracy stops rising;
``summary_curves.png`` shows whether it had, at the budget the sweep gave it. Records and rows
are those of ``memlab.utils.sweep_summary``; each record's ``dir`` is its job's folder.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from memlab.utils.run_names import arm_name, job_event_dir


def scalar_curve(event_dir: Path, tag: str) -> dict[int, float]:
    """{step: value} of the scalar ``tag`` in the event files of ``event_dir`` (a resumed run's
    later files win where steps repeat); empty where none logged it."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    curve: dict[int, float] = {}
    for events in sorted(event_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        accumulator = EventAccumulator(str(events), size_guidance={SCALARS: 0})
        accumulator.Reload()
        if tag in accumulator.Tags().get("scalars", []):
            curve.update((e.step, e.value) for e in accumulator.Scalars(tag))
    return curve


def mean_curve(curves: list[dict[int, float]]) -> tuple[list[int], list[float]]:
    """The steps any seed logged, each with the mean over the seeds that logged it (a seed that
    stopped early, at its threshold, leaves the later steps to the others)."""
    steps = sorted({s for c in curves for s in c})
    means = [statistics.fmean(c[s] for c in curves if s in c) for s in steps]
    return steps, means


def row_curves(records: list[dict[str, Any]], metric: str) -> dict[str, tuple[list[int], list[float]]]:
    """Each arm's seed-averaged curve of ``metric``, for the arms whose jobs logged two points or more."""
    per_arm: dict[str, list[dict[int, float]]] = {}
    for record in records:
        event_dir = job_event_dir(Path(record["dir"])) if "dir" in record else None
        curve = scalar_curve(event_dir, metric) if event_dir is not None else {}
        if curve:
            per_arm.setdefault(record["arm"], []).append(curve)
    curves = {arm: mean_curve(c) for arm, c in per_arm.items()}
    return {arm: curve for arm, curve in curves.items() if len(curve[0]) > 1}


def plot_curves(
    records: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    metric: str,
    group_by: list[str] | None,
    path: Path,
) -> bool:
    """``metric`` against the step, one line per row: one panel per value of the swept keys
    outside ``group_by`` (say one per head size, a line per arm), or a single panel without
    ``group_by``. False (and nothing written) where no job logged a curve."""
    curves = row_curves(records, metric)
    if not curves:
        return False
    swept = {r["arm"]: r["swept"] for r in records}
    panels: dict[str, list[str]] = {}
    for row in rows:
        if row["arm"] in curves:
            rest = {k: v for k, v in swept[row["arm"]].items() if group_by is not None and k not in group_by}
            panels.setdefault(arm_name(rest), []).append(row["arm"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.5 * nrows), sharey=True, squeeze=False)
    lr = {row["arm"]: row.get("lr") for row in rows}
    for ax, (title, arms) in zip(axes.flat, panels.items(), strict=False):
        for arm in arms:
            label = arm_name({k: v for k, v in swept[arm].items() if k in (group_by or ())}) or arm
            ax.plot(*curves[arm], marker=".", label=label + (f", lr {lr[arm]}" if lr[arm] else ""))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel(metric)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
