"""Benchmark: training steps/s of the MQAR study's small models, eager against CUDA graphs.

The arms of ``experiment=mqar_state_study`` (2 layers, d_model 128; ``configs/arm/``) at one
head size, at the study's batch and sequence length, trained by ``train_step``'s plain loop
(bf16 autocast, fused AdamW): steps/s with every kernel launched from Python, and with the
forward and backward replayed from CUDA graphs (what ``module.cuda_graph=auto``, which the MQAR
experiments set, does in training). A model this small is bound by the host launching its
kernels, not by the GPU; the graph's speed-up says how much. Run by ``scripts/bench.py --suite
small_step``, or alone by ``python -m memlab.bench.small_step [--arms gdn mom4] [--head-size 32]``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from memlab.bench import train_step
from memlab.bench.cli import parse_suite_args, positive_int
from memlab.bench.table import cell, report, table_header, table_row, with_table
from memlab.models.captured_step import NotCapturable

ARMS = ("mom4", "mom8", "gdn", "mamba", "memmamba", "transformer")
HEAD_SIZE = 64
MODES = ("eager", "graph")
STEPS = 50


def study_model(arm: str, head_size: int) -> tuple[nn.Module, int, int]:
    """The study's model for ``arm`` at ``head_size`` (fp32 weights, seeded), with the study's
    batch size and (first training segment's) sequence length."""
    from hydra.utils import instantiate

    torch.manual_seed(0)
    cfg = train_step.train_config(["experiment=mqar_state_study", f"arm={arm}", f"head_size={head_size}"])
    return instantiate(cfg.model), cfg.data.batch_size, cfg.data.train_segments[0].seq_len


def steps_per_s(step: Callable[[], None], steps: int, sync: Callable[[], None]) -> float:
    """Steps per second of ``step()`` by the wall clock: the median over five runs of ``steps``
    // 5 steps, after three untimed ones (compilation, capture, optimizer state)."""
    for _ in range(3):
        step()
    sync()
    runs, per_run = [], max(steps // 5, 1)
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(per_run):
            step()
        sync()
        runs.append(per_run / (time.perf_counter() - start))
    return statistics.median(runs)


def measure(
    arms: tuple[str, ...] = ARMS,
    head_size: int = HEAD_SIZE,
    modes: tuple[str, ...] = MODES,
    steps: int = STEPS,
    device: str = "cuda",
    shape: tuple[int, int] | None = None,
) -> list[dict]:
    """One row per (arm, mode): steps/s and ms per step (None where the step cannot be captured),
    and each graph row's speed-up over eager. ``shape`` (batch, length) replaces the study's."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    for arm in arms:
        model, batch, length = study_model(arm, head_size)
        batch, length = shape or (batch, length)
        model = model.to(device)
        eager = None
        for mode in modes:
            row = {"arm": arm, "head_size": head_size, "batch": batch, "T": length, "mode": mode}
            try:
                rate = steps_per_s(
                    train_step.train_step(model, batch, length, graph=mode == "graph"), steps, sync
                )
            except NotCapturable as error:
                rate = None
                row["note"] = str(error)
            eager = rate if mode == "eager" else eager
            row |= {"steps_per_s": rate, "ms": rate and 1e3 / rate}
            row["vs_eager"] = rate / eager if rate and eager and mode != "eager" else None
            rows.append(row)
            print(f"small_step {arm} {mode}: {rate} steps/s", flush=True)
        model = None
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def run() -> tuple[list[dict], str]:
    """The suite as ``scripts/bench.py`` runs it."""
    return with_table(measure(), format_table)


def format_table(rows: list[dict]) -> str:
    lines = table_header("arm", "head_size", "B × T", "mode", "steps/s", "ms / step", "× eager")
    for r in rows:
        rates = (
            cell(r["steps_per_s"], ".1f", "not capturable"),
            cell(r["ms"], ".2f"),
            cell(r["vs_eager"], ".2f"),
        )
        lines.append(table_row(r["arm"], r["head_size"], f"{r['batch']} × {r['T']}", r["mode"], *rates))
    lines.append(
        "\nexperiment=mqar_state_study's models (2 layers, d_model 128), bf16 autocast over fp32 "
        "weights, fused AdamW; graph: forward and backward replayed from CUDA graphs; median of "
        "five wall-clock runs of whole steps."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--head-size", type=positive_int, default=HEAD_SIZE)
    parser.add_argument("--steps", type=positive_int, default=STEPS)
    args = parse_suite_args(parser)
    rows = measure(tuple(args.arms), args.head_size, steps=args.steps)
    report("small_step", rows, format_table(rows), args.json)


if __name__ == "__main__":
    main()
