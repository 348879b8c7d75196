"""Shared by the tests of the layer ops: a fresh seed, printed so that a failure's captured
output says how to reproduce it, and an op's output and gradients against its fp64 reference
on exactly the values the op saw."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from memlab.kernels.compare import rel_err


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
    """‖got − ref‖/‖ref‖ of the output ("out") and of the gradient of every input ("d<name>")
    from one random cotangent. ``inputs`` are rounded to ``dtype`` (strides kept) for ``op``,
    and the reference runs on those values in fp64; ``kwargs`` go to both, undifferentiated.
    Also checks that the output and the gradients come back in ``dtype``."""
    rounded = {name: t.to(dtype) for name, t in inputs.items()}
    ref_leaves = [t.double().requires_grad_() for t in rounded.values()]
    ref = reference(**dict(zip(rounded, ref_leaves, strict=True)), **kwargs)
    cotangent = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, ref_leaves, cotangent)
    leaves = [t.clone().requires_grad_() for t in rounded.values()]
    got = op(**dict(zip(rounded, leaves, strict=True)), **kwargs)
    grads = torch.autograd.grad(got, leaves, cotangent.to(dtype))
    assert got.dtype == dtype and all(g.dtype == dtype for g in grads)
    errors = {"out": rel_err(got, ref)}
    return errors | {f"d{n}": rel_err(g, r) for n, g, r in zip(rounded, grads, ref_grads, strict=True)}
