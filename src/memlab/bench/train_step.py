"""Benchmark: whole-model training steps at the papers' shapes — tokens/s, MFU, peak memory.

One plain PyTorch step (forward, cross-entropy — memlab's chunked from the hidden states, as
its training computes it, Llama's from the logits — backward, fused AdamW; bf16 autocast over fp32
weights) of each language model, side by side in one process: the Transformer, GDN and MoM at
MoM's "340M" shape (``transformer_340m``, ``gdn_340m``, ``mom_340m``), Mamba and MemMamba at
mamba-130m's (``mamba_130m``, ``memmamba_130m``), composed from configs/model/ as training
builds them; and Hugging Face's Llama at the Transformer's shape when ``transformers`` is
installed. Each at 4×2048, 1×8192 and 1×32768 tokens, with and without activation
checkpointing (``model.activation_checkpointing``), in each ``--modes`` of running a step:
``eager``; ``compiled``, its blocks compiled (``compile_blocks``); ``graph``, the forward and
backward replayed from CUDA graphs (``memlab.models.captured_loss``); ``compiled_graph``, both:
the compiled blocks' kernels captured and replayed. MFU = 6 · active
parameters · tokens/s over the GPU's peak bf16 throughput (memlab.models.flops). Run by
``scripts/bench.py --suite train_step``, or alone with other choices by ``python -m
memlab.bench.train_step``.
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from memlab.bench.cli import parse_suite_args
from memlab.bench.stamp import write_results
from memlab.bench.table import cell, report, table_header, table_row, with_table
from memlab.bench.timing import time_ms
from memlab.models import LanguageModel
from memlab.models.captured_loss import CapturedLoss
from memlab.models.captured_step import NotCapturable
from memlab.models.flops import active_parameters
from memlab.utils.gpu_peak import peak_bf16_flops

if TYPE_CHECKING:
    from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"
MODELS = {
    "transformer": "transformer_340m",
    "gdn": "gdn_340m",
    "mom": "mom_340m",
    "mamba": "mamba_130m",
    "memmamba": "memmamba_130m",
}
SHAPES = ((4, 2048), (1, 8192), (1, 32768))
CHECKPOINTING = ("none", "every_block")
MODES = ("eager", "compiled", "graph", "compiled_graph")


def build(name: str, checkpointing: str = "none") -> nn.Module:
    """Model ``name`` (a key of MODELS, or "hf_llama") as training builds it, fp32 weights, seeded."""
    torch.manual_seed(0)
    if name == "hf_llama":
        return _hf_llama()
    from hydra.utils import instantiate

    overrides = [f"model={MODELS[name]}"]
    if checkpointing != "none":
        overrides.append(f"model.activation_checkpointing={checkpointing}")
    return instantiate(train_config(overrides).model)


def train_config(overrides: list[str]) -> DictConfig:
    """``scripts/train.py``'s config composed with ``overrides`` (no run is made)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def _hf_llama() -> nn.Module:
    """transformers' Llama at transformer_340m's shape, SDPA attention (ImportError without it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000, hidden_size=1024, intermediate_size=3072, num_hidden_layers=24,
        num_attention_heads=16, tie_word_embeddings=True, attn_implementation="sdpa",
    )  # fmt: skip
    return LlamaForCausalLM(config)


def train_step(model: nn.Module, batch: int, length: int, graph: bool = False) -> Callable[[], None]:
    """One optimizer step of ``model`` on random tokens, as a closure; with ``graph`` (memlab's
    models) its forward and backward replayed from CUDA graphs."""
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings if hasattr(model, "get_input_embeddings") else None
    vocab = vocab or model.embed.num_embeddings
    gen = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(vocab, (batch, length + 1), generator=gen, device=device)
    inputs, labels = ids[:, :-1], ids[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    chunked = isinstance(model, LanguageModel)  # memlab's models compute the loss as training does
    targets = labels.flatten()
    forward = model
    if graph:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            forward = CapturedLoss(model, inputs, targets)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            if chunked:
                loss = forward(inputs, targets=targets).loss
            else:
                loss = F.cross_entropy(model(inputs).logits.float().flatten(0, 1), labels.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure_one(
    name: str, batch: int, length: int, checkpointing: str, peak_flops: float | None, mode: str = "eager"
) -> dict:
    """One row: ms per step (median), tokens/s, MFU, peak GiB (None where out of memory)."""
    row = {"model": name, "config": MODELS.get(name, "hf_llama"), "batch": batch, "T": length}
    row |= {"checkpointing": checkpointing, "mode": mode}
    model = step = None
    try:
        model = build(name, checkpointing).cuda()
        if mode in ("compiled", "compiled_graph"):
            # all models' blocks share Block.forward's code, whose compilations dynamo counts
            # against one recompile limit: each model starts afresh, as alone in a process
            torch.compiler.reset()
            model.compile_blocks()
        row["params"] = sum(p.numel() for p in model.parameters())
        row["active_params"] = active_parameters(model) if name != "hf_llama" else _llama_active(model)
        # the peak from here: a graph's pool is allocated while it is captured, not replayed
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step = train_step(model, batch, length, graph=mode in ("graph", "compiled_graph"))
        step()  # the optimizer state and the kernels' (and blocks') compilation, outside the timing
        step()
        torch.cuda.synchronize()
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row["ms"] = time_ms(step, warmup_ms=500, rep_ms=3000)
        row["tokens_per_s"] = batch * length / row["ms"] * 1e3
        flops = 6 * row["active_params"] * row["tokens_per_s"]
        row["mfu"] = flops / peak_flops if peak_flops else None
    except (torch.OutOfMemoryError, NotCapturable) as error:
        row |= {"ms": None, "tokens_per_s": None, "mfu": None, "peak_gib": None}
        if isinstance(error, NotCapturable):
            row["not_capturable"] = str(error)
    finally:
        model = step = None
        gc.collect()
        torch.cuda.empty_cache()
    label = f"{checkpointing}, {mode}"
    print(f"train_step {name} {batch}x{length} {label}: {row.get('ms')} ms", flush=True)
    return row


def _llama_active(model: nn.Module) -> int:
    embed = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return total if model.get_output_embeddings().weight is embed else total - embed.numel()


def measure(
    models: tuple[str, ...] = (*MODELS, "hf_llama"),
    shapes: tuple[tuple[int, int], ...] = SHAPES,
    checkpointing: tuple[str, ...] = CHECKPOINTING,
    modes: tuple[str, ...] = ("eager",),
    on_row: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Rows of every (model, shape, checkpointing, mode) that applies; the ratio to memlab's
    Transformer at the same shape, checkpointing and mode in ``vs_transformer``. ``on_row``
    sees the rows so far after each one (a run cut short keeps what it measured)."""
    peak = peak_bf16_flops(torch.cuda.get_device_name())
    rows = []
    for batch, length in shapes:
        for recompute in checkpointing:
            for mode in modes:
                for name in models:
                    hf = name == "hf_llama"
                    if hf and (recompute != "none" or mode != "eager" or not _has_transformers()):
                        continue
                    rows.append(measure_one(name, batch, length, recompute, peak, mode))
                    if on_row:
                        on_row(_with_ratios(rows))
    return _with_ratios(rows)


def _with_ratios(rows: list[dict]) -> list[dict]:
    """``rows`` with ``vs_transformer`` set: the ratio to memlab's Transformer at the same
    shape, checkpointing and mode, where that row was measured."""

    def key(r: dict) -> tuple:
        return r["batch"], r["T"], r["checkpointing"], row_mode(r)

    base = {key(r): r["ms"] for r in rows if r["model"] == "transformer"}
    for r in rows:
        ref = base.get(key(r))
        r["vs_transformer"] = r["ms"] / ref if r["ms"] and ref else None
    return rows


def row_mode(row: dict) -> str:
    """How a row's step ran; rows recorded before the modes carry only a ``compiled`` flag."""
    return row.get("mode") or ("compiled" if row.get("compiled") else "eager")


def _has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def run() -> tuple[list[dict], str]:
    """The suite as ``scripts/bench.py`` runs it: every model, shape and checkpointing mode,
    eager and from CUDA graphs."""
    return with_table(measure(modes=("eager", "graph")), format_table)


def format_table(rows: list[dict]) -> str:
    lines = table_header(
        "model", "B × T", "checkpointing", "mode", "ms / step", "tokens/s", "MFU", "peak GiB", "× Transformer"
    )
    for r in rows:
        tok = None if r["tokens_per_s"] is None else r["tokens_per_s"] / 1e3
        mfu = None if r["mfu"] is None else 100 * r["mfu"]
        ms = cell(r["ms"], ".1f", "not capturable" if r.get("not_capturable") else "OOM")
        shape = f"{r['batch']} × {r['T']}"
        rates = f"{cell(tok, '.1f')}k", f"{cell(mfu, '.1f')} %", cell(r["peak_gib"], ".1f")
        ratio = cell(r["vs_transformer"], ".2f")
        lines.append(table_row(r["config"], shape, r["checkpointing"], row_mode(r), ms, *rates, ratio))
    lines.append(
        "\nfp32 weights, bf16 autocast, fused AdamW; ms: median of do_bench over whole steps; "
        "MFU: 6 · active parameters · tokens/s over the GPU's peak bf16 FLOP/s; peak: "
        "max_memory_allocated over the first two steps, a CUDA graph's capture included "
        "(weights and optimizer state included)."
    )
    return "\n".join(lines)


def parse_shape(text: str) -> tuple[int, int]:
    try:
        batch, length = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BATCHxLENGTH such as 4x2048, got {text!r}") from None
    if batch < 1 or length < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return batch, length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=[*MODELS, "hf_llama"], default=[*MODELS, "hf_llama"])
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=list(SHAPES))
    parser.add_argument("--checkpointing", nargs="+", choices=CHECKPOINTING, default=list(CHECKPOINTING))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["eager"])
    args = parse_suite_args(parser)
    save = (lambda rows: write_results(args.json, {"train_step": rows})) if args.json else None
    rows = measure(tuple(args.models), tuple(args.shapes), tuple(args.checkpointing), tuple(args.modes), save)
    report("train_step", rows, format_table(rows), args.json)


if __name__ == "__main__":
    main()
