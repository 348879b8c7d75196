"""Running an op on both paths and measuring them: outputs and gradients from fixed random
cotangents, compared by the norm-relative error with an absolute floor."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from memlab.kernels import buffers
from memlab.kernels.compare import rel_err

# ‖got − ref‖/‖ref‖ bounds per dtype of the inputs; gradients that are sums of many terms of
# both signs (a gate's, a decay's, a weight's summed over time) get GRADIENT_SUM bounds in
# 16-bit, where rounding upstream of the sum decides their error.
TOL = {"fp32": 1e-3, "bf16": 1e-2, "fp16": 1e-2, "fp64": 1e-10}
GRADIENT_SUM_TOL = {"fp32": 1e-3, "bf16": 3e-2, "fp16": 3e-2, "fp64": 1e-10}
# RMS per element below which a reference counts as zero (kernels.compare.rel_err): results
# are O(1) for the unit-scale inputs drawn here.
FLOOR = 1e-3


@dataclass(frozen=True)
class Measure:
    """One compared quantity: ``path`` (fast or twin) ``name`` (out, d<input>) off by ``error``."""

    path: str
    name: str
    error: float
    bound: float

    @property
    def ok(self) -> bool:
        return self.error <= self.bound  # False for NaN

    @property
    def ratio(self) -> float:
        """error / bound: at most 1 passes; infinite for NaN or an error over a zero bound."""
        if self.ok:
            return self.error / self.bound if self.bound > 0 else 0.0
        return self.error / self.bound if self.bound > 0 and self.error == self.error else math.inf

    def __str__(self) -> str:
        return f"{self.path}:{self.name} {self.error:.2e} (bound {self.bound:.0e})"


def run(
    fn: Callable[..., object],
    inputs: dict[str, torch.Tensor],
    grad_names: tuple[str, ...],
    out_names: tuple[str, ...],
    cotangents: list[torch.Tensor] | None = None,
    poison: bool = False,
    cot_dtype: torch.dtype = torch.float64,
    **kwargs: object,
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """fn(**inputs, **kwargs)'s outputs (named ``out_names``; None outputs dropped) and the
    gradients "d<name>" of the ``grad_names`` inputs from the fp64 cotangents (drawn when None,
    as values of ``cot_dtype``: a 16-bit output's gradient arrives rounded to 16 bits, and a
    reference given other cotangents would count that rounding, amplified by cancellation in
    a sum, as the kernel's error).
    With ``poison`` (the fast path), every kernel buffer is NaN-poisoned and the backward runs
    a second time over the same graph, its gradients returned as "d<name> again": a kernel
    that wrote a tensor the forward saved gives other gradients the second time."""
    leaves = {n: t.detach().clone().requires_grad_(n in grad_names) for n, t in inputs.items()}
    with buffers.poisoned(poison), torch.set_grad_enabled(bool(grad_names)):
        outs = fn(**leaves, **kwargs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        named = {n: o for n, o in zip(out_names, outs, strict=True) if o is not None}
        if not grad_names:
            return {n: o.detach() for n, o in named.items()}, []
        if cotangents is None:
            cotangents = [
                torch.randn(o.shape, dtype=torch.float64, device=o.device).to(cot_dtype).double()
                for o in named.values()
            ]
        loss = sum((o.double() * c).sum() for o, c in zip(named.values(), cotangents, strict=True))
        wrt = [leaves[n] for n in grad_names]
        passes = [torch.autograd.grad(loss, wrt, allow_unused=True, retain_graph=poison)]
        if poison:
            passes.append(torch.autograd.grad(loss, wrt, allow_unused=True))
    for suffix, grads in zip(("", " again"), passes, strict=False):
        for n, g in zip(grad_names, grads, strict=True):
            named[f"d{n}{suffix}"] = torch.zeros_like(leaves[n]) if g is None else g
    return {n: t.detach() for n, t in named.items()}, cotangents


def measure(
    path: str,
    got: dict[str, torch.Tensor],
    ref: dict[str, torch.Tensor],
    bounds: Callable[[str], float],
    floors: Mapping[str, float] | None = None,
) -> list[Measure]:
    """A Measure for every quantity of ``ref`` (and for a second backward's "<name> again" where
    ``got`` has one); a missing or misshapen one measures NaN. ``floors``: the zero floor of a
    quantity whose scale is not O(1) (FLOOR otherwise)."""
    out = []
    for name, r in ref.items():
        for key in (name, f"{name} again"):
            g = got.get(key)
            if key == name or g is not None:
                floor = (floors or {}).get(name, FLOOR)
                error = rel_err(g, r, floor) if g is not None and g.shape == r.shape else math.nan
                out.append(Measure(path, key, error, bounds(name)))
    return out


def bounds_for(dtype: str, gradient_sums: tuple[str, ...] = ()) -> Callable[[str], float]:
    """The bound of each quantity of either path in ``dtype`` (GRADIENT_SUM_TOL for those named)."""
    return lambda name: GRADIENT_SUM_TOL[dtype] if name in gradient_sums else TOL[dtype]


def rounded(inputs: dict[str, torch.Tensor], dtypes: dict[str, torch.dtype], device: str) -> dict:
    """Inputs on ``device`` in their dtype (``dtypes``, default fp32): the values every path sees."""
    return {n: t.to(device=device, dtype=dtypes.get(n, torch.float32)) for n, t in inputs.items()}


def as_fp64(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same values in fp64, for the reference; strides kept (a channels-last view stays one)."""
    return {n: t.to(torch.float64) for n, t in inputs.items()}


def report(measures: list[Measure]) -> str:
    """The failing measures, then the worst passing one of each path."""
    bad = [m for m in measures if not m.ok]
    lines = [f"FAIL {m}" for m in bad]
    for path in sorted({m.path for m in measures}):
        ours = [m for m in measures if m.path == path and m.ok]
        if ours:
            lines.append(f"worst {max(ours, key=lambda m: m.ratio)}")
    return "; ".join(lines)
