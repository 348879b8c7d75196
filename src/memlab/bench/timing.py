"""Timing and memory measurement of GPU calls, shared by the benchmark suites."""

from __future__ import annotations

from collections.abc import Callable

import torch


def time_ms(fn: Callable[[], object], warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median milliseconds of ``fn()`` over as many calls as fit in ``rep_ms`` (at least one).

    Uses triton.testing.do_bench, which times each call with CUDA events and flushes the L2
    cache in between, so a call never finds its inputs already on chip.
    """
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def peak_memory_mib(fn: Callable[[], object]) -> float:
    """Peak CUDA memory allocated during one ``fn()``, above what was allocated before, in MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def time_and_peak(
    build: Callable[..., Callable[[], object]], *args: object
) -> tuple[float | None, float | None]:
    """``time_ms`` and ``peak_memory_mib`` of the call ``build(*args)`` returns; (None, None)
    where building or running it runs out of CUDA memory. Empties the CUDA cache after, so
    that the next call measured gets the memory back."""
    try:
        call = build(*args)
        ms, peak = time_ms(call), peak_memory_mib(call)
    except torch.cuda.OutOfMemoryError:
        ms = peak = None
    torch.cuda.empty_cache()
    return ms, peak
