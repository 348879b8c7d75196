"""Benchmark: ``scripts/train.py`` (Lightning) against the plain training loop, tokens/s.

The same model, batch and length two ways, one after the other on one GPU: ``train_step``'s
plain PyTorch loop (fused AdamW, nothing else), timed by the wall clock over whole steps; and
``scripts/train.py`` as users run it on a local text corpus (``data=text_files``, bytes
tokens; ``trainer=gpu``: bf16-mixed, AdamW over weight-decay groups, gradient clipping, the
non-finite guard, the warmup-cosine schedule, the default callbacks, a CSV logger), once with
its default AdamW and once with ``optimizer.fused=true``. The Lightning figure is the median
of the throughput callback's per-step ``perf/tokens_per_s`` (wall time between step ends, data
loading included) after the first steps. Goal: Lightning within 5 % of the plain loop. Run by
``scripts/bench.py --suite lightning_step``, or alone by ``python -m memlab.bench.lightning_step``.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from memlab.bench import train_step
from memlab.bench.cli import parse_suite_args
from memlab.bench.table import cell, report, table_header, table_row, with_table

ROOT = Path(__file__).resolve().parents[3]
MODELS = ("transformer", "gdn")
SHAPE = (4, 2048)
# (train.py's optimizer, CUDA graphs, its overrides); the plain loop always runs fused AdamW
VARIANTS = (
    ("default", False, ()),
    ("fused", False, ("+optimizer.fused=true",)),
    ("fused", True, ("+optimizer.fused=true", "module.cuda_graph=true")),
)
STEPS, SKIPPED = 40, 10  # steps run; first steps left out of the median (compilation, warm-up)
WORDS = ("the", "of", "memory", "state", "token", "model", "layer", "recall", "router", "gate", "value")


def write_corpus(folder: Path, documents: int = 64, words: int = 4000, seed: int = 0) -> None:
    """``documents`` text files of random words (about 5 bytes each) in ``folder``."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(documents):
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        (folder / f"doc{i:03d}.txt").write_text(text + "\n")


def train_command(
    config: str, batch: int, length: int, corpus: Path, run_dir: Path, steps: int, extra: tuple[str, ...] = ()
) -> list[str]:
    """The ``scripts/train.py`` command line: model ``config`` on the corpus for ``steps`` steps,
    no validation or test, a CSV logger writing every step into ``run_dir``."""
    # the paper-shape models keep their own vocabulary; the data's only has to cover the bytes
    return [
        sys.executable, str(ROOT / "scripts" / "train.py"), f"model={config}", "data=text_files",
        f"data.files=[{corpus}/*.txt]", f"data.seq_len={length}", f"data.batch_size={batch}",
        "trainer=gpu", f"trainer.max_steps={steps}", "+trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=1", "test=false", "optimized_metric=null", "logger=csv",
        "callbacks.model_checkpoint.save_last=false", f"hydra.run.dir={run_dir}",
        f"paths.log_dir={run_dir.parent}", "extras.print_config=false", *extra,
    ]  # fmt: skip


def lightning_tokens_per_s(
    config: str,
    batch: int,
    length: int,
    steps: int = STEPS,
    skipped: int = SKIPPED,
    extra: tuple[str, ...] = (),
) -> float | None:
    """Median ``perf/tokens_per_s`` of a ``scripts/train.py`` run after its first ``skipped``
    steps; None where the run ran out of memory."""
    with tempfile.TemporaryDirectory(prefix="memlab-lightning-step-") as tmp:
        corpus, run_dir = Path(tmp) / "corpus", Path(tmp) / "logs" / "run"
        write_corpus(corpus)
        command = train_command(config, batch, length, corpus, run_dir, steps, extra)
        env = os.environ | {"MEMLAB_ROOT": str(ROOT)}
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0 and "out of memory" in done.stderr.lower():
            return None
        if done.returncode != 0:
            raise RuntimeError(f"scripts/train.py failed ({done.returncode}): {done.stderr[-2000:]}")
        with open(run_dir / "csv" / "metrics.csv") as file:
            rows = [r for r in csv.DictReader(file) if r.get("perf/tokens_per_s")]
    figures = [float(r["perf/tokens_per_s"]) for r in rows if int(r["step"]) >= skipped]
    if not figures:
        raise RuntimeError(f"scripts/train.py logged no perf/tokens_per_s after step {skipped}")
    return statistics.median(figures)


def plain_tokens_per_s(
    name: str, batch: int, length: int, graph: bool = False, steps: int = 20
) -> float | None:
    """Tokens per second of ``train_step``'s loop (``graph``: replayed from CUDA graphs), by the
    wall clock over ``steps`` whole steps after three of warm-up; None where it runs out of memory."""
    model = step = None
    try:
        model = train_step.build(name).cuda()
        step = train_step.train_step(model, batch, length, graph=graph)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        return steps * batch * length / (time.perf_counter() - start)
    except torch.OutOfMemoryError:
        return None
    finally:
        model = step = None
        torch.cuda.empty_cache()


def measure(models: tuple[str, ...] = MODELS, shape: tuple[int, int] = SHAPE) -> list[dict]:
    """One row per model and VARIANT: the plain loop's and scripts/train.py's tokens/s and
    their ratio, both eager or both replayed from CUDA graphs."""
    batch, length = shape
    rows = []
    for name in models:
        plain = {graph: plain_tokens_per_s(name, batch, length, graph) for graph in (False, True)}
        for optimizer, graph, extra in VARIANTS:
            lightning = lightning_tokens_per_s(train_step.MODELS[name], batch, length, extra=extra)
            row = {"model": name, "config": train_step.MODELS[name], "batch": batch, "T": length}
            row |= {"optimizer": optimizer, "cuda_graph": graph}
            row |= {"plain_tokens_per_s": plain[graph], "lightning_tokens_per_s": lightning}
            ratio = lightning / plain[graph] if plain[graph] and lightning else None
            rows.append(row | {"lightning_vs_plain": ratio})
    return rows


def run() -> tuple[list[dict], str]:
    """The suite as ``scripts/bench.py`` runs it."""
    return with_table(measure(), format_table)


def format_table(rows: list[dict]) -> str:
    lines = table_header(
        "model", "B × T", "train.py AdamW", "CUDA graphs", "plain loop tokens/s", "train.py tokens/s",
        "train.py / plain",
    )  # fmt: skip
    for r in rows:
        plain, lit = (r[k] and r[k] / 1e3 for k in ("plain_tokens_per_s", "lightning_tokens_per_s"))
        graphs = "yes" if r.get("cuda_graph") else "no"
        rates = f"{cell(plain, '.1f')}k", f"{cell(lit, '.1f')}k", cell(r["lightning_vs_plain"], ".3f")
        lines.append(table_row(r["config"], f"{r['batch']} × {r['T']}", r["optimizer"], graphs, *rates))
    lines.append(
        f"\nplain: train_step's loop (fused AdamW, no clipping), wall clock over 20 steps; "
        f"scripts/train.py: trainer=gpu on a local text corpus, its AdamW as configured or fused; "
        f"CUDA graphs: both replay forward and backward (train_step --modes graph, module.cuda_graph); "
        f"median of perf/tokens_per_s over steps {SKIPPED}-{STEPS - 1}. Goal: ≥ 0.95."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(train_step.MODELS), default=list(MODELS))
    parser.add_argument("--shape", type=train_step.parse_shape, default=SHAPE)
    args = parse_suite_args(parser)
    rows = measure(tuple(args.models), args.shape)
    report("lightning_step", rows, format_table(rows), args.json)


if __name__ == "__main__":
    main()
