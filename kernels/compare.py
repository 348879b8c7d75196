"""How far a result is from its reference: the one error measure of every kernel and layer
check, and an op's output and gradients measured by it against an fp64 reference."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def rel_err(a: torch.Tensor, ref: torch.Tensor, floor: float = 0.0) -> float:
    """‖a − ref‖ / max(‖ref‖, floor·√n) in fp64 (n elements); NaN if a holds a non-finite value.

    ``floor`` is an RMS per element below which the reference counts as zero: a gradient that
    vanishes exactly (dA of a one-step scan) or nearly (a heavily cancelling sum) is then
    measured in units of ``floor`` rather than of its own tiny norm, so that rounding passes
    and garbage still fails. With floor 0 and an exactly-zero reference it is ‖a‖.
    """
    a, ref = a.detach().double(), ref.detach().double()
    if a.shape != ref.shape:
        raise ValueError(f"rel_err: shapes differ, {tuple(a.shape)} against {tuple(ref.shape)}")
    if a.numel() == 0:
        return 0.0
    if not torch.isfinite(a).all():
        return math.nan
    scale = max(ref.norm().item(), floor * math.sqrt(ref.numel()))
    diff = (a - ref).norm().item()
    return diff / scale if scale > 0 else diff


def errors_against_reference(
    op: Callable[..., torch.Tensor],
    reference: Callable[..., torch.Tensor],
    inputs: dict[str, torch.Tensor],
    dtype: torch.dtype,
    floor: float = 0.0,
    **kwargs: object,
) -> tuple[dict[str, float], list[torch.Tensor]]:
    """rel_err (with ``floor``) of op's output ("out") and of the gradient of every input
    ("d<name>") from one random cotangent, against ``reference`` run in fp64 on exactly the
    values op saw: the ``inputs`` rounded to ``dtype`` (their strides kept). ``kwargs`` go to
    both, not differentiated. Returns the errors and op's output followed by its gradients."""
    rounded = {name: t.to(dtype) for name, t in inputs.items()}
    ref_leaves = [t.double().requires_grad_() for t in rounded.values()]
    ref = reference(**dict(zip(rounded, ref_leaves, strict=True)), **kwargs)
    cotangent = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, ref_leaves, cotangent)
    leaves = [t.clone().requires_grad_() for t in rounded.values()]
    got = op(**dict(zip(rounded, leaves, strict=True)), **kwargs)
    grads = torch.autograd.grad(got, leaves, cotangent.to(dtype))
    errors = {"out": rel_err(got, ref, floor)}
    errors |= {f"d{n}": rel_err(g, r, floor) for n, g, r in zip(rounded, grads, ref_grads, strict=True)}
    return errors, [got, *grads]
