"""Benchmark: the MoM layer against a Gated DeltaNet layer of the same head shape, causal
softmax attention and, when importable, flash-linear-attention's ``MomAttention`` and
``GatedDeltaNet`` layers, in one process.

D = 1024; MoM and GDN: 4 heads × 256 (expand_v 1), MoM with 4 memories, top-2 and the shared
memory, GDN being our MoM layer with one memory; attention: 16 heads × 64 through PyTorch's
SDPA. Forward+backward (gradients of the input and of every parameter) of whole layers,
weights and activations in bf16, 32768 tokens per call as 32768 / T sequences of length T,
T ∈ {2048, 8192}. flash-linear-attention 0.6.0 refuses its gated backward on Hopper with
Triton < 3.7.1 (a compiler bug gives wrong gradients there); its guard is switched off here
for timing only. Its kernels are autotuned on first use, every candidate config measured for
25 + 100 ms: the first MomAttention call then takes over seven minutes on an H100, so here
each candidate is measured for 5 + 20 ms instead (every config is still tried; ours are not
autotuned).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from memlab.bench.table import cell, table_header, table_row, with_table
from memlab.bench.timing import time_and_peak
from memlab.models.layers import Attention, MoMAttention

D_MODEL, HEADS, HEAD_DIM, TOKENS = 1024, 4, 256, 32768
NUM_MEMORIES, TOPK = 4, 2
ATTENTION_HEADS = 16
LENGTHS = (2048, 8192)
# Goals at every T: at least GOAL_VS_FLA times faster than fla's MomAttention, and at most
# GOAL_VS_GDN times the time of our GDN layer (a routed token costs three memory passes).
GOAL_VS_FLA, GOAL_VS_GDN = 2.0, 2.5


def _shorten_autotuning() -> None:
    """Make Triton's autotuner measure each candidate config for 5 + 20 ms (see above)."""
    from triton.runtime.autotuner import Autotuner
    from triton.testing import do_bench

    def quick(kernel_call: Callable[[], object], quantiles: tuple[float, ...]) -> object:
        return do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)

    Autotuner.do_bench = property(lambda self: quick)


def _fla_layers() -> dict[str, nn.Module]:
    """flash-linear-attention's MomAttention and GatedDeltaNet of the same shapes, or {}."""
    try:
        import fla.ops.common.chunk_o as fla_chunk_o
        from fla.layers import GatedDeltaNet, MomAttention
    except ImportError:
        return {}
    fla_chunk_o.TRITON_ABOVE_3_7_1 = True  # timing only: its gated backward is wrong on Triton 3.6
    _shorten_autotuning()
    shape = {"hidden_size": D_MODEL, "head_dim": HEAD_DIM, "num_heads": HEADS, "expand_v": 1, "layer_idx": 0}
    return {
        "fla_mom": MomAttention(**shape, num_memories=NUM_MEMORIES, topk=TOPK, shared_mem=True),
        "fla_gdn": GatedDeltaNet(**shape),
    }


def layers() -> dict[str, nn.Module]:
    """Every layer to time, by name, in bf16 on the GPU."""
    ours = {
        "mom": MoMAttention(
            D_MODEL, num_heads=HEADS, head_dim=HEAD_DIM, num_memories=NUM_MEMORIES, topk=TOPK, shared_mem=True
        ),
        "gdn": MoMAttention(
            D_MODEL, num_heads=HEADS, head_dim=HEAD_DIM, num_memories=1, topk=1, shared_mem=False
        ),
        "attention": Attention(D_MODEL, num_heads=ATTENTION_HEADS),
    }
    return {name: layer.to("cuda", torch.bfloat16) for name, layer in (ours | _fla_layers()).items()}


def _hidden(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's output [B, T, D]: ours return a MixerOutput, fla's a tuple."""
    out = layer(x)
    return out[0] if isinstance(out, tuple) else out.hidden


def _forward_backward(layer: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    leaves = [x.detach().requires_grad_(), *layer.parameters()]
    dy = torch.randn_like(x)

    def call() -> object:
        return torch.autograd.grad(_hidden(layer, leaves[0]), leaves, dy, allow_unused=True)

    return call


def run() -> tuple[list[dict], str]:
    """Rows (one per T and layer) and the table to print."""
    named = layers()
    rows = []
    for T in LENGTHS:
        x = torch.randn(TOKENS // T, T, D_MODEL, device="cuda", dtype=torch.bfloat16)
        for name, layer in named.items():
            ms, peak = time_and_peak(_forward_backward, layer, x)
            print(f"fwd+bwd T={T} {name}: {ms} ms", flush=True)
            tokens_per_s = TOKENS / ms * 1e3 if ms else None
            rows.append(
                {
                    "T": T,
                    "batch": TOKENS // T,
                    "impl": name,
                    "ms": ms,
                    "peak_mib": peak,
                    "tokens_per_s": tokens_per_s,
                }
            )
    return with_table(rows, format_table)


def format_table(rows: list[dict]) -> str:
    ms = {(r["T"], r["impl"]): r["ms"] for r in rows}
    lines = table_header(
        "T", "layer", "ms", "Mtok/s", "peak MiB", "time / our gdn", "speed-up of our mom over it"
    )
    for r in rows:
        gdn, mom = ms.get((r["T"], "gdn")), ms.get((r["T"], "mom"))
        tok = None if r["tokens_per_s"] is None else r["tokens_per_s"] / 1e6
        vs_gdn = r["ms"] / gdn if r["ms"] and gdn else None
        speedup = r["ms"] / mom if r["ms"] and mom else None
        timed = cell(r["ms"], ".2f"), cell(tok, ".2f"), cell(r["peak_mib"], ".0f")
        lines.append(table_row(r["T"], r["impl"], *timed, cell(vs_gdn, ".2f"), cell(speedup, ".2f")))
    lines.append(
        f"\nD={D_MODEL}; mom: {HEADS}x{HEAD_DIM}, {NUM_MEMORIES} memories, top-{TOPK}, shared; "
        f"gdn: same heads, one memory; attention: SDPA, {ATTENTION_HEADS} heads. bf16 weights and "
        f"activations, forward+backward, {TOKENS} tokens per call; median of do_bench (L2 flushed)."
    )
    if not any(r["impl"].startswith("fla_") for r in rows):
        lines.append("fla: not importable, not timed.")
    for T in LENGTHS:
        mom, gdn, fla = ms.get((T, "mom")), ms.get((T, "gdn")), ms.get((T, "fla_mom"))
        if mom and fla:
            verdict = "met" if fla / mom >= GOAL_VS_FLA else "missed"
            lines.append(
                f"goal T={T}: mom >= {GOAL_VS_FLA}x faster than fla_mom: {fla / mom:.2f}x, {verdict}"
            )
        if mom and gdn:
            verdict = "met" if mom / gdn <= GOAL_VS_GDN else "missed"
            lines.append(f"goal T={T}: mom <= {GOAL_VS_GDN}x our gdn: {mom / gdn:.2f}x, {verdict}")
    return "\n".join(lines)
