"""Benchmark: reading a prompt into the decoding caches against the training forward.

For the paper-shape models of ``train_step`` (bf16 weights, batch 1, random tokens): the
training forward of T tokens under no_grad (its loss over every position through the chunked
cross-entropy, as training computes it, no caches) against ``prefill`` of the same tokens into
the decoding caches, in one pass and ``chunk`` tokens at a time. A chunked prefill carries the
recurrent states from chunk to chunk, so it needs the memory of one chunk, not of the prompt.
Reported: tokens/s of each (median wall clock of whole calls), the prefills' ratio to the
forward and each call's peak memory above the weights. Goals: prefill at no less than the
forward's tokens/s; the chunked prefill's peak the same at every T for the recurrent mixers.
Run by ``scripts/bench.py --suite prefill``, or alone by ``python -m memlab.bench.prefill``.
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
from memlab.models.chunked import prefill

MODELS = ("transformer", "gdn", "mom", "mamba", "memmamba")
LENGTHS = (8192, 32768)
CHUNK = 4096
REPEATS = 5
# how a prompt is read: the training forward, or prefill in one pass or in chunks of CHUNK
KINDS = ("forward", "prefill", "chunked")


def _reader(model: nn.Module, ids: torch.Tensor, kind: str, chunk: int) -> Callable[[], object]:
    """The call that reads ``ids`` [1, T] one way (see KINDS)."""
    if kind == "forward":
        return lambda: model(ids[:, :-1], targets=ids[:, 1:].flatten()).loss
    size = chunk if kind == "chunked" else None
    param = next(model.parameters())
    return lambda: prefill(model, ids, size, model.init_states(ids.shape[0], param.device, param.dtype))


def _measure_call(
    call: Callable[[], object], device: torch.device, repeats: int
) -> tuple[float, float | None]:
    """Median seconds of ``call()`` over ``repeats`` calls after one warm-up, and its peak
    memory above what was allocated before, in GiB (None off CUDA)."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.no_grad():
        call()  # warm-up: kernel selection, lazy buffers
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() if cuda else 0
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            sync()
            times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() - before) / 2**30 if cuda else None
    return statistics.median(times), peak


def measure(
    models: tuple[str, ...] = MODELS,
    lengths: tuple[int, ...] = LENGTHS,
    chunk: int = CHUNK,
    repeats: int = REPEATS,
    build: Callable[[str], nn.Module] = train_step.build,
    device: str = "cuda",
) -> list[dict]:
    """One row per (model, T, kind); tokens/s and peak None where the call ran out of memory.
    ``build(name)`` makes the model (fp32 weights; it runs in bf16)."""
    rows = []
    for name in models:
        model = build(name).to(device=device, dtype=torch.bfloat16).eval()
        model.prepare_decoding(torch.bfloat16)
        for length in lengths:
            ids = torch.randint(model.vocab_size, (1, length), device=device)
            forward = None
            for kind in KINDS:
                row = {"model": name, "config": train_step.MODELS.get(name, name), "T": length, "kind": kind}
                row["chunk"] = chunk if kind == "chunked" else None
                try:
                    seconds, peak = _measure_call(_reader(model, ids, kind, chunk), ids.device, repeats)
                    row |= {"tokens_per_s": length / seconds, "peak_gib": peak}
                except torch.OutOfMemoryError:
                    row |= {"tokens_per_s": None, "peak_gib": None}
                forward = row["tokens_per_s"] if kind == "forward" else forward
                ok = forward and row["tokens_per_s"]
                row["vs_forward"] = row["tokens_per_s"] / forward if ok else None
                rows.append(row)
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
        model = None
    return rows


def run() -> tuple[list[dict], str]:
    """The suite as ``scripts/bench.py`` runs it."""
    return with_table(measure(), format_table)


def format_table(rows: list[dict]) -> str:
    lines = table_header("model", "T", "read by", "tokens/s", "× forward", "peak GiB")
    for r in rows:
        read = f"prefill, chunks of {r['chunk']}" if r["kind"] == "chunked" else r["kind"]
        rate = "OOM" if r["tokens_per_s"] is None else f"{r['tokens_per_s'] / 1e3:.1f}k"
        figures = rate, cell(r["vs_forward"], ".2f"), cell(r["peak_gib"], ".2f")
        lines.append(table_row(r["config"], r["T"], read, *figures))
    lines.append(
        "\nbf16 weights, batch 1, no_grad; forward: the training forward with its chunked loss, no "
        "caches; prefill: the prompt into the decoding caches, last position's logits; median wall "
        "clock of whole calls; peak: above the weights. Goal: prefill ≥ 1.00 × forward."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(train_step.MODELS), default=list(MODELS))
    parser.add_argument("--lengths", nargs="+", type=positive_int, default=list(LENGTHS))
    parser.add_argument("--chunk", type=positive_int, default=CHUNK)
    args = parse_suite_args(parser)
    rows = measure(tuple(args.models), tuple(args.lengths), args.chunk)
    report("prefill", rows, format_table(rows), args.json)


if __name__ == "__main__":
    main()
