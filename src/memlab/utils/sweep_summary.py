"""Comparison table and plot of a finished sweep: one row per arm, seeds averaged.

Each job of a multirun leaves ``metrics.json`` and ``.hydra/overrides.yaml`` in its folder; the
summary groups jobs by their overrides minus ``seed`` and writes ``summary.csv``,
``summary.md`` and ``summary.png`` into the sweep folder. Arms are named as their TensorBoard
runs (``memlab.utils.run_names.arm_name``).

Two options serve the Zoology / MQAR protocol: ``best_lr`` keeps, of the arms that differ only
in ``optimizer.lr``, the one whose optimised metric is best (its lr in an ``lr`` column), and
``by_state_size`` also plots the metric against ``model/state_size`` in
``summary_state_size.png``, one line per architecture (``memlab.utils.sweep_axes``).
``summary_curves.png`` shows that metric over training (``memlab.utils.sweep_curves``).
The table and the plots also go to TensorBoard, as the sweep folder's run ``summary``
(``memlab.utils.sweep_tensorboard``).
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from memlab.utils.moved_keys import MOVED
from memlab.utils.run_names import arm_name
from memlab.utils.state_size import STATE_SIZE
from memlab.utils.sweep_axes import best_lr_records, plot_by_state_size
from memlab.utils.sweep_curves import plot_curves
from memlab.utils.sweep_tensorboard import write_tensorboard_summary

SEED_KEYS = ("seed",)
# what a record holds besides metrics
_META = ("arm", "seed", "job", "dir", "swept", "lr")
# passkey exact-match accuracy per context length: test/passkey_acc/len<n>
_PASSKEY_BY_LENGTH = "test/passkey_acc/len"


def collect(*sweep_dirs: Path) -> list[dict[str, Any]]:
    """One record per job of the sweep folders: {"arm", "seed", "job", "dir", "swept", metrics...};
    jobs without metrics are skipped.

    An arm is named by the overrides that tell its jobs apart from the others, seed excluded;
    ``swept`` maps their keys (moved keys under their new names) to their values. Several
    folders (a study run in slices, say one multirun per group of arms) are read as one sweep;
    their jobs are then named ``<folder>/<job>``.
    """
    jobs = []
    for sweep_dir in sweep_dirs:
        found = sorted(sweep_dir.glob("*/metrics.json"), key=lambda p: _job_number(p.parent.name))
        for metrics_file in found:
            job = metrics_file.parent
            overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
            name = job.name if len(sweep_dirs) == 1 else f"{sweep_dir.name}/{job.name}"
            jobs.append((name, job, overrides, json.loads(metrics_file.read_text())))
    common = set.intersection(*(set(o) for _, _, o, _ in jobs)) if jobs else set()
    records = []
    for name, job, overrides, metrics in jobs:
        seed = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] in SEED_KEYS), "")
        swept = dict(_key_value(o) for o in overrides if o not in common)
        swept = {k: v for k, v in swept.items() if k not in SEED_KEYS}
        arm = arm_name(swept) if swept else "(all jobs alike)"
        records.append({"arm": arm, "seed": seed, "job": name, "dir": str(job), "swept": swept, **metrics})
    return records


def _key_value(override: str) -> tuple[str, str]:
    """``+optimizer.lr=1e-3`` -> ("optimizer.lr", "1e-3"); a moved key by its new name."""
    key, _, value = override.partition("=")
    key = key.lstrip("+~")
    return MOVED.get(key, key), value


def _job_number(name: str) -> int:
    head = name.split("_", 1)[0]
    return int(head) if head.isdigit() else 0


def summarize(records: list[dict[str, Any]], metrics: list[str]) -> list[dict[str, Any]]:
    """Rows per arm in first-seen order: n seeds (and the lr that ``best_lr_records`` kept),
    then mean and std of each metric."""
    arms: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        arms.setdefault(record["arm"], []).append(record)
    rows = []
    for arm, runs in arms.items():
        row: dict[str, Any] = {"arm": arm, "seeds": len(runs)}
        if "lr" in runs[0]:
            row["lr"] = runs[0]["lr"]
        for name in metrics:
            values = [r[name] for r in runs if name in r]
            row[name] = statistics.fmean(values) if values else float("nan")
            row[f"{name} std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def default_metrics(records: list[dict[str, Any]], optimized: str | None) -> list[str]:
    """The optimised metric first, then accuracies (overall, per number of pairs, passkey per
    context length), then speed."""
    names = {k for r in records for k in r if k not in _META}
    by_pairs = sorted(
        (n for n in names if "acc_by_pairs/" in n and n.startswith("test/")),
        key=lambda n: int(n.rsplit("/", 1)[1]),
    )
    by_length = sorted(
        (n for n in names if n.startswith(_PASSKEY_BY_LENGTH)),
        key=lambda n: int(n[len(_PASSKEY_BY_LENGTH) :]),
    )
    ordered = [optimized, "val/acc", "test/acc", *by_pairs, *by_length, "perf/tokens_per_s", STATE_SIZE]
    out: list[str] = []
    for name in ordered:
        if name and name in names and name not in out:
            out.append(name)
    return out


def write_summary(
    sweep_dir: Path,
    optimized: str | None = None,
    best_lr: bool = False,
    by_state_size: bool = False,
    group_by: list[str] | None = None,
    sources: Sequence[Path] = (),
) -> list[dict[str, Any]]:
    """Write summary.csv/.md/.png into ``sweep_dir`` and TensorBoard (``<sweep_dir>/summary``),
    print the table, and return its rows. The jobs are those of ``sources`` where given (read
    as one sweep), else of ``sweep_dir``.

    best_lr: one row per arm with the best ``optimizer.lr`` by the first metric (``optimized``
    where the jobs logged it; see ``best_lr_records``). by_state_size: also
    ``summary_state_size.png``, that metric against the state size, one line per value of the
    ``group_by`` keys (default: the swept config groups, such as ``model``). Where the jobs
    logged the first metric during training, ``summary_curves.png`` plots it against the step.
    """
    folders = list(sources) or [sweep_dir]
    records = collect(*folders)
    if not records:
        return []
    metrics = default_metrics(records, optimized)
    if best_lr:
        records = best_lr_records(records, metrics[0])
    rows = summarize(records, metrics)
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    # the lr column where best_lr chose among swept lrs
    lr = ["lr"] if any("lr" in row for row in rows) else []
    header = ["arm", "seeds", *lr, *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["arm"], str(row["seeds"]), *(str(row.get("lr", "")) for _ in lr)]
        cells += [_cell(row, m) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
    _plot(rows, metrics, sweep_dir / "summary.png")
    plotted = by_state_size and plot_by_state_size(
        records, rows, metrics[0], group_by, sweep_dir / "summary_state_size.png"
    )
    if by_state_size and not plotted:
        where = ", ".join(map(str, folders))
        print(f"warning: no job of {where} logged {STATE_SIZE}: no state-size plot", file=sys.stderr)
    curves = plot_curves(records, rows, metrics[0], group_by, sweep_dir / "summary_curves.png")
    plots = [sweep_dir / "summary.png", *([sweep_dir / "summary_state_size.png"] if plotted else [])]
    plots += [sweep_dir / "summary_curves.png"] if curves else []
    write_tensorboard_summary(sweep_dir, "\n".join(lines) + "\n", plots)
    table = Table(title=f"sweep summary — {sweep_dir}")
    for name in header:
        table.add_column(name, justify="left" if name == "arm" else "right")
    for line in lines[2:]:
        table.add_row(*[c.strip() for c in line.strip("|").split("|")])
    Console(width=200).print(table)
    return rows


def _cell(row: dict[str, Any], metric: str) -> str:
    """``mean ± std``; the state size, the same for every seed, as a whole number."""
    if metric == STATE_SIZE:
        return f"{row[metric]:.0f}"
    return f"{row[metric]:.4f} ± {row[metric + ' std']:.4f}"


def _plot(rows: list[dict[str, Any]], metrics: list[str], path: Path) -> None:
    """Accuracy per number of pairs or per passkey context length (one line per arm) if
    available, else bars of the first metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_pairs = [m for m in metrics if "acc_by_pairs/" in m]
    by_length = [m for m in metrics if m.startswith(_PASSKEY_BY_LENGTH)]
    fig, ax = plt.subplots(figsize=(7, 4))
    if by_pairs or by_length:
        curve = by_pairs or by_length
        xs = [int(m.rsplit("/", 1)[1].removeprefix("len")) for m in curve]
        for row in rows:
            ax.errorbar(
                xs,
                [row[m] for m in curve],
                yerr=[row[m + " std"] for m in curve],
                marker="o",
                capsize=3,
                label=row["arm"],
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("number of key-value pairs" if by_pairs else "context length (tokens)")
        ax.set_ylabel("test accuracy" if by_pairs else "passkey exact match")
    else:
        name = metrics[0]
        ax.bar(range(len(rows)), [r[name] for r in rows], yerr=[r[name + " std"] for r in rows], capsize=3)
        ax.set_xticks(range(len(rows)), [r["arm"] for r in rows], rotation=20, ha="right", fontsize=7)
        ax.set_ylabel(name)
    if by_pairs or by_length:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, write and print the sweep's comparison table
    (``best_lr``, ``by_state_size``, ``group_by``: see ``write_summary``)."""

    def __init__(
        self, best_lr: bool = False, by_state_size: bool = False, group_by: list[str] | None = None
    ) -> None:
        self.best_lr, self.by_state_size = best_lr, by_state_size
        self.group_by = list(group_by) if group_by else None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_summary(
            Path(config.hydra.sweep.dir),
            config.get("optimized_metric"),
            best_lr=self.best_lr,
            by_state_size=self.by_state_size,
            group_by=self.group_by,
        )
