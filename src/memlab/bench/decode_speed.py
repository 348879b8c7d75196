"""Benchmark: generation speed at the papers' shapes, eager decoding against CUDA-graph decoding.

The models as training builds them (``transformer_340m``, ``gdn_340m``, ``mom_340m``,
``mamba_130m``, ``memmamba_130m`` from configs/model/), in bf16 weights: a random prompt of 512
tokens, then 128 new tokens chosen greedily, at batch 1, 16 and 64, through
``LanguageModel.stream`` eagerly and with ``cuda_graph=True`` (and, with ``--modes
compiled_graph``, from the graph of blocks compiled by ``compile_blocks``, whose code between
the kernel ops inductor fuses). Reported: prefill and decode
tokens/s (batch included), the graph's speed-up, and each step's byte floor — reading the
weights once and the caches' traffic (see ``cache_traffic``) at the GPU's memory bandwidth.
Hugging Face's Llama at the Transformer's shape (its ``generate``, greedy, static shapes off)
is the reference when ``transformers`` is installed. Run by ``scripts/bench.py --suite
decode_speed``, or alone with other choices by ``python -m memlab.bench.decode_speed``.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable

import torch
from torch import nn

from memlab.bench.cli import parse_suite_args, positive_int
from memlab.bench.stamp import write_results
from memlab.bench.table import cell, report, table_header, table_row, with_table
from memlab.bench.train_step import MODELS, build
from memlab.models.captured_step import cache_leaves
from memlab.models.static_cache import StaticKVCache
from memlab.utils.gpu_peak import memory_bandwidth

BATCHES = (1, 16, 64)
PROMPT, NEW_TOKENS = 512, 128
MODES = ("eager", "graph")  # the suite's; compiled_graph on request
ALL_MODES = (*MODES, "compiled_graph")


def _timed(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def generate_once(model: nn.Module, batch: int, prompt_len: int, new_tokens: int, mode: str) -> dict:
    """Prefill and decode tokens/s of one generation (memlab's ``stream``, or Hugging Face's
    ``generate`` for mode "hf", whose prefill is timed by a separate forward pass)."""
    vocab = model.vocab_size  # both memlab's LanguageModel and Hugging Face's models have it
    gen = torch.Generator(device="cuda").manual_seed(batch)
    prompt = torch.randint(vocab, (batch, prompt_len), generator=gen, device="cuda")
    if mode == "hf":
        prefill_s = _timed(lambda: model(prompt))
        total = _timed(
            lambda: model.generate(
                prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
            )
        )
        decode_s = total - prefill_s
    else:
        pieces = model.stream(prompt, new_tokens, cuda_graph=mode != "eager")
        prefill_s = _timed(lambda: next(pieces))
        decode_s = _timed(lambda: list(pieces))
    return {
        "prefill_tokens_per_s": batch * prompt_len / prefill_s,
        "tokens_per_s": batch * new_tokens / decode_s,
    }


def cache_traffic(model: nn.Module, batch: int, max_len: int) -> int:
    """Bytes a decoding step moves through the caches of ``batch`` sequences of up to ``max_len``
    tokens (their fixed-size, graph-ready form): a recurrent state is read and written whole;
    attention's preallocated keys and values are read whole (masked past the position) and
    written one position at a time. 0 for Hugging Face models (weights only)."""
    if not hasattr(model, "init_states"):
        return 0
    states = model.init_states(batch, torch.device("meta"), torch.bfloat16, max_len=max_len)
    total = 0
    for state in states:
        once = isinstance(state, StaticKVCache)
        for _, leaf in cache_leaves(state):
            if isinstance(leaf, torch.Tensor):
                total += leaf.numel() * leaf.element_size() * (1 if once else 2)
    return total


def measure(
    models: tuple[str, ...] = (*MODELS, "hf_llama"),
    batches: tuple[int, ...] = BATCHES,
    modes: tuple[str, ...] = MODES,
    prompt_len: int = PROMPT,
    new_tokens: int = NEW_TOKENS,
    on_row: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """One row per (model, batch, mode); None values where a run ran out of memory or the
    model cannot be captured (``note`` says why). ``on_row`` gets the rows so far after each
    one, so a run cut short keeps what it measured."""
    bandwidth = memory_bandwidth(torch.cuda.get_device_name())
    rows = []
    for name in models:
        model = build(name).to(device="cuda", dtype=torch.bfloat16).eval()
        compiled = None
        if name == "hf_llama":
            model.generation_config.pad_token_id = 0
        elif "compiled_graph" in modes:
            compiled = build(name).to(device="cuda", dtype=torch.bfloat16).eval()
            torch.compiler.reset()  # a fresh recompile count per model (see train_step.measure_one)
            compiled.compile_blocks()
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        for batch in batches:
            for mode in ("hf",) if name == "hf_llama" else modes:
                row = {"model": name, "config": MODELS.get(name, "hf_llama"), "batch": batch, "mode": mode}
                row |= {"prompt": prompt_len, "new_tokens": new_tokens, "weight_gb": weight_bytes / 1e9}
                step_bytes = weight_bytes + cache_traffic(model, batch, prompt_len + new_tokens)
                row["step_gb"] = step_bytes / 1e9
                row["floor_tokens_per_s"] = batch * bandwidth / step_bytes if bandwidth else None
                try:
                    run = compiled if mode == "compiled_graph" else model
                    generate_once(run, batch, prompt_len, 4, mode)  # compile, capture
                    row |= generate_once(run, batch, prompt_len, new_tokens, mode)
                except (torch.OutOfMemoryError, RuntimeError) as err:
                    note = str(err).split("\n")[0]
                    row |= {"prefill_tokens_per_s": None, "tokens_per_s": None, "note": note}
                print(f"decode_speed {name} batch {batch} {mode}: {row.get('tokens_per_s')}", flush=True)
                rows.append(row)
                if on_row:
                    on_row(_with_ratios(rows))
                gc.collect()
                torch.cuda.empty_cache()
        model = compiled = None
        gc.collect()
        torch.cuda.empty_cache()
    return _with_ratios(rows)


def _with_ratios(rows: list[dict]) -> list[dict]:
    """``rows`` with ``vs_eager`` set: each graph mode's tokens/s over eager's at its model and batch."""
    eager = {(r["model"], r["batch"]): r["tokens_per_s"] for r in rows if r["mode"] == "eager"}
    for r in rows:
        base = eager.get((r["model"], r["batch"]))
        graph = r["mode"] != "eager" and r["tokens_per_s"] and base
        r["vs_eager"] = r["tokens_per_s"] / base if graph else None
    return rows


def run() -> tuple[list[dict], str]:
    """The suite as ``scripts/bench.py`` runs it."""
    return with_table(measure(), format_table)


def format_table(rows: list[dict]) -> str:
    lines = table_header(
        "model", "batch", "decoding", "prefill tok/s", "decode tok/s", "× eager", "% of floor"
    )
    for r in rows:
        floor = r["floor_tokens_per_s"]
        share = 100 * r["tokens_per_s"] / floor if r["tokens_per_s"] and floor else None
        prefill, decode = cell(r["prefill_tokens_per_s"], ".0f", "n/a"), cell(r["tokens_per_s"], ".1f", "n/a")
        ratios = cell(r["vs_eager"], ".2f"), cell(share, ".1f")
        lines.append(table_row(r["config"], r["batch"], r["mode"], prefill, decode, *ratios))
    notes = sorted({f"{r['config']}: {r['note']}" for r in rows if r.get("note")})
    if rows:
        r = rows[0]
        lines.append(
            f"\nbf16 weights; prompt {r['prompt']} tokens, {r['new_tokens']} new tokens, greedy; tokens/s "
            "count the whole batch; floor: batch × memory bandwidth / the bytes a step must move (every "
            "weight read once, recurrent states read and written, attention's preallocated keys and "
            "values read); hf: Hugging Face generate (floor: weights only), decode time = total − one "
            "prefill pass."
        )
    return "\n".join(lines + [f"n/a {n}" for n in notes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=[*MODELS, "hf_llama"], default=[*MODELS, "hf_llama"])
    parser.add_argument("--batches", nargs="+", type=positive_int, default=list(BATCHES))
    parser.add_argument("--modes", nargs="+", choices=ALL_MODES, default=list(MODES))
    parser.add_argument("--prompt", type=positive_int, default=PROMPT)
    parser.add_argument("--new-tokens", type=positive_int, default=NEW_TOKENS)
    args = parse_suite_args(parser)
    save = (lambda rows: write_results(args.json, {"decode_speed": rows})) if args.json else None
    options = (tuple(args.batches), tuple(args.modes), args.prompt, args.new_tokens, save)
    rows = measure(tuple(args.models), *options)
    report("decode_speed", rows, format_table(rows), args.json)


if __name__ == "__main__":
    main()
