"""Output buffers of the Triton wrappers, poisonable for conformance tests.

Every buffer a kernel is meant to fill is allocated here, uninitialised as ``torch.empty``
would. Under ``poisoned()`` (or with ``MEMLAB_POISON_BUFFERS=1`` in the environment) they are
filled with NaN instead (integer buffers with -1), so that an element a kernel forgot to
write, or a read of one nothing wrote, shows up as NaN in the result instead of as whatever
the allocator left there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_poison = os.environ.get("MEMLAB_POISON_BUFFERS") == "1"


@contextmanager
def poisoned(on: bool = True) -> Iterator[None]:
    """Within the block, fill every new buffer with NaN (or -1) instead of leaving it uninitialised."""
    global _poison
    before, _poison = _poison, on
    try:
        yield
    finally:
        _poison = before


def _fill(t: torch.Tensor) -> torch.Tensor:
    return t.fill_(float("nan") if t.is_floating_point() else -1) if _poison else t


def empty(*shape: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """torch.empty(shape), or NaN-filled under poisoned()."""
    return _fill(torch.empty(*shape, dtype=dtype, device=device))


def empty_like(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """torch.empty_like(t) (t's strides kept), or NaN-filled under poisoned()."""
    return _fill(torch.empty_like(t, dtype=dtype))
