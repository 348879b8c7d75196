"""How far a result is from its reference: the one error measure of every kernel and layer check."""

from __future__ import annotations

import torch


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """‖a − ref‖ / ‖ref‖ in fp64, or ‖a‖ where ref is exactly zero (a gradient that must vanish,
    such as dA of a one-step scan)."""
    a, ref = a.detach().double(), ref.detach().double()
    scale = ref.norm()
    return ((a - ref).norm() / scale).item() if scale > 0 else a.norm().item()
