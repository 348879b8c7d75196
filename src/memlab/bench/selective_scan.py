"""Benchmark: the Triton selective scan against its PyTorch twin on one GPU and, when it is
importable, mamba-ssm's CUDA kernel (its extension module ``selective_scan_cuda``), in one process.

Mamba-1 shapes (batch 8, dim 1536, N 16, L 2048 and 8192; D, z, delta_bias, softplus on),
forward (inference: no gradients, nothing stored for a backward) and forward+backward.
Each forward row also gets a floor: the bytes the scan cannot avoid moving (u, delta, B, C, z
read once, y written once) over the device-to-device copy bandwidth measured in the same
process; and the time of the forward's exponentials alone (``exp_floor``), with the percentage
of the floor a forward would reach if it took no longer than they do. Run by ``scripts/bench.py
--suite selective_scan``, or alone (any dtypes and lengths) with ``python -m
memlab.bench.selective_scan`` (``--json PATH`` saves the rows).

mamba-ssm ships its kernel as source: ``pip install mamba-ssm --no-build-isolation`` compiles
it against the installed torch (needs nvcc); its forward also stores the per-chunk states its
backward reads, and its forward+backward here is its own ``fwd`` then ``bwd``, as its autograd
Function calls them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from memlab.bench.cli import parse_suite_args, positive_int
from memlab.bench.table import cell, report, table_header, table_row, with_table
from memlab.bench.timing import time_ms
from memlab.kernels.selective_scan.torch_scan import selective_scan_torch

BATCH, DIM, N = 8, 1536, 16
LENGTHS = (2048, 8192)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def copy_bandwidth_gbs(n_bytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s, counting the bytes read and written."""
    src = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src))
    return 2 * n_bytes / ms / 1e6


def make_inputs(L: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Mamba-like inputs: activations in ``dtype``, parameters (A, D, delta_bias) in fp32."""
    gen = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape: int, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float32).to(dt)

    A = -torch.arange(1, N + 1, device="cuda", dtype=torch.float32).repeat(DIM, 1)
    return {
        "u": randn(BATCH, DIM, L),
        "delta": randn(BATCH, DIM, L),
        "A": A,
        "B": randn(BATCH, N, L),
        "C": randn(BATCH, N, L),
        "D": randn(DIM, dt=torch.float32),
        "z": randn(BATCH, DIM, L),
        "delta_bias": randn(DIM, dt=torch.float32) - 4.0,
    }


def _forward(scan: Callable, x: dict[str, torch.Tensor]) -> Callable[[], object]:
    def fn() -> object:
        with torch.no_grad():
            return scan(**x, delta_softplus=True)

    return fn


def _forward_backward(scan: Callable, x: dict[str, torch.Tensor]) -> Callable[[], object]:
    leaves = {k: v.detach().requires_grad_() for k, v in x.items()}
    dy = torch.randn_like(leaves["u"])

    def fn() -> object:
        y = scan(**leaves, delta_softplus=True)
        return torch.autograd.grad(y, list(leaves.values()), dy)

    return fn


def _mamba_ssm() -> object | None:
    """mamba-ssm's compiled extension, or None when it is not installed."""
    try:
        import selective_scan_cuda
    except ImportError:
        return None
    return selective_scan_cuda


def _mamba_args(x: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Its positional arguments; its extension takes B and C as [batch, groups, N, L] only."""
    grouped = {k: x[k].unsqueeze(1) if x[k].dim() == 3 else x[k] for k in ("B", "C")}
    return [grouped.get(k, x[k]) for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]


def _mamba_forward(ext: object, x: dict[str, torch.Tensor]) -> Callable[[], object]:
    args = _mamba_args(x)

    def fn() -> object:
        return ext.fwd(*args, True)

    return fn


def _mamba_forward_backward(ext: object, x: dict[str, torch.Tensor]) -> Callable[[], object]:
    args = _mamba_args(x)
    dy = torch.randn_like(x["u"])

    def fn() -> object:
        out, states, *_ = ext.fwd(*args, True)
        return ext.bwd(*args, dy, states, out, None, True, False)

    return fn


def _measure(make: Callable, scan: Callable, x: dict[str, torch.Tensor]) -> float | None:
    """Milliseconds of ``make(scan, x)``'s function, or None when it does not fit in GPU memory."""
    try:
        return time_ms(make(scan, x))
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        torch.cuda.empty_cache()


def measure(dtypes: tuple[str, ...] = ("bf16",), lengths: tuple[int, ...] = LENGTHS) -> list[dict]:
    """One row per (dtype, L, op): ours and twin milliseconds, their ratio, mamba-ssm's
    milliseconds and ours over them (None without mamba-ssm), and for the forward the
    bandwidth floor, ours as a percentage of it, the exponentials' time and the percentage of
    the floor a forward that fast would reach."""
    from memlab.bench.exp_floor import exponentials_ms
    from memlab.kernels.selective_scan.triton_scan import selective_scan_triton

    mamba = _mamba_ssm()
    bandwidth = copy_bandwidth_gbs()
    rows = []
    for name in dtypes:
        for L in lengths:
            x = make_inputs(L, DTYPES[name])
            io_bytes = sum(x[k].numel() * x[k].element_size() for k in ("u", "delta", "B", "C", "z"))
            io_bytes += x["u"].numel() * x["u"].element_size()  # y
            ops = (("fwd", _forward, _mamba_forward), ("fwd+bwd", _forward_backward, _mamba_forward_backward))
            for op, make, make_mamba in ops:
                ours = _measure(make, selective_scan_triton, x)
                twin = _measure(make, selective_scan_torch, x)
                ref = _measure(make_mamba, mamba, x) if mamba is not None else None
                row = {
                    "op": op,
                    "dtype": name,
                    "batch": BATCH,
                    "dim": DIM,
                    "N": N,
                    "L": L,
                    "ours_ms": ours,
                    "twin_ms": twin,
                    "speedup": twin / ours if ours and twin else None,
                    "mamba_ssm_ms": ref,
                    "vs_mamba_ssm": ours / ref if ours and ref else None,
                    "copy_gbs": bandwidth,
                }
                if op == "fwd":
                    floor = io_bytes / bandwidth / 1e6
                    exp_ms = exponentials_ms(x["delta"], x["A"])
                    row.update(
                        floor_ms=floor,
                        pct_of_floor=100 * floor / ours if ours else None,
                        exp_ms=exp_ms,
                        pct_of_floor_if_exp_bound=100 * floor / exp_ms,
                    )
                rows.append(row)
    return rows


def run() -> tuple[list[dict], str]:
    """The suite as ``scripts/bench.py`` runs it: bf16 and fp32, both lengths."""
    return with_table(measure(("bf16", "fp32")), format_table)


def format_table(rows: list[dict]) -> str:
    """Markdown table of ``run``'s rows."""

    lines = table_header(
        "op", "dtype", "L", "ours ms", "twin ms", "speedup", "mamba-ssm ms", "ours / mamba-ssm", "floor ms",
        "% of floor", "exponentials alone ms", "% of floor at that time",
    )  # fmt: skip
    for r in rows:
        floor = ("-",) * 4
        if "floor_ms" in r:
            pct, exp_pct = cell(r["pct_of_floor"], ".0f", "OOM"), f"{r['pct_of_floor_if_exp_bound']:.0f}"
            floor = (f"{r['floor_ms']:.3f}", pct, f"{r['exp_ms']:.3f}", exp_pct)
        ours = cell(r["ours_ms"], ".3f", "OOM"), cell(r["twin_ms"], ".2f", "OOM")
        speedup = cell(r["speedup"], ".1f", "OOM")
        theirs = cell(r["mamba_ssm_ms"], ".3f", "-"), cell(r["vs_mamba_ssm"], ".2f", "-")
        lines.append(table_row(r["op"], r["dtype"], r["L"], *ours, speedup, *theirs, *floor))
    bw = rows[0]["copy_gbs"] if rows else float("nan")
    lines.append(f"\nbatch {BATCH}, dim {DIM}, N {N}; D, z, delta_bias, softplus on; copy {bw:.0f} GB/s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["bf16"], choices=sorted(DTYPES))
    parser.add_argument("--lengths", nargs="+", type=positive_int, default=list(LENGTHS))
    args = parse_suite_args(parser)
    rows = measure(tuple(args.dtypes), tuple(args.lengths))
    report("selective_scan", rows, format_table(rows), args.json)


if __name__ == "__main__":
    main()
