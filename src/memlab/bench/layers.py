"""Benchmark: the MemMamba layer against the Mamba layer it is built on, forward+backward.

d_model 768, d_state 16, expand 2, MemMamba's default knobs (chunk_size 32, pool_size 50,
summary_dim 64, 4 heads of 64, gated fusion, learned note_scorer); fp32 weights under bf16
autocast (the training regime), 32768 tokens per call as 32768 / L sequences of length
L ∈ {2048, 8192}. Each call takes the gradients of the input and of every parameter.
Two MemMamba rows: layer 0 (cross-token attention only, what three of every four layers run at
cross_layer_period 4) and layer 3 (also cross-layer attention over the pools of the three
layers below, given as inputs whose gradients are taken too). Goal: MemMamba ≤ 1.5× Mamba.
Run by ``scripts/bench.py --suite layers``, or alone with other sizes by
``python -m memlab.bench.layers`` (``--json PATH`` saves the rows).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from memlab.bench.cli import parse_suite_args, positive_int
from memlab.bench.table import cell, report, table_header, table_row, with_table
from memlab.bench.timing import peak_memory_mib, time_ms
from memlab.models.layers import Mamba, MemMamba
from memlab.models.layers.memmamba import PoolView

D_MODEL, D_STATE, EXPAND, TOKENS = 768, 16, 2, 32768
BACKBONE = {"d_state": D_STATE, "expand": EXPAND}  # MemMamba's Mamba backbone
LENGTHS = (2048, 8192)
GOAL_RATIO = 1.5
# Layer 3 is the first that reads the pools below it at the default cross_layer_period 4.
CROSS_LAYER_IDX = 3
LAYERS = ("mamba", "memmamba", "memmamba_cross_layer")


def make_layer(name: str, d_model: int, memmamba_kwargs: dict[str, Any]) -> nn.Module:
    """One of LAYERS, fp32 weights; the MemMamba ones with ``memmamba_kwargs`` over the defaults."""
    if name == "mamba":
        return Mamba(d_model, d_state=D_STATE, expand=EXPAND)
    layer_idx = CROSS_LAYER_IDX if name == "memmamba_cross_layer" else 0
    return MemMamba(d_model, layer_idx, backbone=BACKBONE, **memmamba_kwargs)


def _layer_memory(layer: MemMamba, x: torch.Tensor, memmamba_kwargs: dict[str, Any]) -> list[PoolView]:
    """The pools the layers below ``layer`` offer it: one layer-0 MemMamba's view of x, repeated
    for each of them, with summaries as leaves that take gradients (they would in a stack)."""
    donor = MemMamba(x.shape[-1], 0, backbone=BACKBONE, **memmamba_kwargs).to(x.device)
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16):
        view = donor(x).memory
    return [
        dataclasses.replace(view, summary=view.summary.detach().clone().requires_grad_())
        for _ in range(layer.layer_idx)
    ]


def forward_backward(layer: nn.Module, x: torch.Tensor, extra: dict[str, Any]) -> Callable[[], object]:
    """A call running ``layer`` on x [B, L, D] (fp32) under bf16 autocast and taking the
    gradients of x, every parameter and the layer_memory summaries in ``extra``."""
    leaves = [x, *layer.parameters()]
    leaves += [view.summary for view in extra.get("layer_memory", [])]
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16):
        dy = torch.randn_like(layer(x, **extra).hidden)

    def call() -> object:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            y = layer(x, **extra).hidden
        return torch.autograd.grad(y, leaves, dy)

    return call


def _wall_ms(fn: Callable[[], object], reps: int = 3) -> float:
    """Median wall-clock milliseconds of ``fn()`` (CPU tensors; do_bench needs CUDA)."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(
    d_model: int = D_MODEL,
    lengths: tuple[int, ...] = LENGTHS,
    tokens: int = TOKENS,
    device: str = "cuda",
    memmamba_kwargs: dict[str, Any] | None = None,
) -> list[dict]:
    """One row per (L, layer): ms (do_bench median on CUDA, wall-clock median on CPU),
    tokens/s, peak MiB (None on CPU or out of memory: then ms is None too) and the ratio to
    Mamba at the same L."""
    dev = torch.device(device)
    kwargs = memmamba_kwargs or {}
    # Many calls (about 100 at L 2048): a layer whose host launches take nearly as long as its
    # GPU work is timed at the host's pace whenever the host stalls, and a median of the
    # handful of calls that fit in time_ms's default window moved by up to 40 % between runs.
    timer = (lambda call: time_ms(call, warmup_ms=200, rep_ms=1500)) if dev.type == "cuda" else _wall_ms
    rows = []
    for L in lengths:
        batch = max(1, tokens // L)
        gen = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(batch, L, d_model, generator=gen, device=dev).requires_grad_()
        mamba_ms = None
        for name in LAYERS:
            torch.manual_seed(0)
            try:
                layer = make_layer(name, d_model, kwargs).to(dev)
                reads = getattr(layer, "reads_layer_memory", False)
                extra = {"layer_memory": _layer_memory(layer, x, kwargs)} if reads else {}
                call = forward_backward(layer, x, extra)
                ms = timer(call)
                peak = peak_memory_mib(call) if dev.type == "cuda" else None
            except torch.OutOfMemoryError:
                ms = peak = None
            finally:
                layer = extra = call = None  # the next layer gets the memory back
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            if name == "mamba":
                mamba_ms = ms
            print(f"layers L={L} {name}: {ms} ms", flush=True)
            rows.append(
                {
                    "layer": name,
                    "d_model": d_model,
                    "L": L,
                    "batch": batch,
                    "ms": ms,
                    "tokens_per_s": batch * L / ms * 1e3 if ms else None,
                    "peak_mib": peak,
                    "vs_mamba": ms / mamba_ms if ms and mamba_ms else None,
                }
            )
    return rows


def run() -> tuple[list[dict], str]:
    """The suite as ``scripts/bench.py`` runs it: d_model 768, L 2048 and 8192."""
    return with_table(measure(), format_table)


def format_table(rows: list[dict]) -> str:
    """Markdown table of ``measure``'s rows and the goal's verdict per L."""

    lines = table_header("layer", "L", "batch", "fwd+bwd ms", "Mtok/s", "peak MiB", "× Mamba")
    for r in rows:
        tok = None if r["tokens_per_s"] is None else r["tokens_per_s"] / 1e6
        ms, tok = cell(r["ms"], ".2f", "OOM"), cell(tok, ".2f", "OOM")
        peak, ratio = cell(r["peak_mib"], ".0f"), cell(r["vs_mamba"], ".2f")
        lines.append(table_row(r["layer"], r["L"], r["batch"], ms, tok, peak, ratio))
    d_model = rows[0]["d_model"] if rows else D_MODEL
    lines.append(
        f"\nd_model {d_model}, d_state {D_STATE}, expand {EXPAND}, MemMamba defaults; fp32 weights, "
        "bf16 autocast; gradients of the input and all parameters; ms: median of do_bench on CUDA "
        "(L2 flushed), of wall-clock on CPU."
    )
    for r in rows:
        if r["layer"] != "mamba" and r["vs_mamba"] is not None:
            verdict = "met" if r["vs_mamba"] <= GOAL_RATIO else "missed"
            lines.append(
                f"goal {r['layer']} L={r['L']} <= {GOAL_RATIO}x Mamba: {r['vs_mamba']:.2f}x, {verdict}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=positive_int, default=D_MODEL)
    parser.add_argument("--lengths", nargs="+", type=positive_int, default=list(LENGTHS))
    parser.add_argument(
        "--tokens", type=positive_int, default=TOKENS, help="tokens per call (batch = tokens // L)"
    )
    args = parse_suite_args(parser)
    rows = measure(args.d_model, tuple(args.lengths), args.tokens)
    report("layers", rows, format_table(rows), args.json)


if __name__ == "__main__":
    main()
