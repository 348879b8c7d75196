"""Benchmark: the lm-evaluation-harness adapter's loglikelihood scoring against the training forward.

The adapter (``memlab.eval.lm_eval``) scores ``batch_size`` requests per forward pass, packed
end to end with ``cu_seqlens`` and the LM head applied only where a continuation is predicted
(``memlab.eval.packing.score_packed``). Timed here on synthetic requests shaped like a
multiple-choice task (contexts of 64 to 1024 tokens, continuations of 1 to 16), against the
same model's training forward at 4 × 2048 tokens (bf16 autocast, the chunked loss, no
backward). Both in tokens read per second. Goal: the adapter at ≥ 50 % of the forward. Run by
``scripts/bench.py --suite loglikelihood``, or alone by ``python -m memlab.bench.loglikelihood``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from torch import nn

from memlab.bench import train_step
from memlab.bench.cli import parse_suite_args
from memlab.bench.table import cell, report, table_header, table_row, with_table
from memlab.bench.timing import time_ms
from memlab.eval.packing import score_packed

MODELS = ("transformer", "gdn", "mom")
REQUESTS, BATCH_SIZE = 256, 16  # BATCH_SIZE: the adapter's default requests per pass
FORWARD_SHAPE = (4, 2048)


def requests(count: int, vocab: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """``count`` (context, continuation) token lists: contexts of 64-1024, continuations of 1-16."""
    rng = random.Random(seed)

    def ids(n: int) -> list[int]:
        return [rng.randrange(vocab) for _ in range(n)]

    return [(ids(rng.randint(64, 1024)), ids(rng.randint(1, 16))) for _ in range(count)]


def scoring_tokens_per_s(
    net: nn.Module, pairs: list, batch_size: int = BATCH_SIZE, repeats: int = 3
) -> float:
    """Tokens read per second by score_packed over ``pairs``, longest first and ``batch_size``
    per pass as the adapter orders them, under bf16 autocast as it runs on a GPU: the median
    of ``repeats`` timed sweeps after one untimed sweep (every packed shape seen once)."""
    device = next(net.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    ordered = sorted(pairs, key=lambda pair: -(len(pair[0]) + len(pair[1])))
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    tokens = sum(len(c) + len(t) - 1 for c, t in pairs)
    rates = []
    with autocast:
        for sweep in range(repeats + 1):
            start = time.perf_counter()
            for batch in batches:
                score_packed(net, batch)  # returns Python floats: each pass ends synchronised
            if sweep:
                rates.append(tokens / (time.perf_counter() - start))
    return statistics.median(rates)


def forward_tokens_per_s(net: nn.Module, batch: int, length: int) -> float:
    """Tokens per second of the training forward (loss included, no backward) at batch × length."""
    device = next(net.parameters()).device
    ids = torch.randint(net.vocab_size, (batch, length + 1), device=device)

    @torch.no_grad()
    def forward() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            net(ids[:, :-1], targets=ids[:, 1:])

    return batch * length / time_ms(forward, warmup_ms=300, rep_ms=2000) * 1e3


def measure(models: tuple[str, ...] = MODELS) -> list[dict]:
    """One row per model: the adapter's and the forward's tokens/s and their ratio."""
    rows = []
    for name in models:
        net = train_step.build(name).cuda().eval()
        pairs = requests(REQUESTS, net.vocab_size)
        adapter = scoring_tokens_per_s(net, pairs)
        forward = forward_tokens_per_s(net, *FORWARD_SHAPE)
        row = {"model": name, "config": train_step.MODELS[name], "requests": REQUESTS}
        row |= {"batch_size": BATCH_SIZE, "adapter_tokens_per_s": adapter, "forward_tokens_per_s": forward}
        rows.append(row | {"vs_forward": adapter / forward})
        del net
        torch.cuda.empty_cache()
    return rows


def format_table(rows: list[dict]) -> str:
    lines = table_header("model", "loglikelihood tokens/s", "training forward tokens/s", "ratio")
    for r in rows:
        adapter, forward = (
            f"{cell(r[k] / 1e3, '.1f')}k" for k in ("adapter_tokens_per_s", "forward_tokens_per_s")
        )
        lines.append(table_row(r["config"], adapter, forward, cell(r["vs_forward"], ".2f")))
    batch, length = FORWARD_SHAPE
    lines.append(
        f"\nloglikelihood: {REQUESTS} requests (contexts 64-1024 tokens, continuations 1-16), "
        f"longest first, {BATCH_SIZE} packed per pass, bf16 autocast, median of 3 sweeps; "
        f"forward: {batch} × {length}, loss included, no backward. Goal: ratio ≥ 0.5."
    )
    return "\n".join(lines)


def run() -> tuple[list[dict], str]:
    """The suite as ``scripts/bench.py`` runs it."""
    return with_table(measure(), format_table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(train_step.MODELS), default=list(MODELS))
    args = parse_suite_args(parser)
    rows = measure(tuple(args.models))
    report("loglikelihood", rows, format_table(rows), args.json)


if __name__ == "__main__":
    main()
