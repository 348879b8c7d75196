"""How far a result is from its reference: the one error measure of every kernel and layer
check, and an op's output and gradients measured by it against an fp64 reference."""

from __future__ import annotations

from collections.abc import Callable

import torch


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """‖a − ref‖ / ‖ref‖ in fp64, or ‖a‖ where ref is exactly zero (a gradient that must vanish,
    such as dA of a one-step scan)."""
    a, ref = a.detach().double(), ref.detach().double()
    scale = ref.norm()
    return ((a - ref).norm() / scale).item() if scale > 0 else a.norm().item()


def errors_against_reference(
    op: Callable[..., torch.Tensor],
    reference: Callable[..., torch.Tensor],
    inputs: dict[str, torch.Tensor],
    dtype: torch.dtype,
    **kwargs: object,
) -> tuple[dict[str, float], list[torch.Tensor]]:
    """rel_err of op's output ("out") and of the gradient of every input ("d<name>") from one
    random cotangent, against ``reference`` run in fp64 on exactly the values op saw: the
    ``inputs`` rounded to ``dtype`` (their strides kept). ``kwargs`` go to both, not
    differentiated. Returns the errors and op's output followed by its gradients."""
    rounded = {name: t.to(dtype) for name, t in inputs.items()}
    ref_leaves = [t.double().requires_grad_() for t in rounded.values()]
    ref = reference(**dict(zip(rounded, ref_leaves, strict=True)), **kwargs)
    cotangent = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, ref_leaves, cotangent)
    leaves = [t.clone().requires_grad_() for t in rounded.values()]
    got = op(**dict(zip(rounded, leaves, strict=True)), **kwargs)
    grads = torch.autograd.grad(got, leaves, cotangent.to(dtype))
    errors = {"out": rel_err(got, ref)}
    errors |= {f"d{n}": rel_err(g, r) for n, g, r in zip(rounded, grads, ref_grads, strict=True)}
    return errors, [got, *grads]
