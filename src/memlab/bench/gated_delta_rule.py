"""Benchmark: the chunked gated delta rule, Triton kernels against the PyTorch twin and, when
it is importable, flash-linear-attention's ``chunk_gated_delta_rule``, in one process.

H = 16 heads, K = V = 128, bf16 q/k/v (fp32 g, bf16 beta), 32768 tokens per call as
32768 / T sequences of length T, T ∈ {2048, 8192, 32768}; q and k L2-normalised beforehand.
Forward runs under no_grad; forward+backward takes the gradients of every input.
flash-linear-attention 0.6.0 refuses its gated backward on Hopper with Triton < 3.7.1 (a
compiler bug gives wrong gradients there); its guard is switched off here for timing only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from memlab.bench.table import cell, table_header, table_row
from memlab.bench.timing import time_and_peak, time_ms

HEADS, DIM, TOKENS = 16, 128, 32768
LENGTHS = (2048, 8192, 32768)
# the twin's chunk loop at T = 32768 takes seconds per call; it is timed up to this length
TWIN_MAX_T = 8192
CHUNK = 64
# The forward floor assumes an H100 SXM: 3.0 TB/s of HBM, 790 TFLOP/s of dense bf16.
HBM_BYTES_PER_S, BF16_FLOP_PER_S = 3.0e12, 790e12
# Goals for this shape at T = 2048, from flash-linear-attention 0.6.0 measured on an H100.
GOAL_FWD_MS, GOAL_FWD_BWD_MS = 1.03, 4.34


def forward_floor_ms() -> tuple[float, float, float]:
    """(floor ms, GB moved, GFLOP) of one forward call: q, k, v, g, beta read once and o
    written once; the chunked algorithm's matmuls (Kᵀ-products, UT transform, w, u, the
    state pass and the output)."""
    elements = TOKENS * HEADS
    n_bytes = elements * (4 * DIM * 2 + 4 + 2)
    K = V = DIM
    flop_per_token = 2 * CHUNK * K * 3 + 2 * CHUNK * V * 2 + 2 * K * V * 3
    flops = elements * flop_per_token
    return max(n_bytes / HBM_BYTES_PER_S, flops / BF16_FLOP_PER_S) * 1e3, n_bytes / 1e9, flops / 1e9


def _fla() -> Callable | None:
    """flash-linear-attention's chunk_gated_delta_rule with its Hopper guard off, or None."""
    try:
        import fla.ops.common.chunk_o as fla_chunk_o
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except ImportError:
        return None
    fla_chunk_o.TRITON_ABOVE_3_7_1 = True  # timing only: its gated backward is wrong on Triton 3.6
    return chunk_gated_delta_rule


def implementations() -> dict[str, Callable]:
    from memlab.kernels.gated_delta_rule.torch_chunk import chunk_gated_delta_rule_torch
    from memlab.kernels.gated_delta_rule.triton_chunk import chunk_gated_delta_rule_triton

    impls = {"ours": chunk_gated_delta_rule_triton, "twin": chunk_gated_delta_rule_torch}
    fla = _fla()
    if fla is not None:
        impls["fla"] = fla
    return impls


def make_inputs(T: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    shape = (TOKENS // T, T, HEADS)

    def randn(*extra: int) -> torch.Tensor:
        return torch.randn(*shape, *extra, generator=gen, device="cuda")

    return {
        "q": F.normalize(randn(DIM), dim=-1).bfloat16(),
        "k": F.normalize(randn(DIM), dim=-1).bfloat16(),
        "v": randn(DIM).bfloat16(),
        "g": F.logsigmoid(randn()),
        "beta": torch.sigmoid(randn()).bfloat16(),
    }


def _forward(fn: Callable, x: dict[str, torch.Tensor]) -> Callable[[], object]:
    def call() -> object:
        with torch.no_grad():
            return fn(x["q"], x["k"], x["v"], x["g"], x["beta"])

    return call


def _forward_backward(fn: Callable, x: dict[str, torch.Tensor]) -> Callable[[], object]:
    leaves = [t.detach().requires_grad_() for t in x.values()]
    do = torch.randn_like(x["v"])

    def call() -> object:
        o, _ = fn(*leaves)
        return torch.autograd.grad(o, leaves, do)

    return call


def kernel_breakdown(T: int) -> dict[str, float]:
    """Milliseconds of each Triton launch of ours (forward, then backward) at length T."""
    from memlab.kernels.gated_delta_rule import triton_chunk_bwd as bwd
    from memlab.kernels.gated_delta_rule import triton_chunk_fwd as fwd
    from memlab.kernels.gated_delta_rule.triton_chunk_index import build_chunk_index

    x = {name: t.flatten(0, 1) for name, t in make_inputs(T).items()}
    q, k, v, g, beta = x["q"], x["k"], x["v"], x["g"], x["beta"]
    do = torch.randn_like(v)
    index = build_chunk_index(TOKENS // T, T, None)
    scale = DIM**-0.5
    gcum, Ai, w, u = fwd.prepare(k, v, g, beta, index)
    h, v_new, _ = fwd.state_pass(k, w, u, gcum, None, False, index)
    dv_local = bwd.intra_dv(q, k, do, gcum, scale, index)
    dh, dv_new, _ = bwd.state_grad_pass(q, k, w, do, dv_local, gcum, None, False, scale, index, h.dtype)
    _, dk_part, dw, dG_part = bwd.dqkw(q, k, v_new, do, dv_new, h, dh, gcum, scale, index)
    steps = {
        "fwd prepare": lambda: fwd.prepare(k, v, g, beta, index),
        "fwd state_pass": lambda: fwd.state_pass(k, w, u, gcum, None, False, index),
        "fwd output": lambda: fwd.output(q, k, v_new, h, gcum, scale, index),
        "bwd intra_dv": lambda: bwd.intra_dv(q, k, do, gcum, scale, index),
        "bwd state_grad_pass": lambda: bwd.state_grad_pass(
            q, k, w, do, dv_local, gcum, None, False, scale, index, h.dtype
        ),
        "bwd dqkw": lambda: bwd.dqkw(q, k, v_new, do, dv_new, h, dh, gcum, scale, index),
        # Overwrites Ai, which only changes the values it reads, not the work.
        "bwd wy_backward": lambda: bwd.wy_backward(k, v, beta, gcum, Ai, dw, dv_new, dk_part, dG_part, index),
    }
    return {name: time_ms(step) for name, step in steps.items()}


def run() -> tuple[list[dict], str]:
    """Rows (one per op, T and implementation) and the table to print."""
    impls = implementations()
    rows = []
    for T in LENGTHS:
        x = make_inputs(T)
        for op, make in (("fwd", _forward), ("fwd+bwd", _forward_backward)):
            times = {}
            for name, fn in impls.items():
                if name == "twin" and T > TWIN_MAX_T:
                    continue
                ms, peak = time_and_peak(make, fn, x)
                print(f"{op} T={T} {name}: {ms} ms", flush=True)
                times[name] = ms
                rows.append(
                    {"op": op, "T": T, "batch": TOKENS // T, "impl": name, "ms": ms, "peak_mib": peak}
                )
            for row in rows[-len(times) :]:
                for ref in ("fla", "twin"):
                    if row["ms"] and times.get(ref):
                        row[f"vs_{ref}"] = times[ref] / row["ms"]
                row["tokens_per_s"] = TOKENS / row["ms"] * 1e3 if row["ms"] else None
    breakdown = kernel_breakdown(LENGTHS[0])
    rows.append({"op": "breakdown", "T": LENGTHS[0], "impl": "ours", "kernels_ms": breakdown})
    table = format_table([r for r in rows if r["op"] != "breakdown"], "fla" in impls)
    table += f"\nours per launch at T={LENGTHS[0]} (ms): " + ", ".join(
        f"{n} {ms:.3f}" for n, ms in breakdown.items()
    )
    return rows, table


def format_table(rows: list[dict], with_fla: bool) -> str:
    lines = table_header("op", "T", "impl", "ms", "Mtok/s", "peak MiB", "speed-up vs fla", "speed-up vs twin")
    for r in rows:
        tok = None if r["tokens_per_s"] is None else r["tokens_per_s"] / 1e6
        timed = cell(r["ms"], ".3f"), cell(tok, ".1f"), cell(r["peak_mib"], ".0f")
        speedups = cell(r.get("vs_fla"), ".2f"), cell(r.get("vs_twin"), ".1f")
        lines.append(table_row(r["op"], r["T"], r["impl"], *timed, *speedups))
    floor, gb, gflop = forward_floor_ms()
    lines.append(
        f"\nH={HEADS}, K=V={DIM}, bf16, {TOKENS} tokens per call; median of do_bench (L2 flushed). "
        f"Forward floor ≈ {floor:.2f} ms ({gb:.2f} GB at {HBM_BYTES_PER_S / 1e12:.1f} TB/s, "
        f"{gflop:.0f} GFLOP at {BF16_FLOP_PER_S / 1e12:.0f} TFLOP/s)."
    )
    if with_fla:
        lines.append(
            "fla: flash-linear-attention's Hopper guard bypassed for timing only "
            "(its gated backward gives wrong gradients there)."
        )
    else:
        lines.append("fla: not importable, not timed.")
    ours = {(r["op"], r["T"]): r["ms"] for r in rows if r["impl"] == "ours"}
    for op, goal in (("fwd", GOAL_FWD_MS), ("fwd+bwd", GOAL_FWD_BWD_MS)):
        got = ours.get((op, 2048))
        if got is not None:
            verdict = "met" if got <= goal else f"missed by {got - goal:.2f} ms ({got / goal:.2f}x)"
            lines.append(f"goal {op} T=2048 <= {goal} ms: ours {got:.3f} ms, {verdict}")
    return "\n".join(lines)
