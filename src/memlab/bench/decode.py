"""Benchmark: decoding speed and memory against the context length, the constant-memory claim.

Four language models of one size (d_model 768, 4 layers, vocabulary 32000, bf16 weights):
MemMamba (its default knobs), Mamba, MoM (heads of 64 channels, 4 memories, top-2, shared) and
the Transformer (heads of 64 channels, a KV cache). For each context length n ∈ {1K, 4K, 16K,
64K}: a random prompt of n tokens goes through the per-layer caches (the recurrent models in
chunks of 4096 tokens, so their prefill memory stays flat too; the Transformer in one causal
call), then 1 + 64 tokens are decoded greedily one at a time under no_grad, the last 64 timed.
Reported: decoding tokens/s (wall clock of the 64 steps, batch included), the memory the
caches keep alive after decoding and the peak memory of the timed steps above the weights
(caches plus transients). Goals: the
recurrent models' peak flat from 1K to 64K; their tokens/s at 64K above the Transformer's.
Run by ``scripts/bench.py --suite decode``, or alone with other sizes by
``python -m memlab.bench.decode`` (``--json PATH`` saves the rows).
"""

from __future__ import annotations

import argparse
import functools
import gc
import time
from typing import Any

import torch

from memlab.bench.cli import parse_suite_args, positive_int
from memlab.bench.table import cell, report, table_header, table_row, with_table
from memlab.models import LanguageModel
from memlab.models.captured_step import cache_leaves
from memlab.models.layers import Attention, Mamba, MemMamba, MoMAttention

MODELS = ("memmamba", "mamba", "mom", "transformer")
RECURRENT = ("memmamba", "mamba", "mom")
D_MODEL, N_LAYERS, VOCAB, HEAD_DIM = 768, 4, 32000, 64
CONTEXTS = (1024, 4096, 16384, 65536)
NEW_TOKENS, PREFILL_CHUNK, BATCH = 64, 4096, 1
# "Flat": the peak at the longest context at most this much above the shortest's.
FLAT_TOLERANCE = 0.05


def build_model(name: str, d_model: int, n_layers: int, vocab_size: int, head_dim: int) -> LanguageModel:
    """One of MODELS at the given size, fp32 weights, seeded."""
    heads = max(1, d_model // head_dim)
    mixers = {
        "memmamba": functools.partial(MemMamba, backbone={"d_state": 16, "expand": 2}),
        "mamba": functools.partial(Mamba, d_state=16, expand=2),
        "mom": functools.partial(MoMAttention, num_heads=heads, head_dim=head_dim, num_memories=4, topk=2),
        "transformer": functools.partial(Attention, num_heads=heads, head_dim=head_dim),
    }
    torch.manual_seed(0)
    return LanguageModel(vocab_size, d_model, n_layers, mixers[name])


def cache_bytes(state: Any) -> int:
    """Bytes that a decoding cache (tensors in nested dataclasses and lists) keeps alive: the
    whole storage of every tensor, once per storage, since a view keeps its base alive."""
    storages: dict[int, int] = {}
    for _, item in cache_leaves(state):
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def decode_once(
    model: LanguageModel,
    context: int,
    new_tokens: int,
    prefill_chunk: int | None,
    batch: int,
    device: torch.device,
) -> dict[str, float | None]:
    """Prefill a random prompt of ``context`` tokens (in pieces of ``prefill_chunk``; None: one
    call), then decode 1 + ``new_tokens`` tokens greedily, timing the last ``new_tokens``.
    Returns prefill_s, decode tokens/s, the cache's MiB after decoding (``cache_bytes``) and
    the timed steps' peak above the weights in MiB (None off CUDA)."""
    param = next(model.parameters())
    gen = torch.Generator(device=device).manual_seed(context)
    prompt = torch.randint(model.vocab_size, (batch, context), generator=gen, device=device)
    states = model.init_states(batch, device, param.dtype)
    piece = prefill_chunk or context
    _synchronize(device)
    start = time.perf_counter()
    for begin in range(0, context, piece):
        ids = prompt[:, begin : begin + piece]
        last = torch.zeros(ids.shape, dtype=torch.bool, device=device)
        last[:, -1] = True
        logits = model(ids, states=states, logits_mask=last).logits  # [B, V]: the last token's
    _synchronize(device)
    prefill_s = time.perf_counter() - start
    del prompt

    position = context

    def step(logits: torch.Tensor) -> torch.Tensor:
        nonlocal position
        token = logits.argmax(-1, keepdim=True)  # [B, 1]
        model.schedule_step(states, position)  # as generation does (MemMamba skips what it can)
        position += 1
        return model(token, states=states).logits[:, -1]

    # One untimed step first: it replaces cache entries that are views of prefill-sized
    # tensors (a conv tail sliced from the prompt piece), so the peak is the steady state's.
    logits = step(logits)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    _synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        logits = step(logits)
    _synchronize(device)
    decode_s = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) - weights) / 2**20 if device.type == "cuda" else None
    return {
        "prefill_s": prefill_s,
        "tokens_per_s": batch * new_tokens / decode_s,
        "cache_mib": cache_bytes(states) / 2**20,
        "peak_mib": peak,
    }


def measure(
    models: tuple[str, ...] = MODELS,
    contexts: tuple[int, ...] = CONTEXTS,
    d_model: int = D_MODEL,
    n_layers: int = N_LAYERS,
    vocab_size: int = VOCAB,
    head_dim: int = HEAD_DIM,
    new_tokens: int = NEW_TOKENS,
    prefill_chunk: int = PREFILL_CHUNK,
    batch: int = BATCH,
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
) -> list[dict]:
    """One row per (model, context); a run out of GPU memory gets ``oom`` True and None values."""
    dev = torch.device(device)
    rows = []
    for name in models:
        model = build_model(name, d_model, n_layers, vocab_size, head_dim).to(device=dev, dtype=dtype).eval()
        chunk = prefill_chunk if name in RECURRENT else None
        # Untimed runs at the prompt-piece shapes the timed ones use: Triton compiles per shape.
        for context in sorted({min(c, chunk or c) for c in contexts})[:2]:
            decode_once(model, context, 2, chunk, batch, dev)
        for context in contexts:
            row = {"model": name, "context": context, "batch": batch, "new_tokens": new_tokens}
            row["dtype"] = str(dtype).removeprefix("torch.")
            try:
                row.update(decode_once(model, context, new_tokens, chunk, batch, dev), oom=False)
            except torch.OutOfMemoryError:
                row.update(prefill_s=None, tokens_per_s=None, cache_mib=None, peak_mib=None, oom=True)
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            print(f"decode {name} n={context}: {row}", flush=True)
            rows.append(row)
        del model
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def run() -> tuple[list[dict], str]:
    """The suite as ``scripts/bench.py`` runs it: the four models, contexts 1K to 64K."""
    return with_table(measure(), format_table)


def format_table(rows: list[dict]) -> str:
    """Markdown table of ``measure``'s rows, then the goals' verdicts."""

    lines = table_header("model", "context", "decode tok/s", "cache MiB", "decode peak MiB", "prefill s")
    for r in rows:
        measured = ("OOM",) * 4
        if not r["oom"]:
            tok, peak = f"{r['tokens_per_s']:.1f}", cell(r["peak_mib"], ".1f")
            measured = (tok, f"{r['cache_mib']:.2f}", peak, f"{r['prefill_s']:.2f}")
        lines.append(table_row(r["model"], r["context"], *measured))
    if rows:
        r = rows[0]
        lines.append(
            f"\nbatch {r['batch']}; {r['new_tokens']} greedy tokens timed after the prompt and one untimed "
            "token; cache = storage its tensors keep alive; decode peak = max_memory_allocated over the "
            f"timed tokens minus the weights; {r['dtype']} weights."
        )
    lines += _verdicts(rows)
    return "\n".join(lines)


def _verdicts(rows: list[dict]) -> list[str]:
    """The goals, per recurrent model: flat decode peak from the shortest to the longest
    context, and tokens/s at the longest context above the Transformer's."""
    by = {(r["model"], r["context"]): r for r in rows}
    contexts = sorted({r["context"] for r in rows})
    if not contexts:
        return []
    short, long = contexts[0], contexts[-1]
    lines = []
    baseline = by.get(("transformer", long))
    for name in RECURRENT:
        first, last = by.get((name, short)), by.get((name, long))
        if first is None or last is None:
            continue
        if first["peak_mib"] is not None and last["peak_mib"] is not None:
            growth = last["peak_mib"] / first["peak_mib"] - 1
            verdict = "met" if growth <= FLAT_TOLERANCE else "missed"
            lines.append(
                f"goal {name} decode peak flat {short}->{long}: {first['peak_mib']:.1f} -> "
                f"{last['peak_mib']:.1f} MiB ({100 * growth:+.1f}%), {verdict}"
            )
        if baseline is not None and last["tokens_per_s"] is not None:
            theirs = baseline["tokens_per_s"]
            if theirs is None:
                lines.append(f"goal {name} tok/s at {long} above the Transformer's: Transformer OOM, met")
            else:
                verdict = "met" if last["tokens_per_s"] > theirs else "missed"
                lines.append(
                    f"goal {name} tok/s at {long} above the Transformer's: {last['tokens_per_s']:.1f} vs "
                    f"{theirs:.1f}, {verdict}"
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--contexts", nargs="+", type=positive_int, default=list(CONTEXTS))
    parser.add_argument("--d-model", type=positive_int, default=D_MODEL)
    parser.add_argument("--n-layers", type=positive_int, default=N_LAYERS)
    parser.add_argument("--vocab-size", type=positive_int, default=VOCAB)
    parser.add_argument("--head-dim", type=positive_int, default=HEAD_DIM, help="MoM and Transformer heads")
    parser.add_argument("--new-tokens", type=positive_int, default=NEW_TOKENS)
    parser.add_argument("--prefill-chunk", type=positive_int, default=PREFILL_CHUNK)
    parser.add_argument("--batch", type=positive_int, default=BATCH)
    args = parse_suite_args(parser)
    rows = measure(
        tuple(args.models),
        tuple(args.contexts),
        args.d_model,
        args.n_layers,
        args.vocab_size,
        args.head_dim,
        args.new_tokens,
        args.prefill_chunk,
        args.batch,
    )
    report("decode", rows, format_table(rows), args.json)


if __name__ == "__main__":
    main()
