"""Shared by the tests of the layer ops: a fresh seed, printed so that a failure's captured
output says how to reproduce it, and an op against its fp64 reference."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from memlab.kernels import compare


def fresh_seed() -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed={seed}")
    torch.manual_seed(seed)


def errors_against_reference(
    op: Callable[..., torch.Tensor],
    reference: Callable[..., torch.Tensor],
    inputs: dict[str, torch.Tensor],
    dtype: torch.dtype,
    **kwargs: object,
) -> dict[str, float]:
    """``compare.errors_against_reference``'s errors, after checking that the output and the
    gradients come back in ``dtype``."""
    errors, outputs = compare.errors_against_reference(op, reference, inputs, dtype, **kwargs)
    assert all(t.dtype == dtype for t in outputs)
    return errors
